package persistence

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// Large databases for the open and expiry benchmarks are built once per test process,
// through the real core (generated + upload_ack per KeyPackage), and removed when the
// process ends. They exist only under -bench.

// bigPerPool is the pool size of the built databases: 100 pools hold 1 000 000.
const bigPerPool = 10_000

// bigSpacing separates the not_after of consecutive KeyPackages, so that a tick moving
// time by 1000×bigSpacing makes exactly 1000 of them due. The pools' expiry margin is
// 1s, so a KeyPackage's two timers (fresh-until, expires-at) fall in the same window.
const (
	bigSpacing = 2 * time.Second
	bigMargin  = time.Second
)

var (
	bigMu   sync.Mutex
	bigDirs = map[[2]int]string{} // {n, per pool} → directory
	bigRoot string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bigRoot != "" {
		os.RemoveAll(bigRoot)
	}
	os.Exit(code)
}

// needBig skips a benchmark on the 1 000 000-KeyPackage database unless KPOOL_BENCH_BIG
// is set: building it takes 4.5 GiB and longer than `make bench` (go test's default
// ten-minute timeout) allows on a small machine. docs/benchmarks.md has the command.
func needBig(b *testing.B) {
	if os.Getenv("KPOOL_BENCH_BIG") == "" {
		b.Skip("builds a 1 000 000-KeyPackage database (4.5 GiB): set KPOOL_BENCH_BIG=1 and -timeout 60m")
	}
}

// bigDB returns the directory of a database holding n available KeyPackages in pools
// of perPool, KeyPackage i with not_after bigNotAfter(i).
func bigDB(b *testing.B, n, perPool int) string {
	bigMu.Lock()
	defer bigMu.Unlock()
	if d, ok := bigDirs[[2]int{n, perPool}]; ok {
		return d
	}
	return buildBigDir(b, n, perPool)
}

// rebuildBig replaces a database with a fresh one.
func rebuildBig(b *testing.B, n, perPool int) string {
	bigMu.Lock()
	defer bigMu.Unlock()
	if d, ok := bigDirs[[2]int{n, perPool}]; ok {
		os.RemoveAll(d)
		delete(bigDirs, [2]int{n, perPool})
	}
	return buildBigDir(b, n, perPool)
}

var bigBuilds atomic.Int64

func buildBigDir(b *testing.B, n, perPool int) string {
	if bigRoot == "" {
		r, err := os.MkdirTemp("", "kpool-bench-")
		if err != nil {
			b.Fatal(err)
		}
		bigRoot = r
	}
	dir := filepath.Join(bigRoot, fmt.Sprintf("%d-%d", n, bigBuilds.Add(1)))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	buildBig(b, dir, n, perPool)
	st, _ := os.Stat(filepath.Join(dir, "kpool.db"))
	b.Logf("built %d KeyPackages (%d per pool) in %v: %d MiB", n, perPool, time.Since(start).Round(time.Second), st.Size()>>20)
	bigDirs[[2]int{n, perPool}] = dir
	return dir
}

func bigPool(i, perPool int) string { return fmt.Sprintf("big%d", i/perPool) }

func bigNotAfter(i int) int64 {
	return t0.Add(60*24*time.Hour + time.Duration(i)*bigSpacing).Unix()
}

func buildBig(b *testing.B, dir string, n, perPool int) {
	s, err := Open(filepath.Join(dir, "kpool.db"), Options{KeyFile: filepath.Join(dir, "kpool.key"), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c := newCommitter(s, (&pool.Core{}).Step)
	for p := 0; p*perPool < n; p++ {
		in := regInput(fmt.Sprintf("reg-%d", p), bigPool(p*perPool, perPool))
		in.Event.Register.Policy = events.Policy{Target: new(100), LowWatermark: new(20), HardCap: new(2 * perPool), ExpiryMargin: new(events.Duration(bigMargin))}
		submitOK(b, c, in)
	}
	kp := make([]byte, 250) // about the size of an X25519/Ed25519 KeyPackage
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				ref := refOf(i)
				gen := genInput("g"+ref[48:], bigPool(i, perPool), ref, t0)
				gen.Event.Generated.KeyPackage = kp
				gen.Event.Generated.NotAfter = bigNotAfter(i)
				for _, in := range []Input{gen, {Event: evRef("a"+ref[48:], events.TypeUploadAck, bigPool(i, perPool), ref, t0)}} {
					res, err := c.Submit(context.Background(), in)
					if err != nil || res.Err != nil {
						b.Errorf("build %s: %v %v", in.Event.ID, err, res.Err)
						return
					}
					// The publisher confirms at once, so outbox pages are reused.
					ids := make([]string, len(res.Ready.Outbox))
					for j, o := range res.Ready.Outbox {
						ids[j] = o.ID
					}
					c.Ack(ids...)
				}
			}
		}()
	}
	wg.Wait()
	c.Close()
	var left []string // the registrations' messages
	s.Outbox(func(o events.Outbound) error { left = append(left, o.ID); return nil })
	if err := s.AckOutbox(left...); err != nil {
		b.Fatal(err)
	}
	if st, _ := s.Stats(); st.Outbox != 0 || st.KeyPackages != n {
		b.Fatalf("build: %d outbox entries, %d KeyPackages", st.Outbox, st.KeyPackages)
	}
	if err := s.db.Sync(); err != nil {
		b.Fatal(err)
	}
}

// openReady is what a worker does before it serves: open, verify the key, read Meta
// and the pool records (counters and status), re-publish the outbox.
func openReady(b *testing.B, dir string) *Store {
	s, err := Open(filepath.Join(dir, "kpool.db"), Options{KeyFile: filepath.Join(dir, "kpool.key")})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Meta(); err != nil {
		b.Fatal(err)
	}
	pools, err := s.Pools()
	if err != nil || len(pools) == 0 {
		b.Fatal(len(pools), err)
	}
	if err := s.Outbox(func(events.Outbound) error { return nil }); err != nil {
		b.Fatal(err)
	}
	return s
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkOpenReady: start-up with 1 000 000 stored KeyPackages against 10 000 in as
// many pools (100: start-up reads every pool record), and against a bare bbolt open of
// the same file, in the same run. Heap is what the open store holds after GC;
// allocated is everything start-up allocated.
func BenchmarkOpenReady(b *testing.B) {
	needBig(b)
	large, small := bigDB(b, 1_000_000, bigPerPool), bigDB(b, 10_000, 100)
	var tLarge, tSmall, tBare time.Duration
	var heap, alloc uint64
	for b.Loop() {
		before := heapInUse()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		start := time.Now()
		s := openReady(b, large)
		tLarge += time.Since(start)
		runtime.ReadMemStats(&m1)
		alloc = max(alloc, m1.TotalAlloc-m0.TotalAlloc)
		if h := heapInUse(); h > before {
			heap = max(heap, h-before)
		}
		s.Close()

		start = time.Now()
		s = openReady(b, small)
		tSmall += time.Since(start)
		s.Close()

		start = time.Now()
		db, err := bolt.Open(filepath.Join(large, "kpool.db"), 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
		if err != nil {
			b.Fatal(err)
		}
		tBare += time.Since(start)
		db.Close()
	}
	n := float64(b.N)
	b.ReportMetric(tLarge.Seconds()*1e3/n, "ms-ready-1M")
	b.ReportMetric(tSmall.Seconds()*1e3/n, "ms-ready-10k")
	b.ReportMetric(tBare.Seconds()*1e3/n, "ms-bbolt-open-1M")
	b.ReportMetric(float64(tLarge)/float64(tSmall), "1M/10k")
	b.ReportMetric(float64(heap)/(1<<20), "MiB-heap-1M")
	b.ReportMetric(float64(alloc)/(1<<20), "MiB-allocated-1M")
	b.ReportMetric(0, "ns/op")
}

// tickWindow[dir] is the next window of 1000 KeyPackages a tick makes due.
var tickWindow = map[string]int{}

// tick submits the expiry tick that makes KeyPackages [1000k, 1000k+1000) of the
// database due (both their timers), k being the next unused window; it reports the
// time the committed tick took.
func tick(b *testing.B, dir string, due int) time.Duration {
	k := tickWindow[dir]
	tickWindow[dir] = k + 1
	last := due*k + due - 1
	at := time.Unix(bigNotAfter(last), 0).UTC().Add(-bigMargin)
	s := openReady(b, dir)
	defer s.Close()
	c := newCommitter(s, (&pool.Core{}).Step)
	defer c.Close()
	start := time.Now()
	res, err := c.Submit(context.Background(), Input{Event: evTick(fmt.Sprintf("tick-%d", k), at)})
	d := time.Since(start)
	if err != nil || res.Err != nil {
		b.Fatalf("tick: %v %v", err, res.Err)
	}
	if n := len(res.Ready.KeyPackages); n < due || n > due+2 {
		b.Fatalf("tick %d at %s changed %d KeyPackages, want %d", k, at, n, due)
	}
	var ids []string
	for _, o := range res.Ready.Outbox {
		ids = append(ids, o.ID)
	}
	c.Ack(ids...)
	return d
}

// BenchmarkExpiryTick: one committed expiry tick with 1000 KeyPackages due, in a
// database of 1 000 000 against one of 10 000, in the same run (ratio goal < 2). The
// small database runs out of windows after 10 ticks and is rebuilt, untimed.
func BenchmarkExpiryTick(b *testing.B) {
	needBig(b)
	const due = 1000
	// 1000 due KeyPackages are in one pool in both databases.
	large, small := bigDB(b, 1_000_000, bigPerPool), bigDB(b, 10_000, bigPerPool)
	var tLarge, tSmall time.Duration
	for b.Loop() {
		if tickWindow[large]*due+due > 1_000_000 {
			b.Fatal("large database out of windows: use fewer iterations")
		}
		tLarge += tick(b, large, due)
		if tickWindow[small]*due+due > 10_000 {
			b.StopTimer()
			small = rebuildBig(b, 10_000, bigPerPool)
			b.StartTimer()
		}
		tSmall += tick(b, small, due)
	}
	n := float64(b.N)
	b.ReportMetric(tLarge.Seconds()*1e3/n, "ms-tick-1M")
	b.ReportMetric(tSmall.Seconds()*1e3/n, "ms-tick-10k")
	b.ReportMetric(float64(tLarge)/float64(tSmall), "1M/10k")
	b.ReportMetric(0, "ns/op")
}

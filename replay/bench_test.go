package replay

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// Benchmark sizes: KPOOL_REPLAY_BENCH_INPUTS (default 100 000) inputs over
// KPOOL_REPLAY_BENCH_POOLS (default 1 000) pools. The figure is 1 000 000 inputs:
//
//	KPOOL_REPLAY_BENCH_INPUTS=1000000 go test ./replay -run '^$' -bench Replay -benchtime 1x
func benchSize() (inputs, pools int) {
	inputs, pools = 100_000, 1_000
	if v, err := strconv.Atoi(os.Getenv("KPOOL_REPLAY_BENCH_INPUTS")); err == nil && v > 0 {
		inputs = v
	}
	if v, err := strconv.Atoi(os.Getenv("KPOOL_REPLAY_BENCH_POOLS")); err == nil && v > 0 {
		pools = v
	}
	return inputs, pools
}

var synthLogs = map[string]string{}

// synthLog records a workload through the real core into a file: pools register and
// fill, the DS acknowledges every upload at once, clients claim and owners take at
// random, the scheduler ticks every simulated minute, time runs at 500 ms per loop step
// (acks and generated inputs share their step's time), so 1-day lifetimes expire, refill
// and purge tombstones during a long log: 1 000 000 inputs span about 3 days, and the
// stored state reaches its steady size after about 1.3 days. KeyPackage bytes are
// 300 random bytes (the core does not parse them; the size is that of a real suite-1
// KeyPackage), refs are SHA-256 of a counter.
func synthLog(tb testing.TB, inputs, pools int) string {
	key := fmt.Sprint(inputs, "/", pools)
	if p, ok := synthLogs[key]; ok {
		return p
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("kpool-replay-bench-%d-%d-%d.ndjson", inputs, pools, os.Getpid()))
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	w, _ := events.NewLogWriter(f, events.LogHeader{Source: "synthetic benchmark"})
	core := &pool.Core{Defaults: pool.DefaultConfig()}
	mem := NewMem(core)
	rng := rand.New(rand.NewPCG(1, 2))
	subj := events.Subjects{Prefix: events.DefaultPrefix}
	now := recordOrigin
	var seq uint64
	created := map[string][]string{}
	avail := map[string][]string{}
	claimed := map[string][]string{}
	counter := 0
	kpBytes := make([]byte, 300)
	var step func(ev events.Event)
	step = func(ev events.Event) {
		seq++
		if err := w.Write(events.LogRecord{Seq: seq, Subject: subj.Event(ev.Pool, ev.Type), Event: ev}); err != nil {
			tb.Fatal(err)
		}
		r, rej, err := mem.Step(context.Background(), ev)
		if err != nil {
			tb.Fatal(err)
		}
		if rej != nil || r.Duplicate {
			return
		}
		for _, o := range r.Outbox {
			if o.Kind == events.KindUpload {
				var u events.Upload
				json.Unmarshal(o.Body, &u)
				created[u.Pool] = append(created[u.Pool], u.Ref)
			}
		}
		for _, g := range r.Generate {
			p, _, _ := mem.Store.Pool(g.Pool)
			for range g.Count {
				counter++
				sum := sha256.Sum256([]byte(strconv.Itoa(counter)))
				ref := hex.EncodeToString(sum[:])
				for i := range kpBytes {
					kpBytes[i] = byte(rng.Uint32())
				}
				nb, na := now.Add(-time.Hour).Unix(), now.Add(p.Config.Lifetime).Unix()
				step(events.Event{ID: "gen-" + ref, Type: events.TypeGenerated, Time: now, Pool: g.Pool,
					Generated: &events.Generated{Ref: ref, KeyPackage: kpBytes, NotBefore: nb, NotAfter: na, LastResort: g.LastResort}})
			}
		}
	}
	n := 0
	id := func() string { n++; return "e" + strconv.Itoa(n) }
	// ackAll answers every upload at once, as a healthy DS does within seconds.
	ackAll := func(p string) {
		for _, ref := range created[p] {
			avail[p] = append(avail[p], ref)
			step(events.Event{ID: id(), Type: events.TypeUploadAck, Time: now, Pool: p, Ref: ref})
		}
		created[p] = created[p][:0]
	}
	day := 24 * time.Hour
	ids := make([]string, pools)
	for i := range pools {
		ids[i] = fmt.Sprintf("pool-%04d", i)
		step(events.Event{ID: id(), Type: events.TypePoolRegistered, Time: now, Pool: ids[i], Register: &events.Register{
			Identity: ids[i], CipherSuite: 1, SignatureKey: []byte{1, 2, 3},
			Policy: events.Policy{Target: new(10), LowWatermark: new(3), HardCap: new(30),
				Lifetime: new(events.Duration(day)), MaxLifetime: new(events.Duration(day + 2*time.Hour)),
				ExpiryMargin: new(events.Duration(2 * time.Hour)), DeleteGrace: new(events.Duration(2 * time.Hour)),
				TombstoneRetention: new(events.Duration(6 * time.Hour))}}})
		ackAll(ids[i])
	}
	lastTick := now
	for seq < uint64(inputs) {
		now = now.Add(500 * time.Millisecond)
		if now.Sub(lastTick) >= time.Minute {
			lastTick = now
			step(events.Event{ID: id(), Type: events.TypeExpiryTick, Time: now})
			for _, p := range ids {
				if len(created[p]) > 0 {
					ackAll(p)
				}
			}
			continue
		}
		p := ids[rng.IntN(pools)]
		switch {
		case len(created[p]) > 0:
			ackAll(p)
		case len(claimed[p]) > 0 && rng.IntN(2) == 0:
			ref := claimed[p][0]
			claimed[p] = claimed[p][1:]
			step(events.Event{ID: id(), Type: events.TypeConsumed, Time: now, Pool: p, Ref: ref})
		case len(avail[p]) > 0:
			i := rng.IntN(len(avail[p]))
			ref := avail[p][i]
			avail[p] = append(avail[p][:i], avail[p][i+1:]...)
			claimed[p] = append(claimed[p], ref)
			step(events.Event{ID: id(), Type: events.TypeClaimed, Time: now, Pool: p, Ref: ref})
		default:
			step(events.Event{ID: id(), Type: events.TypeReplenish, Time: now, Pool: p})
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	synthLogs[key] = path
	return path
}

func benchReplay(b *testing.B, decodeOnly bool) {
	inputs, pools := benchSize()
	benchReplayN(b, inputs, pools, decodeOnly, false)
}

func benchReplayN(b *testing.B, inputs, pools int, decodeOnly, bolt bool) {
	path := synthLog(b, inputs, pools)
	core := &pool.Core{Defaults: pool.DefaultConfig()}
	var records uint64
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		lr, err := events.NewLogReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			b.Fatal(err)
		}
		if decodeOnly {
			for {
				if _, err := lr.Next(); err == io.EOF {
					break
				} else if err != nil {
					b.Fatal(err)
				}
				records++
			}
		} else {
			var t Target = NewMem(core)
			if bolt {
				b.StopTimer()
				bt, err := OpenBolt(b.TempDir(), core, BoltOptions{})
				if err != nil {
					b.Fatal(err)
				}
				t = bt
				b.StartTimer()
			}
			sum, err := Run(context.Background(), lr, t, Options{})
			t.Close()
			if err != nil {
				b.Fatal(err)
			}
			if sum.BadLines != 0 || sum.Applied == 0 {
				b.Fatalf("summary %+v", sum)
			}
			records += sum.Records
		}
		f.Close()
	}
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "inputs/s")
	// The machine is shared: inputs per CPU-second of this process is steadier than wall
	// time when other processes compete for the cores.
	b.ReportMetric(float64(records)/(cpuTime()-cpu0).Seconds(), "inputs/cpu-s")
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The baseline: reading and decoding the log, nothing else.
func BenchmarkReplayDecodeOnly(b *testing.B) { benchReplay(b, true) }

// The full replay into memory.
func BenchmarkReplayMem(b *testing.B) { benchReplay(b, false) }

// Replay into bbolt (--data) through the committer, inputs pipelined with SubmitAsync,
// no fsync (the default of `worker replay --data`). A smaller log: KPOOL_REPLAY_BOLT_INPUTS
// (default 20 000) over 100 pools, compared with the memory replay of the same log.
func BenchmarkReplayBolt(b *testing.B) {
	n := 20_000
	if v, err := strconv.Atoi(os.Getenv("KPOOL_REPLAY_BOLT_INPUTS")); err == nil && v > 0 {
		n = v
	}
	b.Run("mem", func(b *testing.B) { benchReplayN(b, n, 100, false, false) })
	b.Run("bolt", func(b *testing.B) { benchReplayN(b, n, 100, false, true) })
}

// TestReplayMemoryFlat is a measurement, not a timing assert: with KPOOL_REPLAY_MEM=1 it
// replays logs of growing length and prints the live heap after each, so the growth per
// input can be recorded in docs/benchmarks.md.
func TestReplayMemoryFlat(t *testing.T) {
	if os.Getenv("KPOOL_REPLAY_MEM") == "" {
		t.Skip("set KPOOL_REPLAY_MEM=1 to measure the heap after replays of growing logs")
	}
	_, pools := benchSize()
	// KPOOL_REPLAY_RETENTION=6h forgets dedup ids as a worker with that journal retention does.
	retention, _ := time.ParseDuration(os.Getenv("KPOOL_REPLAY_RETENTION"))
	for _, n := range []int{100_000, 200_000, 400_000, 1_000_000} {
		path := synthLog(t, n, pools)
		f, _ := os.Open(path)
		lr, err := events.NewLogReader(f)
		if err != nil {
			t.Fatal(err)
		}
		mem := NewMem(&pool.Core{Defaults: pool.DefaultConfig()})
		mem.Store.SetJournalRetention(retention)
		start := time.Now()
		sum, err := Run(context.Background(), lr, mem, Options{})
		if err != nil {
			t.Fatal(err)
		}
		el := time.Since(start)
		f.Close()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		m, _ := mem.Store.Meta()
		// One expiry index entry per stored KeyPackage record (tombstones included).
		t.Logf("%d inputs (%.1f simulated days): %.0f inputs/s, heap in use %.1f MiB, stored KeyPackage records %d",
			sum.Records, m.Time.Sub(recordOrigin).Hours()/24, float64(sum.Records)/el.Seconds(), float64(ms.HeapInuse)/(1<<20), mem.Store.IndexLen())
		runtime.KeepAlive(mem)
	}
}

// TestMain removes the synthetic logs the benchmarks wrote.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range synthLogs {
		os.Remove(p)
	}
	os.Exit(code)
}

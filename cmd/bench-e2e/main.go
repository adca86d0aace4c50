// Command bench-e2e measures kpool end to end against the parts it is built on, in one
// run, interleaved over rounds: claims applied by the real worker (embedded nats-server,
// bbolt with fsync, a delivery service acknowledging the refills the claims cause, a tick
// a second) against a bare JetStream consumer of the same messages and bare bbolt writes
// of the same records; the latency from publish to the claim's transition at full and at
// half the measured rate; a mass refill against mls.Generate on every core; memory and
// database size after 100 000 and 1 000 000 events; and the longest stall in applying
// events under a steady load.
//
//	go run ./cmd/bench-e2e                          # full: 3 rounds, about ten minutes
//	go run ./cmd/bench-e2e -quick                   # under two minutes
//	go run ./cmd/bench-e2e -only stall -stall 10m   # the stall figure (make bench-stall)
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
)

type params struct {
	rounds, pools, target, claims int
	refillPools, refillTarget     int
	memPools, memTarget           int
	memMarks                      []uint64
	stallPools, stallTarget       int
	stall                         time.Duration
	stallRate                     float64
	sustain                       time.Duration
	sustainRate                   float64 // 0: half the measured full claim rate
	only                          map[string]bool
	heapProfile                   string
}

var parts = []string{"claims", "refill", "sustain", "memory", "stall"}

func main() {
	quick := flag.Bool("quick", false, "small sizes, one round (under two minutes)")
	only := flag.String("only", strings.Join(parts, ","), "the parts to run, comma-separated: "+strings.Join(parts, ", "))
	stall := flag.Duration("stall", 0, "duration of the stall run (default 30s, 15s with -quick; the issue's figure is 10m: make bench-stall)")
	stallRate := flag.Float64("stall-rate", 400, "claims per second in the stall run (each also causes a generated input and an upload ack)")
	sustainRate := flag.Float64("sustain-rate", 0, "claims per second in the sustained run (default: half the full rate measured by the claims part, else 2000)")
	memEvents := flag.String("memory-events", "", "events applied at which the memory run samples (default 100000,1000000; 20000,100000 with -quick)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to `FILE`")
	heapProfile := flag.String("memprofile", "", "write a heap profile at the memory run's last sample to `FILE`")
	serve := flag.String("serve-nats", "", "internal: serve NATS with JetStream in `DIR` (the memory run's child process)")
	flag.Parse()
	if *serve != "" {
		if err := serveNATS(*serve); err != nil {
			fmt.Fprintln(os.Stderr, "bench-e2e -serve-nats:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-e2e:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench-e2e:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	p := params{rounds: 3, pools: 160, target: 60, claims: 8000, refillPools: 200, refillTarget: 100,
		memPools: 1000, memTarget: 20, memMarks: []uint64{100_000, 1_000_000},
		stallPools: 160, stallTarget: 60, stall: 30 * time.Second, sustain: 30 * time.Second}
	if *quick {
		p = params{rounds: 1, pools: 40, target: 40, claims: 1500, refillPools: 50, refillTarget: 40,
			memPools: 200, memTarget: 20, memMarks: []uint64{20_000, 100_000},
			stallPools: 40, stallTarget: 40, stall: 15 * time.Second, sustain: 20 * time.Second}
	}
	p.stallRate, p.heapProfile, p.sustainRate = *stallRate, *heapProfile, *sustainRate
	if p.heapProfile != "" {
		runtime.MemProfileRate = 4096 // the worker's heap is a few MiB: the default 512 KiB sampling hides it
	}
	if *stall > 0 {
		p.stall = *stall
	}
	usage := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "bench-e2e: "+format+"\n", a...)
		os.Exit(2)
	}
	if *memEvents != "" {
		p.memMarks = nil
		for _, f := range strings.Split(*memEvents, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err != nil || n == 0 || len(p.memMarks) > 0 && n <= p.memMarks[len(p.memMarks)-1] {
				usage("-memory-events %q: increasing positive counts such as 100000,1000000", *memEvents)
			}
			p.memMarks = append(p.memMarks, n)
		}
	}
	p.only = map[string]bool{}
	for _, part := range strings.Split(*only, ",") {
		if !slices.Contains(parts, part) {
			usage("-only %q: one or more of %s", *only, strings.Join(parts, ", "))
		}
		p.only[part] = true
	}
	if err := run(p); err != nil {
		fmt.Fprintln(os.Stderr, "bench-e2e:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(p params) error {
	start := time.Now()
	fmt.Printf("| figure | kpool | baseline in the same run | ratio |\n| --- | ---: | ---: | ---: |\n")
	if p.only["claims"] {
		full, err := runClaims(p)
		if err != nil {
			return err
		}
		if p.sustainRate == 0 {
			p.sustainRate = full / 2
		}
	}
	if p.only["sustain"] {
		if p.sustainRate == 0 {
			p.sustainRate = 2000
		}
		fmt.Fprintf(os.Stderr, "sustain: %v at %.0f claims/s over %d pools\n", p.sustain, p.sustainRate, p.pools)
		r, err := stallRun(p.pools, p.target, p.sustainRate, p.sustain)
		if err != nil {
			return fmt.Errorf("sustain: %w", err)
		}
		fmt.Printf("| pools kept full under claims (%v offered at %.0f claims/s over %d pools × %d, full at the start; each claim refilled) | %d depleted alerts in %d pools, %d low alerts; %d claims made (%.0f /s) | — | goal 0 depleted |\n",
			r.elapsed.Round(time.Second), p.sustainRate, p.pools, p.target, r.depleted, r.depletedIn, r.low, r.claims, float64(r.claims)/r.elapsed.Seconds())
	}
	if p.only["refill"] {
		refill, err := massRefill(p)
		if err != nil {
			return fmt.Errorf("mass refill: %w", err)
		}
		gen := generateRate()
		cores := runtime.GOMAXPROCS(0)
		fmt.Printf("| mass refill (%d pools × %d) | %.0f KeyPackages/s | mls.Generate suite 1: %.0f /s per core × %d cores | %.2f |\n",
			p.refillPools, p.refillTarget, refill, gen, cores, refill/(gen*float64(cores)))
	}
	if p.only["memory"] {
		fmt.Fprintf(os.Stderr, "memory: %d pools × %d, samples at %v events\n", p.memPools, p.memTarget, p.memMarks)
		ss, err := memoryRun(p.memPools, p.memTarget, p.memMarks, p.heapProfile)
		if err != nil {
			return fmt.Errorf("memory: %w", err)
		}
		printMemory(ss)
	}
	if p.only["stall"] {
		fmt.Fprintf(os.Stderr, "stall: %v at %.0f claims/s over %d pools\n", p.stall, p.stallRate, p.stallPools)
		r, err := stallRun(p.stallPools, p.stallTarget, p.stallRate, p.stall)
		if err != nil {
			return fmt.Errorf("stall: %w", err)
		}
		fmt.Printf("| longest stall: applied sequence still while events wait (%v, %.0f claims/s offered, %d pools, polled every 10 ms) | %v (%d over 2 s); %d events applied, %.0f /s; backlog mean %.0f, max %d | — | goal ≤ 2 s |\n",
			r.elapsed.Round(time.Second), p.stallRate, p.stallPools, r.longest.Round(time.Millisecond), r.over2s, r.events,
			float64(r.events)/r.elapsed.Seconds(), r.meanBacklog, r.maxBacklog)
	}
	fmt.Printf("\n(whole run %v; peak RSS %s)\n", time.Since(start).Round(time.Second), peakRSS())
	return nil
}

// runClaims: claims end to end against both baselines, interleaved over rounds, with the
// latency of every claim at full rate, then the latency at half the median rate.
func runClaims(p params) (float64, error) {
	var js, bb, kp []float64
	var latFull []time.Duration
	for r := range p.rounds {
		fmt.Fprintf(os.Stderr, "round %d/%d\n", r+1, p.rounds)
		rate, err := baselineJetStream(p.claims)
		if err != nil {
			return 0, fmt.Errorf("jetstream baseline: %w", err)
		}
		js = append(js, rate)
		if rate, err = baselineBolt(p.claims); err != nil {
			return 0, fmt.Errorf("bbolt baseline: %w", err)
		}
		bb = append(bb, rate)
		rate, lat, err := kpoolClaims(p, 0)
		if err != nil {
			return 0, fmt.Errorf("kpool claims: %w", err)
		}
		kp = append(kp, rate)
		latFull = append(latFull, lat...)
	}
	full := median(kp)
	_, lat, err := kpoolClaims(p, full/2)
	if err != nil {
		return 0, fmt.Errorf("kpool latency: %w", err)
	}
	base := min(median(js), median(bb))
	fmt.Printf("| claims applied end to end (%d pools, %d claims, median of %d) | %.0f /s | JetStream consumer %.0f /s, bbolt fsync'd batches %.0f /s | %.2f of the smaller |\n",
		p.pools, p.claims, p.rounds, full, median(js), median(bb), full/base)
	fmt.Printf("| latency publish → transition, all %d claims published at once (full rate, %d rounds) | p50 %s, p99 %s, p99.9 %s | — | — |\n",
		p.claims, p.rounds, pct(latFull, 50), pct(latFull, 99), pct(latFull, 99.9))
	fmt.Printf("| latency publish → transition at %.0f claims/s (half rate) | p50 %s, p99 %s, p99.9 %s | — | goal p99 ≤ 20 ms |\n",
		full/2, pct(lat, 50), pct(lat, 99), pct(lat, 99.9))
	return full, nil
}

func printMemory(ss []memSample) {
	for _, s := range ss {
		fmt.Printf("| after %d events (%.0f days of event time): worker heap in use after GC, RSS (anonymous), db file | %s, %s (%s), %s (%d free and %d pending pages of %d B, freelist %d B); %d journal entries, %d dedup ids, %d KeyPackage records | nats-server process: RSS %s, JetStream files %s | — |\n",
			s.events, s.eventTime.Hours()/24, mib(s.heapInuse), mib(s.rss), mib(s.rssAnon), mib(uint64(s.dbSize)), s.freePages, s.pendingPages, s.pageSize, s.freelistBytes, s.journal, s.ids, s.kps, mib(s.natsRSS), mib(s.natsDisk))
	}
	if len(ss) >= 2 {
		a, b := ss[0], ss[len(ss)-1]
		fmt.Printf("| memory and disk, %d vs %d events | heap %.2f, RSS %.2f (anonymous %.2f), db file %.2f | after %d events | goal heap and RSS ≤ 1.10 |\n",
			b.events, a.events, float64(b.heapInuse)/float64(a.heapInuse), float64(b.rss)/float64(a.rss),
			float64(b.rssAnon)/float64(a.rssAnon), float64(b.dbSize)/float64(a.dbSize), a.events)
	}
}

// peakRSS is VmHWM from /proc/self/status.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func pct(d []time.Duration, q float64) string {
	if len(d) == 0 {
		return "-"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(len(s)-1, int(float64(len(s))*q/100))
	return s[i].Round(100 * time.Microsecond).String()
}

// claimJSON is a claim of the size the worker sees.
func claimJSON(i int) []byte {
	ev := events.Event{ID: fmt.Sprintf("claim-%d", i), Type: events.TypeClaimed, Time: time.Now().UTC(), Pool: "pool0",
		Ref: fmt.Sprintf("%064x", i)}
	b, _ := json.Marshal(ev)
	return b
}

func embedded(dir string) (*nats.Conn, func(), error) {
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		return nil, nil, err
	}
	return nc, func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }, nil
}

// baselineJetStream: the same messages published to a file stream and read back in
// order by an ordered consumer that decodes each, as the worker's reader does.
func baselineJetStream(n int) (float64, error) {
	dir, _ := os.MkdirTemp("", "bench-js-")
	defer os.RemoveAll(dir)
	nc, stop, err := embedded(dir)
	if err != nil {
		return 0, err
	}
	defer stop()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BASE", Subjects: []string{"base.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		return 0, err
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return 0, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	start := time.Now()
	go func() {
		for i := range n {
			_, _ = js.PublishAsync("base.pool0.claimed", claimJSON(i))
		}
	}()
	for range n {
		m, err := it.Next()
		if err != nil {
			return 0, err
		}
		if _, err := events.Decode(m.Data()); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// baselineBolt: records of a claim's size written in transactions of 512 with fsync.
func baselineBolt(n int) (float64, error) {
	dir, _ := os.MkdirTemp("", "bench-bolt-")
	defer os.RemoveAll(dir)
	db, err := bolt.Open(filepath.Join(dir, "b.db"), 0o600, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	val := make([]byte, 600) // a KeyPackage record plus its journal entry
	start := time.Now()
	for i := 0; i < n; i += 512 {
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("r"))
			if err != nil {
				return err
			}
			for j := i; j < min(n, i+512); j++ {
				if err := b.Put(fmt.Appendf(nil, "%016d", j), val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// kpoolClaims fills the pools, then claims p.claims distinct KeyPackages spread over
// them, at full speed (rate 0: the rate applied is returned) or paced at rate (the
// latency from each publish to its claimed transition is returned).
func kpoolClaims(p params, rate float64) (float64, []time.Duration, error) {
	e, err := startEnv(envOptions{pools: p.pools, target: p.target, keepRefs: true})
	if err != nil {
		return 0, nil, err
	}
	defer e.close()
	if err := e.waitFull(p.pools, p.target, 5*time.Minute); err != nil {
		return 0, nil, err
	}
	var todo []events.Event
	e.mu.Lock()
	for i := 0; len(todo) < p.claims && i < p.target; i++ {
		for k := range p.pools {
			if refs := e.refs[fmt.Sprint("pool", k)]; i < len(refs) && len(todo) < p.claims {
				todo = append(todo, events.Event{ID: fmt.Sprintf("c-%d-%d", k, i), Type: events.TypeClaimed, Pool: fmt.Sprint("pool", k), Ref: refs[i]})
			}
		}
	}
	e.mu.Unlock()

	var seen atomic.Int64
	sent := make([]time.Time, len(todo))
	index := map[string]int{}
	for i, ev := range todo {
		index[ev.MsgID()] = i
	}
	lat := make([]time.Duration, 0, len(todo))
	var latMu sync.Mutex
	done := make(chan struct{})
	sub, err := e.nc.Subscribe(e.w.Subjects().Outbound(events.KindTransition, "*"), func(m *nats.Msg) {
		var tr events.Transition
		if json.Unmarshal(m.Data, &tr) != nil || tr.Event != string(events.TypeClaimed) || tr.Error != "" {
			return
		}
		if i, ok := index[tr.Pool+"/"+tr.EventID]; ok {
			latMu.Lock()
			lat = append(lat, time.Since(sent[i]))
			latMu.Unlock()
			if seen.Add(1) == int64(len(todo)) {
				close(done)
			}
		}
	})
	if err != nil {
		return 0, nil, err
	}
	defer sub.Unsubscribe()
	var gap time.Duration
	if rate > 0 {
		gap = time.Duration(float64(time.Second) / rate)
	}
	start := time.Now()
	for i, ev := range todo {
		if gap > 0 {
			if d := time.Until(start.Add(time.Duration(i) * gap)); d > 0 {
				time.Sleep(d)
			}
		}
		ev.Time = time.Now().UTC()
		b, _ := json.Marshal(ev)
		sent[i] = time.Now()
		if _, err := e.js.PublishAsync(e.w.Subjects().Event(ev.Pool, ev.Type), b, jetstream.WithMsgID(ev.MsgID())); err != nil {
			return 0, nil, err
		}
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		return 0, nil, fmt.Errorf("%d of %d claims applied", seen.Load(), len(todo))
	}
	elapsed := time.Since(start)
	return float64(len(todo)) / elapsed.Seconds(), lat, nil
}

// massRefill registers every pool at once and times until all are full.
func massRefill(p params) (float64, error) {
	start := time.Now()
	e, err := startEnv(envOptions{pools: p.refillPools, target: p.refillTarget})
	if err != nil {
		return 0, err
	}
	defer e.close()
	if err := e.waitFull(p.refillPools, p.refillTarget, 10*time.Minute); err != nil {
		return 0, err
	}
	// target regular KeyPackages and one last resort per pool
	return float64(p.refillPools*(p.refillTarget+1)) / time.Since(start).Seconds(), nil
}

// generateRate is mls.Generate's rate on one core for suite 1.
func generateRate() float64 {
	priv, _, err := mls.NewSignatureKey(mls.CipherSuite(1), rand.Reader)
	if err != nil {
		panic(err)
	}
	signer, err := mls.SignerFromPrivate(mls.CipherSuite(1), priv)
	if err != nil {
		panic(err)
	}
	now := time.Now()
	n, start := 0, time.Now()
	for time.Since(start) < 2*time.Second {
		if _, _, err := mls.Generate(mls.CipherSuite(1), signer, []byte("alice"), mls.GenerateOptions{
			NotBefore: uint64(now.Unix()), NotAfter: uint64(now.Add(24 * time.Hour).Unix()), Now: now, Rand: rand.Reader}); err != nil {
			panic(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

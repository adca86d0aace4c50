// Command bench-e2e measures kpool end to end against the parts it is built on, in one
// run, interleaved over rounds: claims applied by the real worker (embedded nats-server,
// bbolt with fsync, a delivery service acknowledging the refills the claims cause, a tick
// a second) against a bare JetStream consumer of the same messages and bare bbolt writes
// of the same records; the latency from publish to the claim's transition at half the
// measured rate; and a mass refill against mls.Generate on every core.
//
//	go run ./cmd/bench-e2e            # full: 3 rounds
//	go run ./cmd/bench-e2e -quick     # under two minutes
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
)

type params struct {
	rounds, pools, target, claims int
	refillPools, refillTarget     int
}

func main() {
	quick := flag.Bool("quick", false, "small sizes, one round (under two minutes)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to `FILE`")
	flag.Parse()
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
	p := params{rounds: 3, pools: 160, target: 60, claims: 8000, refillPools: 200, refillTarget: 100}
	if *quick {
		p = params{rounds: 1, pools: 40, target: 40, claims: 1500, refillPools: 50, refillTarget: 40}
	}
	if err := run(p); err != nil {
		fmt.Fprintln(os.Stderr, "bench-e2e:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(p params) error {
	var js, bb, kp []float64
	for r := range p.rounds {
		fmt.Fprintf(os.Stderr, "round %d/%d\n", r+1, p.rounds)
		rate, err := baselineJetStream(p.claims)
		if err != nil {
			return fmt.Errorf("jetstream baseline: %w", err)
		}
		js = append(js, rate)
		if rate, err = baselineBolt(p.claims); err != nil {
			return fmt.Errorf("bbolt baseline: %w", err)
		}
		bb = append(bb, rate)
		if rate, _, err = kpoolClaims(p, 0); err != nil {
			return fmt.Errorf("kpool claims: %w", err)
		}
		kp = append(kp, rate)
	}
	full := median(kp)
	_, lat, err := kpoolClaims(p, full/2)
	if err != nil {
		return fmt.Errorf("kpool latency: %w", err)
	}
	refill, err := massRefill(p)
	if err != nil {
		return fmt.Errorf("mass refill: %w", err)
	}
	gen := generateRate()
	cores := runtime.GOMAXPROCS(0)

	base := min(median(js), median(bb))
	fmt.Printf("| figure | kpool | baseline in the same run | ratio |\n| --- | ---: | ---: | ---: |\n")
	fmt.Printf("| claims applied end to end (%d pools, %d claims, median of %d) | %.0f /s | JetStream consumer %.0f /s, bbolt fsync'd batches %.0f /s | %.2f of the smaller |\n",
		p.pools, p.claims, p.rounds, full, median(js), median(bb), full/base)
	fmt.Printf("| latency publish → transition at %.0f claims/s (half rate) | p50 %s, p99 %s, p99.9 %s | — | goal p99 ≤ 20 ms |\n",
		full/2, pct(lat, 50), pct(lat, 99), pct(lat, 99.9))
	fmt.Printf("| mass refill (%d pools × %d) | %.0f KeyPackages/s | mls.Generate suite 1: %.0f /s per core × %d cores | %.2f |\n",
		p.refillPools, p.refillTarget, refill, gen, cores, refill/(gen*float64(cores)))
	return nil
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

// env is a real worker with its delivery service.
type env struct {
	w    *worker.Worker
	nc   *nats.Conn
	js   jetstream.JetStream
	c    *natsbus.Client
	dir  string
	mu   sync.Mutex
	refs map[string][]string // pool → uploaded refs, in order
}

func startEnv(pools, target int) (*env, error) {
	dir, _ := os.MkdirTemp("", "bench-kpool-")
	w, err := worker.Start(context.Background(), worker.Config{DataDir: dir, Listen: "127.0.0.1:0", Tick: time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(w.ClientURL())
	if err != nil {
		w.Close()
		return nil, err
	}
	e := &env{w: w, nc: nc, dir: dir, refs: map[string][]string{}}
	e.js, _ = jetstream.New(nc)
	e.c, _ = natsbus.NewClient(nc)
	// The delivery service: acknowledges every upload at once.
	if _, err := nc.Subscribe(w.Subjects().Outbound(events.KindUpload, "*"), func(m *nats.Msg) {
		var u events.Upload
		if json.Unmarshal(m.Data, &u) != nil {
			return
		}
		e.mu.Lock()
		e.refs[u.Pool] = append(e.refs[u.Pool], u.Ref)
		e.mu.Unlock()
		ev := events.Event{ID: "ack-" + u.Ref[:32], Type: events.TypeUploadAck, Time: time.Now().UTC(), Pool: u.Pool, Ref: u.Ref}
		b, _ := json.Marshal(ev)
		_, _ = e.js.PublishAsync(w.Subjects().Event(u.Pool, ev.Type), b, jetstream.WithMsgID(ev.MsgID()))
	}); err != nil {
		e.close()
		return nil, err
	}
	policy := events.Policy{Target: new(target), LowWatermark: new(target / 2), HardCap: new(2 * target)}
	for i := range pools {
		id := fmt.Sprint("pool", i)
		if _, err := e.c.RegisterSealed(context.Background(), id, natsbus.RegisterRequest{Identity: id, CipherSuite: 1, Policy: policy}); err != nil {
			e.close()
			return nil, err
		}
	}
	return e, nil
}

func (e *env) close() {
	e.nc.Close()
	e.w.Close()
	os.RemoveAll(e.dir)
}

func (e *env) waitFull(pools, target int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ps, err := e.w.Store().Pools()
		if err != nil {
			return err
		}
		full := 0
		for _, p := range ps {
			if p.Fresh >= target {
				full++
			}
		}
		if full == pools {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d pools full after %v", full, pools, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kpoolClaims fills the pools, then claims p.claims distinct KeyPackages spread over
// them, at full speed (rate 0: the rate applied is returned) or paced at rate (the
// latency from each publish to its claimed transition is returned).
func kpoolClaims(p params, rate float64) (float64, []time.Duration, error) {
	e, err := startEnv(p.pools, p.target)
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
	e, err := startEnv(p.refillPools, p.refillTarget)
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

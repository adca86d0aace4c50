package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The scale-out benchmark of issue 14 (docs/benchmarks.md, `make bench-cluster`). It is a
// test behind a flag rather than a Go benchmark because it reuses the cluster harness,
// which works on *testing.T; without the flag it is skipped, as benchmarks are in CI.
var clusterBench = flag.Bool("cluster-bench", false, "run TestClusterBench, the scale-out benchmark (make bench-cluster)")

const (
	benchPools          = 500 // pools per run
	benchTarget         = 4   // KeyPackages offered per pool, all claimed in a run
	benchRounds         = 3   // rounds of bare, 1, 2 and 3 workers, interleaved
	benchFailoverRounds = 4
	benchClaimLoad      = 200 // claims per second while a worker is killed
)

// TestClusterBench measures, on one three-node R3 NATS cluster, claims applied end to end
// per second with 1, 2 and 3 workers against bare JetStream publish + consume of as many
// messages, then the failover time with the default lease TTL. Every run starts on fresh
// streams and buckets (all are deleted between runs); the cluster stays.
func TestClusterBench(t *testing.T) {
	if !*clusterBench {
		t.Skip("a benchmark: run with -cluster-bench (make bench-cluster)")
	}
	t.Logf("load average at start: %s", loadAverage())
	nc3 := startNATSCluster(t, 3)
	url := nc3.URL()
	keyFile := filepath.Join(t.TempDir(), "kpool.key")
	clock := newClock()
	rates, cores := map[string][]float64{}, map[string][]float64{}
	// Each round runs the worker counts in another order, so that drift in the load of
	// the shared machine falls on all of them alike.
	orders := [][]int{{1, 2, 3}, {2, 3, 1}, {3, 1, 2}}
	for r := range benchRounds {
		t.Run(fmt.Sprintf("round %d/bare JetStream", r+1), func(t *testing.T) {
			rates["bare"] = append(rates["bare"], bareJetStreamRate(t, url, benchPools*benchTarget))
		})
		wipeStreams(t, url)
		for _, k := range orders[r%len(orders)] {
			name := fmt.Sprintf("%d workers", k)
			t.Run(fmt.Sprintf("round %d/%s", r+1, name), func(t *testing.T) {
				rate, used := claimRate(t, url, keyFile, clock, k)
				rates[name], cores[name] = append(rates[name], rate), append(cores[name], used)
			})
			wipeStreams(t, url)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d pools × %d claims = %d claims per run; medians of %d rounds\n", benchPools, benchTarget, benchPools*benchTarget, benchRounds)
	fmt.Fprintf(&b, "| run | claims/s (median) | rounds | vs 1 worker | vs bare JetStream | CPU cores used |\n| --- | ---: | --- | ---: | ---: | ---: |\n")
	bare, one := median(rates["bare"]), median(rates["1 workers"])
	for _, name := range []string{"bare", "1 workers", "2 workers", "3 workers"} {
		m := median(rates[name])
		vsOne, used := "—", "—"
		if name != "bare" {
			vsOne, used = fmt.Sprintf("%.2f", m/one), fmt.Sprintf("%.2f", median(cores[name]))
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %.2f | %s |\n", name, m, roundsOf(rates[name]), vsOne, m/bare, used)
	}
	fmt.Fprintf(&b, "load average: %s", loadAverage())
	t.Log(b.String())
	t.Run("failover", func(t *testing.T) { failoverTimes(t, url, keyFile, clock) })
}

// benchConfig is the pool policy of a run, with fsync on as in production.
func benchConfig(target, low, hardCap int) func(*worker.Config) {
	return func(c *worker.Config) {
		p := pool.DefaultConfig()
		p.Target, p.LowWatermark, p.HardCap = target, low, hardCap
		c.Defaults = &p
		c.NoSync = false
	}
}

// claimRate starts k workers on the cluster, registers benchPools pools, waits until
// each offers benchTarget KeyPackages, then publishes a claim of every one of them and
// times until the last claimed transition is on the outbound stream. The refills the
// claims cause run meanwhile, as they would in production. It returns the claims per
// second and the CPU cores the whole process (NATS nodes, workers, test) used meanwhile.
func claimRate(t *testing.T, url, keyFile string, clock *testClock, k int) (rate, cores float64) {
	t0 := time.Now()
	var ws []*worker.Worker
	for i := range k {
		ws = append(ws, startClusterWorker(t, url, t.TempDir(), keyFile, fmt.Sprintf("w%d", i+1), clock, benchConfig(benchTarget, benchTarget/2, 2*benchTarget)))
	}
	balanced(t, ws)
	t1 := time.Now()
	l := benchLoad(t, url, benchPools, benchTarget)
	own0, _ := owners(ws, 16)
	setup := fmt.Sprintf("set-up: workers %v, pools filled %v", t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))

	// Claims interleaved over the pools: the first offered KeyPackage of each, then the second...
	var claims []events.Event
	refs := offered(l.ds)
	for i := range benchTarget {
		for _, p := range l.pools {
			ref := refs[p][i]
			claims = append(claims, events.Event{ID: natsbus.NewEventID(), Type: events.TypeClaimed, Time: time.Now().UTC(), Pool: p, Ref: ref})
		}
	}
	ids := map[string]bool{}
	for _, ev := range claims {
		ids[ev.ID] = true
	}
	done := make(chan struct{})
	var smu sync.Mutex
	seen := map[string]bool{} // a relay that retries a publish may deliver a transition twice
	nc := watchTransitions(t, url, l.c.Subjects(), func(tr events.Transition) {
		smu.Lock()
		defer smu.Unlock()
		if tr.To == "claimed" && ids[tr.EventID] && !seen[tr.EventID] {
			if seen[tr.EventID] = true; len(seen) == len(claims) {
				close(done)
			}
		}
	})

	js, _ := jetstream.New(nc)
	cpu0, start := cpuTime(), time.Now()
	for _, ev := range claims {
		if _, err := js.PublishAsync(l.c.Subjects().Event(ev.Pool, ev.Type), mustJSON(ev), jetstream.WithMsgID(ev.MsgID())); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		smu.Lock()
		defer smu.Unlock()
		t.Fatalf("%d workers: %d of %d claims applied after 2m", k, len(seen), len(claims))
	}
	elapsed := time.Since(start)
	rate, cores = float64(len(claims))/elapsed.Seconds(), (cpuTime()-cpu0).Seconds()/elapsed.Seconds()
	t.Logf("%d workers: %d claims applied in %v: %.0f /s, %.2f CPU cores (load average %s; %s)", k, len(claims), elapsed.Round(time.Millisecond), rate, cores, loadAverage(), setup)

	// Every pool counts exactly the claims it was sent. A list that misses pools (a
	// partition that changed hands answering from a view still catching up) is reported
	// and asked again.
	moved := ""
	if own1, _ := owners(ws, 16); !maps.Equal(own0, own1) {
		moved = fmt.Sprintf("; partitions moved during the run: owners %v, then %v", own0, own1)
	}
	asked := 0
	eventually(t, 30*time.Second, "every pool counting its claims", func() bool {
		asked++
		list, err := l.c.List(ctx(t))
		bad := ""
		switch {
		case err != nil:
			bad = err.Error()
		case len(list) != len(l.pools):
			bad = fmt.Sprintf("list: %d pools of %d; missing by partition: %v", len(list), len(l.pools), missingByPartition(l.pools, list))
		default:
			for _, st := range list {
				if st.Counts.Claimed != benchTarget {
					bad = fmt.Sprintf("pool %s: %d claimed, want %d", st.Pool, st.Counts.Claimed, benchTarget)
					break
				}
			}
		}
		if bad != "" && asked == 1 {
			t.Logf("%d workers: first list after the claims: %s%s", k, bad, moved)
		}
		return bad == ""
	})
	return rate, cores
}

// benchLoad registers n pools through the API and waits until each offers target
// KeyPackages, acknowledged by the delivery service.
func benchLoad(t *testing.T, url string, n, target int) *clusterLoad {
	_, c := connect(t, url)
	l := &clusterLoad{t: t, c: c, ds: startDS(t, c, true), claimed: map[string]string{}, taken: map[string]string{}}
	for i := range n {
		l.pools = append(l.pools, fmt.Sprintf("pool-%04d", i))
	}
	// A call answered "unavailable" is repeated, as the answer says (its input may be in
	// the log already: the same registration again changes nothing); each is reported.
	l.each(func(p string) error {
		for try := 1; ; try++ {
			_, err := c.Register(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1}, nil)
			var ae *natsbus.APIError
			if err == nil || try == 3 || !errors.As(err, &ae) || ae.Code != natsbus.CodeUnavailable {
				return err
			}
			t.Logf("register %s, try %d: %v", p, try, err)
		}
	})
	var asked time.Time
	eventually(t, 2*time.Minute, "every pool offering its target", func() bool {
		if time.Since(asked) < 200*time.Millisecond { // a list asks every partition: not every 10 ms
			return false
		}
		asked = time.Now()
		list, err := c.List(ctx(t))
		if err != nil || len(list) != n {
			return false
		}
		refs := offered(l.ds)
		for _, st := range list {
			if st.Counts.Available < target || st.Counts.Created != 0 || len(refs[st.Pool]) < target {
				return false
			}
		}
		return true
	})
	return l
}

// bareJetStreamRate is the baseline: n claim-sized messages published asynchronously to
// an R3 file stream on the same cluster and read back by an ordered consumer that
// decodes each, as a worker's reader does. A pass takes a fraction of a second, so the
// figure is the median of five.
func bareJetStreamRate(t *testing.T, url string, n int) float64 {
	nc, _ := connect(t, url)
	js, _ := jetstream.New(nc)
	s, err := js.CreateStream(ctx(t), jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = mustJSON(events.Event{ID: natsbus.NewEventID(), Type: events.TypeClaimed, Time: time.Now().UTC(),
			Pool: fmt.Sprintf("pool-%04d", i%benchPools), Ref: strings.Repeat("ab", 32)})
	}
	var rates []float64
	for range 5 {
		cons, err := s.OrderedConsumer(ctx(t), jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
		if err != nil {
			t.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(512))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		go func() {
			for i, m := range msgs {
				_, _ = js.PublishAsync(fmt.Sprintf("bench.pool-%04d.claimed", i%benchPools), m)
			}
		}()
		for range n {
			m, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := events.Decode(m.Data()); err != nil {
				t.Fatal(err)
			}
		}
		rates = append(rates, float64(n)/time.Since(start).Seconds())
		it.Stop()
		<-js.PublishAsyncComplete()
	}
	t.Logf("bare JetStream R3: %d messages, %s /s", n, roundsOf(rates))
	return median(rates)
}

// wipeStreams deletes every stream and bucket on the cluster, so the next run starts fresh.
func wipeStreams(t *testing.T, url string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	names := js.StreamNames(ctx(t))
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		if err := js.DeleteStream(ctx(t), n); err != nil {
			t.Fatalf("delete stream %s: %v", n, err)
		}
	}
}

// failover is what each kill measured.
type failover struct {
	owned []time.Duration // until every partition is owned again
	first []time.Duration // until a claim published after the kill is applied on a moved partition
	all   []time.Duration // until that holds for every moved partition
}

// failoverTimes runs three workers with the default lease TTL under a steady claim load
// and kills the owner of some partitions, benchFailoverRounds times, timing from the
// kill until every partition is owned again and until claims published after the kill on
// pools of the moved partitions are applied (their claimed transitions are on the
// outbound stream). The killed worker is restarted on its data directory, as a host that
// comes back, before the next round. At the end every claim must have had one effect.
func failoverTimes(t *testing.T, url, keyFile string, clock *testClock) {
	// Every claim starts a refill back to the target (low watermark = target), so pools
	// stay stocked under the load and are full when l.check looks. Claimed KeyPackages
	// count against the hard cap until consumed, which this load never sends: the cap
	// leaves room for every claim of the run.
	const target, hardCap = 8, 64
	ttl := func(c *worker.Config) { c.Cluster.LeaseTTL = 0 } // the default, 5 s
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var ws []*worker.Worker
	for i := range 3 {
		ws = append(ws, startClusterWorker(t, url, dirs[i], keyFile, fmt.Sprintf("w%d", i+1), clock, benchConfig(target, target, hardCap), ttl))
	}
	balanced(t, ws)
	l := benchLoad(t, url, benchPools, target)

	// Claimed transitions as they arrive.
	type arrival struct {
		pool, ref string
		at        time.Time
	}
	var amu sync.Mutex
	var arrivals []arrival
	other := map[string][]events.Transition{} // ref → claim transitions that did not claim it
	var offers [][2]string                    // pool and ref of KeyPackages that became available
	dls := collectDeadLetters(t, l.c)
	nc := watchTransitions(t, url, l.c.Subjects(), func(tr events.Transition) {
		amu.Lock()
		defer amu.Unlock()
		switch {
		case tr.To == "claimed" && tr.Error == "":
			arrivals = append(arrivals, arrival{tr.Pool, tr.Ref, time.Now()})
		case tr.To == "available" && tr.Error == "":
			offers = append(offers, [2]string{tr.Pool, tr.Ref})
		case tr.Event == string(events.TypeClaimed):
			other[tr.Ref] = append(other[tr.Ref], tr)
		}
	})

	js, _ := jetstream.New(nc)
	stop, loadDone := make(chan struct{}), make(chan error)
	// What the load may claim: what was offered when the pools were full, then each
	// KeyPackage whose transition to available (its upload acknowledged and applied) is
	// out — not merely uploaded, or the claim could reach the log before the ack. Last
	// resorts are left alone.
	amu.Lock()
	for p, refs := range offered(l.ds) {
		for _, r := range refs {
			offers = append(offers, [2]string{p, r})
		}
	}
	amu.Unlock()
	offeredSince := func() [][2]string {
		amu.Lock()
		got := offers
		offers = nil
		amu.Unlock()
		l.ds.mu.Lock()
		defer l.ds.mu.Unlock()
		return slices.DeleteFunc(got, func(o [2]string) bool { return l.ds.uploads[o[1]].LastResort })
	}
	ids := map[string]string{} // ref → id of the event that claimed it (written by the load, read after it)
	go func() { loadDone <- l.claimSteadily(js, stop, offeredSince, func(ref, id string) { ids[ref] = id }) }()

	var f failover
	for r := range benchFailoverRounds {
		balanced(t, ws)
		amu.Lock()
		warm := len(arrivals) + benchClaimLoad/2
		amu.Unlock()
		eventually(t, 30*time.Second, "claims applied under load", func() bool { amu.Lock(); defer amu.Unlock(); return len(arrivals) >= warm })

		own, _ := owners(ws, 16)
		victim := own[r%16]
		moved := ws[victim].Partitions()
		ws[victim].Kill()
		killed := time.Now()
		l.mu.Lock()
		before := make(map[string]bool, len(l.claimed)) // claims published (or about to be) before the kill
		for ref := range l.claimed {
			before[ref] = true
		}
		l.mu.Unlock()
		ws[victim] = nil

		eventually(t, 30*time.Second, "every partition owned again", func() bool { _, ok := owners(ws, 16); return ok })
		owned := time.Since(killed)
		firsts := map[int]time.Duration{} // moved partition → its first claim applied after the kill
		eventually(t, 30*time.Second, "a claim applied on every moved partition", func() bool {
			amu.Lock()
			defer amu.Unlock()
			for _, ar := range arrivals {
				p := events.PartitionOf(ar.pool, 16)
				if _, seen := firsts[p]; !seen && !before[ar.ref] && slices.Contains(moved, p) {
					firsts[p] = ar.at.Sub(killed)
				}
			}
			return len(firsts) == len(moved)
		})
		first, all := slices.Min(slices.Collect(maps.Values(firsts))), slices.Max(slices.Collect(maps.Values(firsts)))
		t.Logf("kill %d: w%d owned partitions %v; all owned again after %v, a claim applied on one of them after %v, on all after %v (load average %s)",
			r+1, victim+1, moved, owned.Round(time.Millisecond), first.Round(time.Millisecond), all.Round(time.Millisecond), loadAverage())
		f.owned, f.first, f.all = append(f.owned, owned), append(f.first, first), append(f.all, all)

		// restarted on its data directory, as a host coming back (Kill closed its stores)
		ws[victim] = startClusterWorker(t, url, dirs[victim], keyFile, fmt.Sprintf("w%d", victim+1), clock, benchConfig(target, target, hardCap), ttl)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nfailover, %d kills, lease TTL 5 s, %d claims/s (median / max):\n", len(f.owned), benchClaimLoad)
	fmt.Fprintf(&b, "| every partition owned again | %v / %v |\n", medianD(f.owned), slices.Max(f.owned).Round(10*time.Millisecond))
	fmt.Fprintf(&b, "| first claim on a moved partition applied | %v / %v |\n", medianD(f.first), slices.Max(f.first).Round(10*time.Millisecond))
	fmt.Fprintf(&b, "| a claim applied on every moved partition | %v / %v |\n", medianD(f.all), slices.Max(f.all).Round(10*time.Millisecond))
	fmt.Fprintf(&b, "load average: %s", loadAverage())
	t.Log(b.String())

	close(stop)
	if err := <-loadDone; err != nil {
		t.Fatal(err)
	}
	// Every claim applied: its claimed transition seen. What is missing is reported with
	// everything known about it before l.check fails on the counts.
	var missing []string
	deadline := time.Now().Add(time.Minute)
	for {
		amu.Lock()
		got := map[string]bool{}
		for _, ar := range arrivals {
			got[ar.ref] = true
		}
		missing = missing[:0]
		for ref := range ids {
			if !got[ref] {
				missing = append(missing, ref)
			}
		}
		amu.Unlock()
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // polling interval
	}
	for _, ref := range missing {
		p := l.claimed[ref]
		var dl []events.DeadLetter
		for _, d := range dls.list() {
			if d.EventID == ids[ref] {
				dl = append(dl, d)
			}
		}
		amu.Lock()
		trs := other[ref]
		amu.Unlock()
		t.Errorf("claim %s of KeyPackage %s (pool %s, partition %d): no claimed transition after a minute; in the stream: %v; other transitions: %+v; dead letters: %+v",
			ids[ref], ref, p, events.PartitionOf(p, 16), inStream(t, js, l.c.Subjects(), p, ids[ref]), trs, dl)
	}
	if len(missing) > 0 {
		t.FailNow()
	}
	// No claim lost or doubled across the kills. A pool over its hard cap is shown whole
	// before l.check fails on it.
	if list, err := l.c.List(ctx(t)); err != nil || len(list) == 0 {
		t.Logf("list: %d pools, %v", len(list), err)
	} else {
		for _, st := range list {
			if st.Counts.Available+st.Counts.Claimed > st.HardCap {
				t.Logf("pool %s over its hard cap: %+v", st.Pool, st)
			}
		}
	}
	l.check(t, js, 2*time.Minute)
}

// claimSteadily publishes benchClaimLoad claims a second until stop, round robin over the
// pools, each of a KeyPackage offered (listed by offeredSince) and not claimed yet (a pool
// with none left is passed over until its refill arrives). Claims are recorded in
// l.claimed for l.check. A publish the stream did not acknowledge is sent again with the
// same id at the end, as a delivery service would (the stream keeps it once).
func (l *clusterLoad) claimSteadily(js jetstream.JetStream, stop <-chan struct{}, offeredSince func() [][2]string, sent func(ref, id string)) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	feed := map[string][]string{} // pool → offered refs not claimed yet
	var futures []jetstream.PubAckFuture
	queued := map[string]bool{} // every ref ever put in feed
	next := 0
	for {
		select {
		case <-stop:
			return republish(js, futures)
		case <-tick.C:
		}
		for _, o := range offeredSince() {
			if !queued[o[1]] {
				queued[o[1]] = true
				feed[o[0]] = append(feed[o[0]], o[1])
			}
		}
		for range benchClaimLoad / 100 {
			for range len(l.pools) {
				p := l.pools[next%len(l.pools)]
				next++
				if len(feed[p]) == 0 {
					continue
				}
				ref := feed[p][0]
				feed[p] = feed[p][1:]
				ev := events.Event{ID: natsbus.NewEventID(), Type: events.TypeClaimed, Time: time.Now().UTC(), Pool: p, Ref: ref}
				l.mu.Lock()
				l.claimed[ref] = p
				sent(ref, ev.ID)
				l.mu.Unlock()
				f, err := js.PublishMsgAsync(&nats.Msg{Subject: l.c.Subjects().Event(p, ev.Type), Data: mustJSON(ev)}, jetstream.WithMsgID(ev.MsgID()))
				if err != nil {
					return err
				}
				futures = append(futures, f)
				break
			}
		}
	}
}

// watchTransitions calls fn with every transition published on the outbound subjects
// from now on, and returns the connection it listens on.
func watchTransitions(t *testing.T, url string, subj events.Subjects, fn func(events.Transition)) *nats.Conn {
	nc, _ := connect(t, url)
	if _, err := nc.Subscribe(subj.Outbound(events.KindTransition, "*"), func(m *nats.Msg) {
		var tr events.Transition
		if json.Unmarshal(m.Data, &tr) == nil {
			fn(tr)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc
}

// republish waits for the acknowledgements of sent and publishes again, synchronously and
// with the same message id, each message whose publish failed.
func republish(js jetstream.JetStream, sent []jetstream.PubAckFuture) error {
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		return fmt.Errorf("claims still unacknowledged by the stream after 30s")
	}
	for _, f := range sent {
		select {
		case <-f.Ok():
			continue
		case <-f.Err():
		}
		for deadline := time.Now().Add(time.Minute); ; {
			c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := js.PublishMsg(c, f.Msg(), jetstream.WithMsgID(f.Msg().Header.Get(jetstream.MsgIDHeader)))
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("claim on %s: %w", f.Msg().Subject, err)
			}
		}
	}
	return nil
}

// inStream reports whether the inbound stream holds the event id among pool's claims.
func inStream(t *testing.T, js jetstream.JetStream, subj events.Subjects, pool, id string) string {
	cons, err := js.OrderedConsumer(ctx(t), "KPOOL_EVENTS", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{fmt.Sprintf("%s.part.%d.events.%s.claimed", subj.Prefix, events.PartitionOf(pool, 16), pool)}})
	if err != nil {
		return err.Error()
	}
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			return "no (" + err.Error() + ")"
		}
		ev, err := events.Decode(m.Data())
		if err == nil && ev.ID == id {
			md, _ := m.Metadata()
			return fmt.Sprintf("yes, sequence %d", md.Sequence.Stream)
		}
	}
}

// missingByPartition counts, per partition, the pools a list left out.
func missingByPartition(pools []string, list []events.Status) map[int]int {
	listed := map[string]bool{}
	for _, st := range list {
		listed[st.Pool] = true
	}
	m := map[int]int{}
	for _, p := range pools {
		if !listed[p] {
			m[events.PartitionOf(p, 16)]++
		}
	}
	return m
}

// offered is the delivery service's offered (not last-resort) KeyPackages per pool, in
// upload order, read in one pass (ds.refs reads every upload for each pool).
func offered(ds *deliveryService) map[string][]string {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	m := map[string][]string{}
	for _, r := range ds.order {
		if u := ds.uploads[r]; !u.LastResort {
			m[u.Pool] = append(m[u.Pool], r)
		}
	}
	return m
}

// cpuTime is the CPU time this process has used (user + system), from /proc; 0 where
// there is none.
func cpuTime() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): utime and stime are the
	// 12th and 13th, in clock ticks of 1/100 s on Linux.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianD(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2].Round(10 * time.Millisecond)
}

func roundsOf(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(s, ", ")
}

// loadAverage is the machine's 1, 5 and 15 minute load averages (other processes share it).
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

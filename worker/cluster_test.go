package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
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
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsCluster is n in-process nats-servers routed to each other on loopback ports, with
// JetStream clustered (R3 streams and buckets).
type natsCluster struct {
	t     *testing.T
	nodes []*server.Server
	opts  []*server.Options
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t}
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	for i := range n {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
			}
		}
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: freePort(t),
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: "kpool", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
		c.opts = append(c.opts, o)
	}
	for i := range n {
		c.nodes = append(c.nodes, nil)
		c.start(i)
	}
	t.Cleanup(c.Shutdown)
	// JetStream answers once the nodes have elected a meta leader.
	nc, err := nats.Connect(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	eventually(t, 30*time.Second, "a JetStream meta leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})
	return c
}

func (c *natsCluster) start(i int) {
	ns, err := server.NewServer(c.opts[i])
	if err != nil {
		c.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		c.t.Fatalf("nats node %d did not start", i+1)
	}
	c.nodes[i] = ns
}

// Kill stops node i abruptly (its store stays for a restart).
func (c *natsCluster) Kill(i int) {
	if ns := c.nodes[i]; ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		c.nodes[i] = nil
	}
}

func (c *natsCluster) Shutdown() {
	for i := range c.nodes {
		c.Kill(i)
	}
}

// URL lists every node's client URL, as a worker of a real deployment would.
func (c *natsCluster) URL() string {
	var urls []string
	for _, o := range c.opts {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return strings.Join(urls, ",")
}

// startClusterWorker starts a worker in cluster mode sharing keyFile with the others.
func startClusterWorker(t *testing.T, url, dataDir, keyFile, id string, clock *testClock, mod ...func(*worker.Config)) *worker.Worker {
	t.Helper()
	return startWorker(t, url, dataDir, clock, append([]func(*worker.Config){func(c *worker.Config) {
		c.KeyFile = keyFile
		c.Cluster = worker.ClusterConfig{Enabled: true, WorkerID: id, LeaseTTL: 3 * time.Second}
	}}, mod...)...)
}

// owners maps each partition to the index of the worker that owns it; every partition
// must be owned exactly once for ok.
func owners(ws []*worker.Worker, n int) (map[int]int, bool) {
	m := map[int]int{}
	for i, w := range ws {
		if w == nil {
			continue
		}
		for _, p := range w.Partitions() {
			if _, dup := m[p]; dup {
				return m, false
			}
			m[p] = i
		}
	}
	return m, len(m) == n
}

// balanced waits until every partition is owned once and the live workers share them
// evenly (each holds at most ⌈16/n⌉, so none is left to take).
func balanced(t *testing.T, ws []*worker.Worker) {
	t.Helper()
	eventually(t, 60*time.Second, "16 partitions owned once each, spread evenly", func() bool {
		if _, ok := owners(ws, 16); !ok {
			return false
		}
		live := 0
		for _, w := range ws {
			if w != nil {
				live++
			}
		}
		share := (16 + live - 1) / live
		for _, w := range ws {
			if w != nil && (len(w.Partitions()) > share || len(w.Partitions()) < 16/live) {
				return false
			}
		}
		return true
	})
}

// TestClusterOfOne: one worker in cluster mode on one server owns all 16 partitions and
// does what a single worker does through them — every cipher suite, both custodies,
// register, fill, list, take.
func TestClusterOfOne(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	w := startClusterWorker(t, ns.URL(), t.TempDir(), filepath.Join(t.TempDir(), "kpool.key"), "solo", clock)
	eventually(t, 20*time.Second, "16 partitions owned", func() bool { _, ok := owners([]*worker.Worker{w}, 16); return ok })
	// Wall-clock events: in a cluster, "too far in the future" is judged against the time
	// the stream stored an event, not a test's clock.
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, true)
	var pools []string
	for _, suite := range mls.AllSuites {
		p := fmt.Sprintf("suite-%d", suite)
		pools = append(pools, p)
		if _, err := c.Register(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: uint16(suite)}, nil); err != nil {
			t.Fatalf("register %s: %v", p, err)
		}
	}
	cl := newMLSClient(t, 1, "carol@example.org", clock)
	if _, err := c.RegisterSealed(ctx(t), "carol", natsbus.RegisterRequest{Identity: "carol@example.org", CipherSuite: 1,
		Custody: events.CustodyClient, SignatureKey: cl.signer.Public()}); err != nil {
		t.Fatalf("register client pool: %v", err)
	}
	pools = append(pools, "carol")
	stop, err := c.RunClient(context.Background(), "carol", cl, natsbus.ClientOptions{OnError: func(err error) { t.Logf("client: %v", err) }})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	notFull := ""
	defer func() {
		if t.Failed() {
			t.Log("not full:", notFull)
		}
	}()
	eventually(t, 60*time.Second, "every pool full", func() bool {
		for _, p := range pools {
			st, err := c.Status(ctx(t), p)
			if err != nil || st.AvailableFresh < 10 || st.Counts.Created != 0 {
				notFull = fmt.Sprintf("%s: %+v %s %v", p, st.Counts, st.GenerationError, err)
				return false
			}
		}
		return true
	})
	list, err := c.List(ctx(t))
	if err != nil || len(list) != len(pools) {
		t.Fatalf("list: %d pools, %v", len(list), err)
	}
	if got := len(cl.held(t)); got != 11 {
		t.Fatalf("the client holds %d KeyPackages, want 11 (10 and a last resort)", got)
	}
	for _, p := range pools[:len(pools)-1] {
		ref := ds.refs(p, false)[0]
		suite := list[slices.IndexFunc(list, func(st events.Status) bool { return st.Pool == p })].CipherSuite
		if _, err := c.Take(ctx(t), p, ref, suite); err != nil {
			t.Fatalf("take %s/%s: %v", p, ref, err)
		}
		if _, err := c.Take(ctx(t), p, ref, suite); err == nil {
			t.Fatalf("second take of %s/%s succeeded", p, ref)
		}
	}
	if _, err := c.Take(ctx(t), "carol", ds.refs("carol", false)[0], 1); err == nil || !strings.Contains(err.Error(), "custody") {
		t.Fatalf("take from a client-custody pool: %v, want a refusal", err)
	}
}

var clusterPools = flag.Int("cluster-pools", 1000, "pools in TestCluster")

func smallPools() *pool.Config {
	c := pool.DefaultConfig()
	c.Target, c.LowWatermark, c.HardCap = 2, 2, 6 // every claim is refilled: generation resumes on a new owner
	return &c
}

// clusterLoad is the test's view of what it asked for: pools, and the claims it published.
type clusterLoad struct {
	t       *testing.T
	c       *natsbus.Client
	ds      *deliveryService
	pools   []string
	mu      sync.Mutex
	claimed map[string]string // ref → pool
	taken   map[string]string // ref → pool
}

func (l *clusterLoad) each(fn func(p string) error) {
	l.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(l.pools))
	sem := make(chan struct{}, 16)
	for _, p := range l.pools {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(p); err != nil {
				errs <- fmt.Errorf("pool %s: %w", p, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		l.t.Fatal(err)
	}
}

// used reports a KeyPackage the test claimed or took. Callers hold mu.
func (l *clusterLoad) used(ref string) bool {
	_, c := l.claimed[ref]
	_, t := l.taken[ref]
	return c || t
}

// claimOne publishes a claim of one more offered KeyPackage of each pool in pools. A
// publish that fails (a NATS node going away) is retried with the same event id, as a
// delivery service would: the stream keeps it once.
func (l *clusterLoad) claimOne(pools []string) error {
	for _, p := range pools {
		l.mu.Lock()
		ref := ""
		for _, r := range l.ds.refs(p, false) {
			if !l.used(r) {
				ref = r
				break
			}
		}
		if ref != "" {
			l.claimed[ref] = p
		}
		l.mu.Unlock()
		if ref == "" {
			return fmt.Errorf("pool %s: no offered KeyPackage left to claim", p)
		}
		ev := events.Event{ID: natsbus.NewEventID(), Type: events.TypeClaimed, Pool: p, Ref: ref}
		for deadline := time.Now().Add(time.Minute); ; {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := l.c.Publish(cctx, ev)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("claim %s/%s: %w", p, ref, err)
			}
		}
	}
	return nil
}

// check waits until every pool's counts are what the claims made of them and every claim
// took effect exactly once: one transition to claimed in the outbound stream.
func (l *clusterLoad) check(t *testing.T, js jetstream.JetStream, within time.Duration) {
	t.Helper()
	perPool, takes := map[string]int{}, map[string]int{}
	l.mu.Lock()
	claimed := maps.Clone(l.claimed)
	for _, p := range l.taken {
		takes[p]++
	}
	l.mu.Unlock()
	for _, p := range claimed {
		perPool[p]++
	}
	bad := "not checked"
	deadline := time.Now().Add(within)
	for !func() bool {
		list, err := l.c.List(ctx(t))
		if err != nil || len(list) != len(l.pools) {
			bad = fmt.Sprintf("list: %d pools, %v", len(list), err)
			return false
		}
		for _, st := range list {
			c := st.Counts
			if c.Claimed != perPool[st.Pool] || c.Deleted != takes[st.Pool] || c.Available < st.Target || c.Created != 0 || c.Available+c.Claimed > st.HardCap {
				bad = fmt.Sprintf("pool %s: %+v after %d claims and %d takes", st.Pool, c, perPool[st.Pool], takes[st.Pool])
				return false
			}
		}
		n, err := transitionsTo(t, js, "claimed")
		if err != nil {
			bad = err.Error()
			return false
		}
		for ref, p := range claimed {
			if n[ref] != 1 {
				bad = fmt.Sprintf("KeyPackage %s of pool %s: %d transitions to claimed, want exactly 1", ref, p, n[ref])
				return false
			}
		}
		if len(n) != len(claimed) {
			bad = fmt.Sprintf("%d KeyPackages went to claimed, %d were claimed", len(n), len(claimed))
			return false
		}
		return true
	}() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, bad)
		}
		time.Sleep(200 * time.Millisecond) // polling interval
	}
}

// transitionsTo counts, per ref, the transitions to state in the outbound stream.
func transitionsTo(t *testing.T, js jetstream.JetStream, state string) (map[string]int, error) {
	t.Helper()
	cons, err := js.OrderedConsumer(ctx(t), "KPOOL_OUTBOUND", jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.Subjects{Prefix: "kpool"}.Outbound(events.KindTransition, "*")}})
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(ctx(t))
	if err != nil {
		return nil, err
	}
	n := map[string]int{}
	for left := info.NumPending; left > 0; {
		batch, err := cons.Fetch(int(min(left, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		got := uint64(0)
		for m := range batch.Messages() {
			got++
			var tr events.Transition
			if err := json.Unmarshal(m.Data(), &tr); err != nil {
				t.Fatal(err)
			}
			if tr.To == state {
				n[tr.Ref]++
			}
		}
		if got == 0 {
			return nil, fmt.Errorf("outbound stream: %d transitions not delivered (%v)", left, batch.Error())
		}
		left -= got
	}
	return n, nil
}

// TestCluster: three NATS nodes (R3) and three workers over 1 000 pools. An owner dies
// abruptly under load, then a NATS node; a fourth worker joins; a worker loses its data
// directory. After each, every pool's counts and every claim's single effect are checked,
// and a take of a KeyPackage a dead worker offered succeeds once.
func TestCluster(t *testing.T) {
	nc3 := startNATSCluster(t, 3)
	url := nc3.URL()
	clock := newClock()
	keyFile := filepath.Join(t.TempDir(), "kpool.key")
	mod := func(c *worker.Config) { c.Defaults = smallPools() }
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()}
	var ws []*worker.Worker
	for i := range 3 {
		ws = append(ws, startClusterWorker(t, url, dirs[i], keyFile, fmt.Sprintf("w%d", i+1), clock, mod))
	}
	balanced(t, ws)
	nc, c := connect(t, url)
	js, _ := jetstream.New(nc)
	l := &clusterLoad{t: t, c: c, ds: startDS(t, c, true), claimed: map[string]string{}, taken: map[string]string{}}
	n := *clusterPools
	if raceEnabled {
		n /= 4
	}
	for i := range n {
		l.pools = append(l.pools, fmt.Sprintf("pool-%04d", i))
	}
	start := time.Now()
	l.each(func(p string) error {
		_, err := c.Register(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1}, nil)
		return err
	})
	l.check(t, js, 120*time.Second)
	t.Logf("%d pools registered and filled in %v", len(l.pools), time.Since(start).Round(time.Millisecond))

	top := t // workers started in a subtest outlive it
	t.Run("owner killed", func(t *testing.T) {
		own, _ := owners(ws, 16)
		victim := own[events.PartitionOf(l.pools[0], 16)]
		var offered []string // pools of the victim's partitions
		for _, p := range l.pools {
			if own[events.PartitionOf(p, 16)] == victim {
				offered = append(offered, p)
			}
		}
		done := make(chan error)
		go func() { done <- l.claimOne(l.pools[:len(l.pools)/2]) }()
		ws[victim].Kill()
		killed := time.Now()
		ws[victim] = nil
		eventually(t, 15*time.Second, "the dead worker's partitions owned by the others", func() bool { _, ok := owners(ws, 16); return ok })
		failover := time.Since(killed)
		t.Logf("failover: partitions owned again %v after the kill (lease TTL 3s)", failover.Round(time.Millisecond))
		if failover > 10*time.Second {
			t.Errorf("failover took %v, want < 10s", failover)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		l.check(t, js, 60*time.Second)
		// A KeyPackage the dead worker offered is taken once, from the new owner.
		p := offered[len(offered)-1]
		l.mu.Lock()
		ref := ""
		for _, r := range l.ds.refs(p, false) {
			if !l.used(r) {
				ref = r
			}
		}
		l.taken[ref] = p
		l.mu.Unlock()
		if _, err := c.Take(ctx(t), p, ref, 1); err != nil {
			t.Fatalf("take %s/%s after failover: %v", p, ref, err)
		}
		if _, err := c.Take(ctx(t), p, ref, 1); err == nil || !strings.Contains(err.Error(), "deleted") {
			t.Logf("%v", err)
			t.Fatalf("second take of %s/%s: %v, want a refusal", p, ref, err)
		}
	})

	t.Run("NATS node killed", func(t *testing.T) {
		done := make(chan error)
		go func() { done <- l.claimOne(l.pools[len(l.pools)/2:]) }()
		nc3.Kill(1)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		balanced(t, ws)
		l.check(t, js, 60*time.Second)
	})

	t.Run("fourth worker", func(t *testing.T) {
		ws = append(ws, startClusterWorker(top, url, dirs[3], keyFile, "w4", clock, mod))
		balanced(t, ws)
		if len(ws[3].Partitions()) == 0 {
			t.Fatal("the fourth worker owns no partition")
		}
		l.check(t, js, 60*time.Second)
		l.takeOnceIn(t, ws[3])
		// Each pool's gauges come from the one worker that owns it now.
		eventually(t, 10*time.Second, "every pool's gauges reported by exactly one worker", func() bool {
			seen := map[string]int{}
			for _, w := range ws {
				if w == nil {
					continue
				}
				mfs, err := w.Gatherer().Gather()
				if err != nil {
					t.Fatal(err)
				}
				for _, mf := range mfs {
					if mf.GetName() != "kpool_pool_available_fresh" {
						continue
					}
					for _, m := range mf.GetMetric() {
						for _, lp := range m.GetLabel() {
							if lp.GetName() == "pool" {
								seen[lp.GetValue()]++
							}
						}
					}
				}
			}
			for _, p := range l.pools {
				if seen[p] != 1 {
					return false
				}
			}
			return len(seen) == len(l.pools)
		})
	})

	t.Run("data directory lost", func(t *testing.T) {
		i := slices.IndexFunc(ws, func(w *worker.Worker) bool { return w != nil })
		if err := ws[i].Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(dirs[i]); err != nil {
			t.Fatal(err)
		}
		ws[i] = startClusterWorker(top, url, dirs[i], keyFile, fmt.Sprintf("w%d", i+1), clock, mod)
		balanced(t, ws)
		if len(ws[i].Partitions()) == 0 {
			t.Fatal("the restarted worker owns no partition")
		}
		// Its partitions answer only once their views have caught up with the log: the
		// first list already holds every pool.
		if list, err := c.List(ctx(t)); err != nil || len(list) != len(l.pools) {
			t.Fatalf("list right after the rebuild: %d of %d pools, %v", len(list), len(l.pools), err)
		}
		l.check(t, js, 60*time.Second)
		l.takeOnceIn(t, ws[i]) // its keys come from the keys bucket: its disk had none
	})
}

// takeOnceIn takes an offered KeyPackage of a pool in one of w's partitions, then checks
// that a second take is refused.
func (l *clusterLoad) takeOnceIn(t *testing.T, w *worker.Worker) {
	t.Helper()
	parts := w.Partitions()
	for _, p := range l.pools {
		if !slices.Contains(parts, events.PartitionOf(p, 16)) {
			continue
		}
		l.mu.Lock()
		ref := ""
		for _, r := range l.ds.refs(p, false) {
			if !l.used(r) {
				ref = r
			}
		}
		if ref != "" {
			l.taken[ref] = p
		}
		l.mu.Unlock()
		if ref == "" {
			continue
		}
		if _, err := l.c.Take(ctx(t), p, ref, 1); err != nil {
			t.Fatalf("take %s/%s: %v", p, ref, err)
		}
		if _, err := l.c.Take(ctx(t), p, ref, 1); err == nil || !strings.Contains(err.Error(), "deleted") {
			t.Fatalf("second take of %s/%s: %v, want a refusal", p, ref, err)
		}
		return
	}
	t.Fatal("no offered KeyPackage in the worker's partitions")
}

// TestPartitionsMatchTheServer: the partition the worker computes for a pool (to route
// its API calls) is the one nats-server's subject transform files its events under.
func TestPartitionsMatchTheServer(t *testing.T) {
	ns := startNATS(t)
	nc, _ := connect(t, ns.URL())
	js, _ := jetstream.New(nc)
	subj := events.Subjects{Prefix: "kpool"}
	if err := natsbus.EnsureStreams(ctx(t), js, subj, natsbus.StreamOptions{Partitions: 16, EventsMaxBytes: 8 << 20, OutboundMaxBytes: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx(t), "KPOOL_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		pool := fmt.Sprintf("p%d-%x", i, i*7919)
		ack, err := js.Publish(ctx(t), subj.Event(pool, events.TypeClaimed), []byte("{}"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.GetMsg(ctx(t), ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("kpool.part.%d.events.%s.claimed", events.PartitionOf(pool, 16), pool)
		if m.Subject != want {
			t.Fatalf("pool %s stored as %s, worker computes %s", pool, m.Subject, want)
		}
		if back := subj.Unpartitioned(m.Subject); back != subj.Event(pool, events.TypeClaimed) {
			t.Fatalf("Unpartitioned(%s) = %s", m.Subject, back)
		}
	}
	// Another partition count on the same stream is refused, not applied silently.
	err = natsbus.EnsureStreams(ctx(t), js, subj, natsbus.StreamOptions{Partitions: 8, EventsMaxBytes: 8 << 20, OutboundMaxBytes: 8 << 20})
	if !errors.Is(err, natsbus.ErrPartitionsChanged) {
		t.Fatalf("8 partitions on a 16-partition stream: %v, want ErrPartitionsChanged", err)
	}
}

// TestClusterRebuildsFromSnapshot: a partition's view is copied to the snapshots store,
// so a worker with an empty data directory rebuilds it although the log no longer holds
// the inputs that built it (purged here; aged out in a real deployment).
func TestClusterRebuildsFromSnapshot(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	keyFile := filepath.Join(t.TempDir(), "kpool.key")
	snapEvery := func(c *worker.Config) {
		c.Cluster.Partitions, c.Cluster.SnapshotEvery = 4, 100*time.Millisecond
	}
	a := startClusterWorker(t, ns.URL(), t.TempDir(), keyFile, "a", clock, snapEvery)
	nc, c := connect(t, ns.URL())
	js, _ := jetstream.New(nc)
	ds := startDS(t, c, true)
	pools := []string{"alice", "bob", "carol", "dave", "erin", "frank"}
	for _, p := range pools {
		if _, err := c.Register(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1}, nil); err != nil {
			t.Fatalf("register %s: %v", p, err)
		}
	}
	filled := func() bool {
		list, err := c.List(ctx(t))
		if err != nil || len(list) != len(pools) {
			return false
		}
		for _, st := range list {
			if st.Counts.Available < 10 {
				return false
			}
		}
		return true
	}
	eventually(t, 30*time.Second, "pools filled", filled)
	st, err := js.Stream(ctx(t), "KPOOL_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	last := st.CachedInfo().State.LastSeq
	obj, err := js.ObjectStore(ctx(t), "KPOOL_SNAPSHOTS")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every partition's snapshot holding all it applied", func() bool {
		for p := range 4 {
			info, err := obj.GetInfo(ctx(t), fmt.Sprintf("part-%04d", p))
			if err != nil {
				return false
			}
			seq, _ := strconv.ParseUint(info.Headers.Get("Kpool-Input-Seq"), 10, 64)
			if applied, owned := a.PartitionApplied(p); !owned || seq < applied {
				return false
			}
		}
		return true
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// The log's head is gone: without the snapshots, nothing would say the pools exist.
	if err := st.Purge(ctx(t), jetstream.WithPurgeSequence(last+1)); err != nil {
		t.Fatal(err)
	}
	b := startClusterWorker(t, ns.URL(), t.TempDir(), keyFile, "b", clock, snapEvery)
	eventually(t, 30*time.Second, "the new worker owns every partition", func() bool { return len(b.Partitions()) == 4 })
	eventually(t, 30*time.Second, "pools as they were", filled)
	ref := ds.refs("carol", false)[0]
	if _, err := c.Take(ctx(t), "carol", ref, 1); err != nil {
		t.Fatalf("take after the rebuild from a snapshot: %v", err)
	}
}

// TestClusterLeaseLost: a worker whose lease key was taken over (as after a pause longer
// than the lease) stops its partition at the next renewal, and takes it again once the
// other holder's lease has expired.
func TestClusterLeaseLost(t *testing.T) {
	ns := startNATS(t)
	w := startClusterWorker(t, ns.URL(), t.TempDir(), filepath.Join(t.TempDir(), "kpool.key"), "w", newClock(),
		func(c *worker.Config) { c.Cluster.Partitions = 2 })
	both := func() bool { return slices.Equal(w.Partitions(), []int{0, 1}) }
	eventually(t, 20*time.Second, "both partitions owned", both)
	nc, _ := connect(t, ns.URL())
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx(t), "KPOOL_OWNERS")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx(t), "p.0"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx(t), "p.0", []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "partition 0 given up", func() bool { return slices.Equal(w.Partitions(), []int{1}) })
	if w.PartitionStore(0) != nil {
		t.Fatal("the worker still runs partition 0's engine")
	}
	eventually(t, 20*time.Second, "partition 0 taken again after the intruder's lease expired", both)
}

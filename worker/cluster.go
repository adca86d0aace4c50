package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// In cluster mode (docs/scale-out.md) NATS spreads pools over P partitions with the
// inbound stream's subject transform, and each partition is owned by one worker at a
// time through a lease in the owners bucket: a key p.<n> created (only if absent) with
// the worker's id and renewed with a revision check; the bucket forgets a key LeaseTTL
// after its last write, so the partitions of a worker that stopped renewing are taken by
// the others. The partition's input stream is the log of record: the owner's bbolt file
// is a view it rebuilds from the log, and private keys are in the replicated keys bucket
// before the input that offers them is published.

// cluster is the ownership loop of a top-level worker in cluster mode.
type cluster struct {
	w   *Worker
	id  string
	n   int
	ttl time.Duration
	b   natsbus.ClusterBuckets

	mu    sync.Mutex
	owned map[int]*lease
}

// lease is one owned partition. Its fields are guarded by cluster.mu.
type lease struct {
	rev      uint64    // revision of the lease key
	until    time.Time // the lease may be relied on until then (local clock)
	ckpt     uint64    // last checkpoint written
	e        *Worker   // nil while the partition is being taken
	dropping bool
}

func partKey(p int) string { return "p." + strconv.Itoa(p) }

// startCluster checks the master key against the cluster's, then starts owning
// partitions. Partitions are taken by the ownership loop, not before Start returns.
func (w *Worker) startCluster(ctx context.Context) error {
	cc := w.cfg.Cluster
	// Buckets are created by whichever worker comes first; on a cluster that has just
	// formed (or with several workers starting at once) that can take a few tries.
	var b natsbus.ClusterBuckets
	var err error
	for deadline, backoff := time.Now().Add(w.cfg.StartTimeout), 250*time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		if b, err = natsbus.EnsureBuckets(ctx, w.js, w.cfg.Prefix, w.cfg.Streams.Replicas, cc.LeaseTTL); err == nil {
			break
		}
		if time.Now().Add(backoff).After(deadline) {
			return fmt.Errorf("worker: %w", err)
		}
		w.log.Warn("creating the cluster's buckets failed; retrying", "err", err, "in", backoff)
		if !w.sleepCtx(backoff) {
			return fmt.Errorf("worker: %w", err)
		}
	}
	if err := w.checkClusterKey(ctx, b.Checkpoints); err != nil {
		return err
	}
	w.buckets = &b
	w.log = w.log.With("worker", cc.WorkerID)
	w.cluster = &cluster{w: w, id: cc.WorkerID, n: cc.Partitions, ttl: cc.LeaseTTL, b: b, owned: map[int]*lease{}}
	w.ready.Store(true)
	w.loops.Add(2)
	go w.cluster.every(w.cluster.renew)   // never waits behind a partition being taken
	go w.cluster.every(w.cluster.balance) // takes (which may download a snapshot) and gives back
	w.log.Info("cluster mode", "partitions", cc.Partitions, "lease_ttl", cc.LeaseTTL, "replicas", w.cfg.Streams.Replicas)
	return nil
}

// ErrClusterKey means the worker's master key is not the one the cluster's records are
// sealed under.
var ErrClusterKey = errors.New("worker: the master key differs from the cluster's")

// checkClusterKey records the master key's check value in the cluster on the first
// start and refuses a worker whose key differs: what it sealed no other worker could open.
func (w *Worker) checkClusterKey(ctx context.Context, kv jetstream.KeyValue) error {
	check, err := persistence.KeyCheck(w.cfg.KeyFile, true)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if _, err := kv.Create(ctx, "key", []byte(check)); err == nil || !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	e, err := kv.Get(ctx, "key")
	if err != nil {
		return fmt.Errorf("worker: reading the cluster's key check: %w", err)
	}
	if string(e.Value()) != check {
		return fmt.Errorf("%w: %s is not the key the other workers use; copy theirs (docs/scale-out.md)", ErrClusterKey, w.cfg.KeyFile)
	}
	return nil
}

// every runs fn every TTL/5 until the worker stops.
func (c *cluster) every(fn func()) {
	defer c.w.loops.Done()
	t := time.NewTicker(c.ttl / 5)
	defer t.Stop()
	for {
		fn()
		select {
		case <-c.w.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// balance gives up what is over this worker's share and takes free partitions up to it.
func (c *cluster) balance() {
	ctx, cancel := context.WithTimeout(c.w.ctx, c.ttl/2)
	defer cancel()
	live, err := c.liveWorkers(ctx)
	i := slices.Index(live, c.id)
	if err != nil || i < 0 {
		if c.w.ctx.Err() == nil {
			c.w.log.Warn("listing the cluster's workers failed", "err", err)
		}
		return
	}
	// Quotas by rank among the live workers add up to P exactly: n/live each, one more
	// for the first n%live.
	share := c.n / len(live)
	if i < c.n%len(live) {
		share++
	}
	owned := c.ownedParts()
	for len(owned) > share {
		p := owned[len(owned)-1]
		owned = owned[:len(owned)-1]
		c.release(p)
	}
	// Lease the free partitions first, then take them all at once: after a failover a
	// worker takes several, and one at a time the last would wait for all the others.
	var wg sync.WaitGroup
	for i := 0; i < c.n && len(owned) < share && c.w.ctx.Err() == nil; i++ {
		p := (events.PartitionOf(c.id, c.n) + i) % c.n // workers start their search apart
		if slices.Contains(owned, p) {
			continue
		}
		start := time.Now()
		rev, err := c.b.Owners.Create(ctx, partKey(p), []byte(c.id))
		if err != nil {
			continue // owned by another worker (or NATS is unreachable)
		}
		l := &lease{rev: rev, until: start.Add(c.safeTTL())}
		c.mu.Lock()
		c.owned[p] = l // renewed from now on, while it is being taken
		c.mu.Unlock()
		owned = append(owned, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Taking it may download a snapshot: its own deadline, not the balance's.
			actx, acancel := context.WithTimeout(c.w.ctx, 5*time.Minute)
			defer acancel()
			if err := c.acquire(actx, p, l); err != nil {
				c.w.log.Error("taking a partition failed; giving it back", "partition", p, "err", err)
				c.release(p)
			}
		}()
	}
	wg.Wait()
}

// renew heartbeats and extends each lease; a lease that another worker holds now, or
// that ran out while NATS was unreachable, is dropped at once.
func (c *cluster) renew() {
	ctx, cancel := context.WithTimeout(c.w.ctx, c.ttl/2)
	defer cancel()
	if _, err := c.b.Owners.Put(ctx, "w."+c.id, []byte(c.w.cfg.Clock().UTC().Format(time.RFC3339Nano))); err != nil && c.w.ctx.Err() == nil {
		c.w.log.Warn("cluster heartbeat failed", "err", err)
	}
	// One renewal per partition, all at once: a worker holding many partitions on a
	// loaded machine must not let the last ones run out while the first are renewed.
	var wg sync.WaitGroup
	for _, p := range c.ownedParts() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.renewOne(ctx, p)
		}()
	}
	wg.Wait()
}

func (c *cluster) renewOne(ctx context.Context, p int) {
	c.mu.Lock()
	l := c.owned[p]
	if l == nil || l.dropping {
		c.mu.Unlock()
		return
	}
	rev, until := l.rev, l.until
	c.mu.Unlock()
	start := time.Now()
	rev, err := c.b.Owners.Update(ctx, partKey(p), []byte(c.id), rev)
	switch {
	case err == nil:
		c.mu.Lock()
		l.rev, l.until = rev, start.Add(c.safeTTL())
		e, ckpt := l.e, l.ckpt
		if e != nil {
			e.leaseUntil.Store(l.until.UnixNano())
		}
		c.mu.Unlock()
		if e == nil {
			return
		}
		if d := e.drained.Load(); d > ckpt {
			if _, err := c.b.Checkpoints.Put(ctx, partKey(p), []byte(strconv.FormatUint(d, 10))); err == nil {
				c.mu.Lock()
				l.ckpt = max(l.ckpt, d)
				c.mu.Unlock()
			}
		}
	case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) || time.Now().After(until):
		if c.w.ctx.Err() == nil {
			c.w.log.Warn("partition lease lost; stopping it", "partition", p, "err", err)
			c.drop(p, false)
		}
	default:
		if c.w.ctx.Err() == nil {
			c.w.log.Warn("partition lease not renewed; retrying", "partition", p, "err", err)
		}
	}
}

// safeTTL is how long after a renewal started the worker still acts as owner: short of
// the server's expiry, which counts from when the renewal was stored.
func (c *cluster) safeTTL() time.Duration { return c.ttl - c.ttl/5 }

// liveWorkers lists the ids of the workers whose heartbeat is current, sorted.
func (c *cluster) liveWorkers(ctx context.Context) ([]string, error) {
	l, err := c.b.Owners.ListKeysFiltered(ctx, "w.*")
	if err != nil {
		return nil, err
	}
	var ids []string
	for k := range l.Keys() {
		ids = append(ids, strings.TrimPrefix(k, "w."))
	}
	slices.Sort(ids)
	return ids, nil
}

func (c *cluster) ownedParts() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps := make([]int, 0, len(c.owned))
	for p := range c.owned {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// engine is the running engine of partition p, or nil when another worker owns it.
func (c *cluster) engine(p int) *Worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.owned[p]; l != nil && l.e != nil && !l.dropping && l.e.leaseValid() && !l.e.releasing.Load() {
		return l.e
	}
	return nil
}

// acquire starts the engine of a partition just leased: it catches up from its local
// view (or from the start of the log) before it generates or answers.
func (c *cluster) acquire(ctx context.Context, p int, l *lease) error {
	published := uint64(0)
	switch e, err := c.b.Checkpoints.Get(ctx, partKey(p)); {
	case err == nil:
		published, _ = strconv.ParseUint(string(e.Value()), 10, 64)
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return err
	}
	st, err := c.w.js.Stream(ctx, c.w.streams.Events)
	if err != nil {
		return err
	}
	e := c.w.newEngine(p)
	c.mu.Lock()
	e.leaseUntil.Store(l.until.UnixNano())
	c.mu.Unlock()
	e.published = published
	if e.catchUp, err = lastSeqOf(ctx, st, e.filters); err != nil {
		return err
	}
	dir := filepath.Join(c.w.cfg.DataDir, "partitions", fmt.Sprintf("%04d", p))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, "kpool.db")
	restored, err := c.restoreSnapshot(ctx, p, path)
	if err != nil {
		return fmt.Errorf("restoring the partition's snapshot: %w", err)
	}
	// A missing file is normal here: the partition's view is rebuilt from the log.
	if err := e.openStore(path, true); err != nil {
		return err
	}
	if applied := e.appliedSeq.Load(); published >= applied && applied > 0 {
		// Every effect of the view's inputs is out already: what waits in its outbox
		// would go out again, possibly after the stream's duplicate window.
		if _, err := e.store.DropOutbox(); err != nil {
			_ = e.stopInputs(false)
			return err
		}
	}
	if err := e.startInputs(ctx); err != nil {
		_ = e.stopInputs(false)
		return err
	}
	if err := e.serveRoute(); err != nil {
		_ = e.stopInputs(false)
		return err
	}
	e.loops.Add(1)
	go e.snapshotLoop(restored) // a restored copy need not be stored again
	c.mu.Lock()
	dropped := l.dropping
	if !dropped {
		l.e, l.ckpt = e, published
		e.leaseUntil.Store(l.until.UnixNano())
	}
	c.mu.Unlock()
	if dropped { // lost while it was being taken
		_ = e.route.Unsubscribe()
		return errors.Join(errors.New("the lease was lost while the partition was being taken"), e.stopInputs(false))
	}
	c.w.log.Info("partition taken", "partition", p, "applied", e.appliedSeq.Load(), "from_snapshot", restored, "catch_up_to", e.catchUp, "published_through", published)
	return nil
}

// lastSeqOf is the stream sequence of the last message under any of filters (0: none):
// where a new owner has caught up with its partition's log.
func lastSeqOf(ctx context.Context, st jetstream.Stream, filters []string) (uint64, error) {
	var last uint64
	for _, f := range filters {
		m, err := st.GetLastMsgForSubject(ctx, f)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("last message of %s: %w", f, err)
		}
		last = max(last, m.Sequence)
	}
	return last, nil
}

// release hands a partition over: its engine publishes what is pending, the checkpoint
// is written, and the lease is deleted so that another worker takes it at once.
func (c *cluster) release(p int) {
	l := c.drop(p, true)
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.ttl)
	defer cancel()
	c.mu.Lock()
	e, ckpt, rev := l.e, l.ckpt, l.rev
	c.mu.Unlock()
	if e != nil {
		if d := e.drained.Load(); d > ckpt {
			_, _ = c.b.Checkpoints.Put(ctx, partKey(p), []byte(strconv.FormatUint(d, 10)))
		}
	}
	if err := c.b.Owners.Delete(ctx, partKey(p), jetstream.LastRevision(rev)); err != nil {
		c.w.log.Warn("partition lease not deleted; it expires", "partition", p, "err", err)
	}
	c.w.log.Info("partition released", "partition", p)
}

// drop stops a partition's engine and forgets its lease; flush publishes its outbox
// first (a release, not a lost lease). Nil when the partition is not held (or another
// drop has it).
func (c *cluster) drop(p int, flush bool) *lease {
	c.mu.Lock()
	l := c.owned[p]
	if l == nil || l.dropping {
		c.mu.Unlock()
		return nil
	}
	l.dropping = true
	e := l.e
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.owned, p)
		c.mu.Unlock()
	}()
	if e == nil { // still being taken: acquire stops it when it sees dropping
		return l
	}
	e.releasing.Store(true) // new calls go to the next owner
	if e.route != nil {
		_ = e.route.Unsubscribe()
	}
	if flush { // the calls under way finish here (their inputs are in the log already)
		for deadline := time.Now().Add(5 * time.Second); e.pending.size() > 0 && time.Now().Before(deadline) && e.leaseValid(); {
			time.Sleep(20 * time.Millisecond) // polling interval
		}
	}
	pools, _ := e.store.Pools()
	if err := e.stopInputs(flush); err != nil {
		c.w.log.Warn("stopping a partition", "partition", p, "err", err)
	}
	for _, pl := range pools { // the next owner reports them
		c.w.metrics.forget(pl.ID)
	}
	return l
}

// leave releases every partition (a graceful stop) and the worker's heartbeat.
func (c *cluster) leave() {
	c.w.stop() // the ownership loop takes nothing more
	c.w.loops.Wait()
	for _, p := range c.ownedParts() {
		c.release(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.ttl)
	defer cancel()
	_ = c.b.Owners.Delete(ctx, "w."+c.id)
}

// newEngine makes the engine of partition p: a Worker with its own input sequence and
// store that shares the top level's connection, core and metrics.
func (w *Worker) newEngine(p int) *Worker {
	e := &Worker{
		cfg: w.cfg, log: w.log.With("partition", p), subj: w.subj, streams: w.streams,
		nc: w.nc, js: w.js, core: w.core, metrics: w.metrics, buckets: w.buckets,
		relayKick: make(chan struct{}, 1), inputs: make(chan inbound, w.cfg.Batch),
		part: p, filters: w.subj.PartitionFilters(p), msgIDPrefix: "p" + strconv.Itoa(p) + ":",
	}
	e.step = e.stepFunc()
	e.ctx, e.stop = context.WithCancel(context.Background()) // stopped by drop, not by the top level
	return e
}

// leaseValid reports whether the engine may still act as its partition's owner.
func (w *Worker) leaseValid() bool {
	return w.part < 0 || time.Now().UnixNano() < w.leaseUntil.Load()
}

// Partitions lists the partitions this worker owns now (cluster mode).
func (w *Worker) Partitions() []int {
	if w.cluster == nil {
		return nil
	}
	return w.cluster.ownedParts()
}

// PartitionStore is the store of an owned partition (tests, inspection), nil if not owned.
func (w *Worker) PartitionStore(p int) *persistence.Store {
	if w.cluster == nil {
		return nil
	}
	if e := w.cluster.engine(p); e != nil {
		return e.store
	}
	return nil
}

// PartitionApplied is the stream sequence an owned partition has applied through.
func (w *Worker) PartitionApplied(p int) (uint64, bool) {
	if w.cluster == nil {
		return 0, false
	}
	if e := w.cluster.engine(p); e != nil {
		return e.appliedSeq.Load(), true
	}
	return 0, false
}

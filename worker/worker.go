package worker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// Worker is a running kpool worker. Start it with Start, stop it with Close.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	subj    events.Subjects
	streams natsbus.Streams

	ns      *server.Server // nil when using an external NATS
	nc      *nats.Conn
	js      jetstream.JetStream
	store   *persistence.Store
	core    *pool.Core
	step    persistence.StepFunc // the core's step (tests wrap it with faults)
	svc     micro.Service
	metrics *metrics
	httpSrv *http.Server
	gen     *generator

	// the input sequence (writer.go)
	inputs     chan inbound
	nextSeq    atomic.Uint64 // stream sequence the reader expects next
	appliedSeq atomic.Uint64 // stream sequence of the last committed input
	pending    pendingCalls
	failures   int // consecutive internal failures (writer goroutine only)
	ready      atomic.Bool

	ncClosed  chan struct{}
	relayMu   sync.Mutex
	relayed   uint64 // outbox key of the last message the relay published (relay.go)
	relayKick chan struct{}
	ackMu     sync.Mutex
	acks      []string   // published outbox ids, removed in the writer's next transaction
	regMu     sync.Mutex // serializes pool registration (key generation + first commit)

	// Cluster mode (cluster.go). The top-level worker owns no store: every partition it
	// holds the lease of runs as an engine, a Worker of its own (store, reader, writer,
	// relay, generator) that shares the top level's connection, core and metrics.
	cluster     *cluster // top level in cluster mode
	buckets     *natsbus.ClusterBuckets
	part        int           // an engine's partition; -1 for the single worker
	filters     []string      // the stored subjects the reader follows
	msgIDPrefix string        // outbound Nats-Msg-Ids: partitions share the outbound streams
	leaseUntil  atomic.Int64  // an engine's lease ends then (unix nanoseconds, local clock)
	published   uint64        // effects of inputs up to it are out already (previous owner)
	catchUp     uint64        // its partition's last message when the engine took it
	caughtUp    atomic.Bool   // set once; until then a partition's engine neither generates nor answers
	drained     atomic.Uint64 // every effect of inputs up to it has been published
	route       *nats.Subscription
	releasing   atomic.Bool // an engine handing its partition over takes no new calls

	ctx     context.Context // cancelled by Close: stop taking new work
	stop    context.CancelFunc
	loops   sync.WaitGroup
	closing sync.Once
	closed  chan struct{}
	err     error
	started bool // Start returned it: only then does shutdown say "worker stopped"
}

// Start opens the store, connects to (or starts) NATS, ensures the streams and the
// durable consumer, relays any outbox left from a previous run, resumes outstanding
// KeyPackage generation and starts consuming, ticking and serving the API.
func Start(ctx context.Context, cfg Config) (_ *Worker, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("worker: data directory: %w", err)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	w := &Worker{
		cfg:       cfg,
		log:       cfg.Logger,
		subj:      events.Subjects{Prefix: cfg.Prefix},
		streams:   natsbus.StreamNames(cfg.Prefix),
		core:      &pool.Core{Defaults: *cfg.Defaults},
		relayKick: make(chan struct{}, 1),
		ncClosed:  make(chan struct{}),
		closed:    make(chan struct{}),
		part:      -1,

		inputs: make(chan inbound, cfg.Batch),
	}
	w.filters = []string{w.subj.Events(), w.subj.Inputs()}
	w.step = w.stepFunc()
	w.metrics = newMetrics(w.Ready)
	w.ctx, w.stop = context.WithCancel(context.Background())
	// Until Start returns, ctx ending (a signal during start-up) stops the worker too, so
	// waits that use w.ctx, such as the NATS retry in dial, end at once.
	stopStarting := context.AfterFunc(ctx, w.stop)
	defer stopStarting()
	defer func() {
		if err != nil {
			w.shutdown()
		}
	}()

	if !cfg.Cluster.Enabled {
		if err := w.openStore(filepath.Join(cfg.DataDir, "kpool.db"), cfg.NewDatabase); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsAddr != "" { // up first: /readyz says "not ready" while NATS is awaited
		if err := w.serveMetrics(cfg.MetricsAddr); err != nil {
			return nil, err
		}
	}

	if err := w.connect(); err != nil {
		return nil, err
	}
	if cfg.Cluster.Enabled && w.cfg.Streams.Replicas <= 0 {
		w.cfg.Streams.Replicas = 1 // a single server is a cluster of one
		if w.nc.ConnectedClusterName() != "" {
			w.cfg.Streams.Replicas = 3
		}
	}
	if err := natsbus.EnsureStreams(ctx, w.js, w.subj, w.cfg.Streams); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if cfg.Cluster.Enabled {
		if err := w.startCluster(ctx); err != nil {
			return nil, err
		}
	} else if err := w.startInputs(ctx); err != nil {
		return nil, err
	}
	if err := w.startService(); err != nil {
		return nil, err
	}
	if cfg.Tick > 0 {
		w.loops.Add(1)
		go w.tickLoop()
	}
	// The API subscriptions are registered on the server once this round trip returns,
	// so a request sent right after Start finds a responder.
	if err := w.nc.FlushTimeout(5 * time.Second); err != nil {
		return nil, fmt.Errorf("worker: NATS flush: %w", err)
	}
	if w.store != nil {
		w.logPools()
	}
	w.started = true
	return w, nil
}

// stepFunc is the core's step, behind the test hook when one is set.
func (w *Worker) stepFunc() persistence.StepFunc {
	hook := w.cfg.stepHook
	if hook == nil {
		return w.core.Step
	}
	return func(v pool.View, ev events.Event) (pool.Ready, error) {
		if err := hook(w.ctx, ev); err != nil {
			return pool.Ready{}, err
		}
		return w.core.Step(v, ev)
	}
}

// openStore opens the bbolt store and resumes the input sequence after its last input.
func (w *Worker) openStore(path string, newDatabase bool) error {
	st, err := persistence.Open(path, persistence.Options{KeyFile: w.cfg.KeyFile, NewDatabase: newDatabase, NoSync: w.cfg.NoSync, JournalRetention: w.cfg.JournalRetention})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	w.store = st
	last, err := w.store.InputSeq()
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	w.nextSeq.Store(last + 1)
	w.appliedSeq.Store(last)
	w.drained.Store(last)
	return nil
}

// startInputs publishes what a crash left in the outbox, resumes generation and starts
// the reader, writer, relay and generator of one input sequence.
func (w *Worker) startInputs(ctx context.Context) error {
	// What a crash left unpublished goes out first, with the same ids (deduplicated).
	if err := w.relayOnce(ctx); err != nil {
		w.log.Warn("outbox relay at start-up failed; will retry", "err", err)
	}
	w.gen = newGenerator(w)
	w.caughtUp.Store(w.appliedSeq.Load() >= w.catchUp)
	if w.caughtUp.Load() && w.part >= 0 {
		w.poolGauges()
	}
	if w.caughtUp.Load() {
		if err := w.gen.resume(); err != nil {
			return err
		}
	}
	w.ready.Store(true)
	w.loops.Add(4)
	go w.readLoop()
	go w.writeLoop()
	go w.relayLoop()
	go w.gen.loop()
	return nil
}

// connect starts the embedded server or dials NATSURL.
func (w *Worker) connect() error {
	url := w.cfg.NATSURL
	if url == "" {
		ns, err := StartEmbedded(EmbeddedOptions{Listen: w.cfg.Listen, StoreDir: filepath.Join(w.cfg.DataDir, "nats")})
		if err != nil {
			return err
		}
		w.ns = ns
		url = ns.ClientURL()
		w.log.Info("embedded NATS server listening", "url", url, "jetstream", filepath.Join(w.cfg.DataDir, "nats"))
	}
	opts := append([]nats.Option{
		nats.Name("kpool-worker"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if w.ctx.Err() == nil {
				w.log.Warn("NATS disconnected; reconnecting", "err", err)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(w.ncClosed) }),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			w.log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted())
			w.kickRelay()
		}),
	}, w.cfg.NATSOptions...)
	nc, err := w.dial(url, opts)
	if err != nil {
		return err
	}
	w.nc = nc
	w.js, err = jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if w.ns == nil {
		w.log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())
	}
	return nil
}

// dial connects to NATS, retrying with backoff for up to StartTimeout: a worker started
// before its NATS server (or during a restart) waits for it instead of exiting, and
// reports not ready meanwhile.
func (w *Worker) dial(url string, opts []nats.Option) (*nats.Conn, error) {
	deadline := time.Now().Add(w.cfg.StartTimeout)
	backoff := 250 * time.Millisecond
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		if time.Now().Add(backoff).After(deadline) {
			return nil, fmt.Errorf("worker: connect to NATS at %s (tried for %v): %w", url, w.cfg.StartTimeout, err)
		}
		w.log.Warn("NATS not reachable yet; retrying", "url", url, "err", err, "in", backoff)
		if !w.sleepCtx(backoff) {
			return nil, fmt.Errorf("worker: connect to NATS at %s: %w", url, err)
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (w *Worker) logPools() {
	pools, meta := w.poolGauges()
	w.log.Info("worker running", "prefix", w.cfg.Prefix, "pools", len(pools), "seq", meta.Seq, "stream_seq", w.appliedSeq.Load(), "core_time", meta.Time, "tick", w.cfg.Tick)
	for _, p := range pools {
		w.log.Info("pool", "pool", p.ID, "identity", p.Identity, "cipher_suite", p.CipherSuite,
			"created", p.Counts.Created, "available", p.Counts.Available, "claimed", p.Counts.Claimed,
			"expired", p.Counts.Expired, "fresh", p.Fresh, "target", p.Config.Target)
	}
}

// poolGauges sets every pool's gauges from the store, not only after its status next
// changes. In a cluster a worker reports the pools of the partitions it owns (drop
// removes them), so that sums over workers count each pool once.
func (w *Worker) poolGauges() ([]pool.Pool, pool.Meta) {
	pools, err := w.store.Pools()
	if err != nil {
		w.log.Error("reading pools", "err", err)
		return nil, pool.Meta{}
	}
	meta, _ := w.store.Meta()
	for _, p := range pools {
		w.metrics.observe(pool.StatusOf(p, meta.Time))
	}
	return pools, meta
}

// ClientURL is the URL of the NATS server the worker uses (the embedded one's, or the
// first of NATSURL).
func (w *Worker) ClientURL() string {
	if w.ns != nil {
		return w.ns.ClientURL()
	}
	return w.nc.ConnectedUrl()
}

// Conn is the worker's NATS connection.
func (w *Worker) Conn() *nats.Conn { return w.nc }

// Store gives read access to the worker's store (tests, inspection).
func (w *Worker) Store() *persistence.Store { return w.store }

// AppliedSeq is the stream sequence of the last input the worker committed: every
// message of the input stream up to it has been applied (or refused) exactly once.
func (w *Worker) AppliedSeq() uint64 { return w.appliedSeq.Load() }

// Ready is false while inputs keep failing inside the worker (see Config.MaxInternalFailures).
func (w *Worker) Ready() bool { return w.ready.Load() }

// Subjects are the worker's subjects.
func (w *Worker) Subjects() events.Subjects { return w.subj }

// Done is closed when the worker has stopped.
func (w *Worker) Done() <-chan struct{} { return w.closed }

// Close stops the worker gracefully: the API stops answering, the consumer finishes and
// commits the batch in hand, the outbox is flushed, then NATS and the store are closed.
// Generation in progress stops after the KeyPackage being committed; the rest is
// resumed at the next start (outstanding requests are durable).
func (w *Worker) Close() error {
	w.shutdown()
	return w.err
}

func (w *Worker) shutdown() {
	w.closing.Do(func() {
		var errs []error
		if w.svc != nil {
			errs = append(errs, w.svc.Stop())
		}
		w.log.Debug("shutdown: API stopped")
		if w.cluster != nil {
			w.cluster.leave()
		}
		errs = append(errs, w.stopInputs(true))
		if w.httpSrv != nil {
			errs = append(errs, w.httpSrv.Close())
		}
		if w.nc != nil {
			if err := w.nc.Drain(); err != nil {
				w.nc.Close()
			}
			select { // Drain is asynchronous
			case <-w.ncClosed:
			case <-time.After(5 * time.Second):
				w.nc.Close()
			}
		}
		if w.ns != nil {
			w.ns.Shutdown()
			w.ns.WaitForShutdown()
		}
		w.err = errors.Join(errs...)
		close(w.closed)
		if w.started {
			w.log.Info("worker stopped")
		}
	})
}

// stopInputs stops the loops; flush publishes the outbox one last time. It closes the store.
func (w *Worker) stopInputs(flush bool) error {
	w.stop()
	w.loops.Wait()
	w.log.Debug("shutdown: loops stopped")
	if w.store == nil {
		return nil
	}
	var errs []error
	if flush && w.nc != nil && w.nc.IsConnected() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := w.relayOnce(ctx); err != nil {
			w.log.Warn("final outbox flush incomplete; it is published at the next start", "err", err)
		}
		cancel()
	}
	if acks := w.takeAcks(); len(acks) > 0 {
		errs = append(errs, w.store.AckOutbox(acks...))
	}
	return errors.Join(append(errs, w.store.Close())...)
}

// sleepCtx waits d or until the worker stops; false means stop.
func (w *Worker) sleepCtx(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Package kpooltest runs a real kpool worker in-process for other teams' Go tests: an
// embedded nats-server with JetStream and a worker on a temporary data directory, started
// in one call, with a connected client. It replays NDJSON event logs into the worker over
// NATS, as a real publisher would, and waits — with a deadline, never a bare sleep — for
// the worker to settle or for a pool to reach a status.
//
// Deterministic mode fixes the worker's clock (it moves only when the test or a replayed
// log moves it) and seeds its key generation, so the KeyPackageRefs of a run are the same
// every time and golden files can name them.
package kpooltest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/replay"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
)

// DefaultOrigin is the deterministic clock's start unless Options.Origin is set.
var DefaultOrigin = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// DefaultSeed seeds deterministic key generation unless Options.Seed is set. The golden
// logs in testdata/replay were recorded with it, so they replay with the same refs.
var DefaultSeed = [32]byte{'k', 'p', 'o', 'o', 'l'}

// Options configure an Env. The zero value starts a worker on the wall clock with real
// randomness and no internal ticker.
type Options struct {
	// Deterministic fixes the clock at Origin (moved by Clock.Set/Advance and by
	// ReplayLog) and draws every key from a ChaCha8 stream seeded with Seed.
	Deterministic bool
	Origin        time.Time // default DefaultOrigin
	Seed          *[32]byte // default DefaultSeed

	// Prefix is the subject prefix (default "kpool").
	Prefix string
	// Defaults is the worker's default pool policy (default pool.DefaultConfig()).
	Defaults *pool.Config
	// Tick runs the worker's own expiry ticker (default 0: the test or the log ticks).
	Tick time.Duration
	// Dir is the data directory; default a new temporary directory removed by Close.
	Dir string
	// Logger receives the worker's logs (default: discarded).
	Logger *slog.Logger
	// JournalRetention is the worker's (default 30 days of event time);
	// worker.KeepJournal keeps the whole journal, for a test that moves the clock
	// further and then replays the journal from its start.
	JournalRetention time.Duration
}

// Env is a running worker with a client.
type Env struct {
	Worker *worker.Worker
	// Conn is the test's own NATS connection (not the worker's); Client wraps it.
	Conn   *nats.Conn
	Client *natsbus.Client
	// Clock is the worker's clock in deterministic mode, nil otherwise.
	Clock *Clock
	Dir   string

	subj   events.Subjects
	ownDir bool
}

// New starts an embedded nats-server and a worker on a random port and connects a client.
// Close stops everything and removes the temporary directory.
func New(ctx context.Context, o Options) (*Env, error) {
	e := &Env{Dir: o.Dir}
	if e.Dir == "" {
		d, err := os.MkdirTemp("", "kpooltest-")
		if err != nil {
			return nil, err
		}
		e.Dir, e.ownDir = d, true
	}
	if o.Prefix == "" {
		o.Prefix = events.DefaultPrefix
	}
	e.subj = events.Subjects{Prefix: o.Prefix}
	cfg := worker.Config{
		DataDir: e.Dir, Listen: "127.0.0.1:0", Prefix: o.Prefix, Tick: o.Tick,
		Defaults: o.Defaults, Logger: o.Logger, NoSync: true, JournalRetention: o.JournalRetention,
	}
	if o.Deterministic {
		origin, seed := o.Origin, DefaultSeed
		if origin.IsZero() {
			origin = DefaultOrigin
		}
		if o.Seed != nil {
			seed = *o.Seed
		}
		e.Clock = NewClock(origin)
		cfg.Clock = e.Clock.Now
		cfg.Rand = &lockedReader{r: rand.NewChaCha8(seed)}
	}
	w, err := worker.Start(ctx, cfg)
	if err != nil {
		e.removeDir()
		return nil, fmt.Errorf("kpooltest: %w", err)
	}
	// Start returns once the server has the API subscriptions, so requests find a responder.
	e.Worker = w
	nc, err := nats.Connect(w.ClientURL(), nats.Name("kpooltest client"))
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("kpooltest: connect: %w", err)
	}
	e.Conn = nc
	opts := []natsbus.Option{natsbus.WithPrefix(o.Prefix)}
	if e.Clock != nil {
		opts = append(opts, natsbus.WithClock(e.Clock.Now))
	}
	if e.Client, err = natsbus.NewClient(nc, opts...); err != nil {
		e.Close()
		return nil, fmt.Errorf("kpooltest: client: %w", err)
	}
	return e, nil
}

// Start is New for tests: it fails tb on error and closes the Env in tb.Cleanup.
func Start(tb testing.TB, o Options) *Env {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := New(ctx, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.Close(); err != nil {
			tb.Errorf("kpooltest: close: %v", err)
		}
	})
	return e
}

// Close stops the client and the worker (and its embedded server) and removes the
// temporary directory. It may be called more than once.
func (e *Env) Close() error {
	if e.Conn != nil {
		e.Conn.Close()
		e.Conn = nil
	}
	var err error
	if e.Worker != nil {
		err = e.Worker.Close()
		e.Worker = nil
	}
	e.removeDir()
	return err
}

func (e *Env) removeDir() {
	if e.ownDir {
		os.RemoveAll(e.Dir)
		e.ownDir = false
	}
}

// State dumps the worker's stored state in the expected-state format of `worker replay`
// (replay.State), so a test can compare it with a golden state file. Call it when the
// worker is idle (WaitIdle), or the dump may mix two moments.
func (e *Env) State() (*replay.State, error) {
	if e.Worker == nil {
		return nil, errors.New("kpooltest: env is closed")
	}
	return replay.Dump(replay.StoreSource{Store: e.Worker.Store()})
}

// lockedReader serializes a seeded stream: the worker draws keys from the API handler,
// the generator and takes, and ChaCha8 is not safe for concurrent use.
type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// Clock is a deterministic clock: it starts at an origin and moves only forward, when
// told to.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock at origin.
func NewClock(origin time.Time) *Clock { return &Clock{t: origin.UTC()} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to t if t is later; the clock never goes back.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.t) {
		c.t = t.UTC()
	}
}

// Advance moves the clock forward by d (negative d is ignored).
func (c *Clock) Advance(d time.Duration) {
	if d > 0 {
		c.mu.Lock()
		c.t = c.t.Add(d)
		c.mu.Unlock()
	}
}

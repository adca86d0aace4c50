// Package worker assembles a running kpool worker: NATS (an embedded nats-server or an
// existing cluster), the bbolt store, the pure core, the committer, the KeyPackage
// generator, the expiry ticker, the outbox relay, the `kpool` micro service and metrics.
// cmd/worker is a thin flag layer over it; tests and other teams start workers in-process
// with Start.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go"
)

// Config configures a worker. The zero value of every field has a sensible default except
// DataDir.
type Config struct {
	// DataDir holds kpool.db, kpool.key (unless KeyFile is set) and, with the embedded
	// server, the JetStream store under nats/.
	DataDir string
	// KeyFile is the store's master key (default <DataDir>/kpool.key, created if absent).
	KeyFile string
	// NewDatabase lets the worker create a new, empty database when its key file exists
	// but the database is missing or empty (persistence.Options.NewDatabase); without it
	// the worker refuses to start rather than silently drop every pool.
	NewDatabase bool

	// NATSURL points at an existing NATS server or cluster (JetStream required). Empty
	// runs an embedded nats-server on Listen.
	NATSURL string
	// NATSOptions are extra client options (credentials, TLS) for NATSURL.
	NATSOptions []nats.Option
	// Listen is the embedded server's client address (default 127.0.0.1:4222; port 0 or
	// -1 picks a free port).
	Listen string

	// Streams bounds the JetStream streams the worker creates when they are absent
	// (replicas, retention); existing streams keep their settings.
	Streams natsbus.StreamOptions
	// Prefix is the subject prefix (default "kpool").
	Prefix string
	// Tick is the period of the worker's own expiry_tick events; 0 disables the ticker
	// (an external scheduler publishes ticks instead).
	Tick time.Duration
	// Defaults is the default pool policy (default pool.DefaultConfig()).
	Defaults *pool.Config
	// MaxSkew is how far in the future an event's time may be before it is dead-lettered
	// (default 5m): the core's clock only moves forward, so one bad timestamp would
	// otherwise expire every pool at once.
	MaxSkew time.Duration
	// MetricsAddr serves Prometheus metrics at http://MetricsAddr/metrics when set.
	MetricsAddr string
	// Batch is the largest group of inputs the writer applies in one transaction, and
	// how many messages the reader fetches ahead (default 512).
	Batch int
	// GenerateWorkers is how many KeyPackages are generated in parallel (default the
	// number of CPUs; 1 when Rand is set, so a seeded key stream stays reproducible).
	GenerateWorkers int
	// StartTimeout is how long Start keeps trying to reach NATSURL, with backoff, before
	// it gives up (default 30s).
	StartTimeout time.Duration
	// MaxInternalFailures is how many consecutive internal failures (store, view,
	// invariant, bug — never a verdict on the input) make the worker report not ready
	// (default 5). It keeps retrying the same input with backoff and never skips it.
	MaxInternalFailures int

	// Cluster runs the worker as one of several sharing a NATS cluster: pools are spread
	// over partitions, each owned by one worker at a time (docs/scale-out.md). The zero
	// value is the single worker.
	Cluster ClusterConfig

	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// Clock is the wall clock of the edges (ticker, API events, skew check). The core
	// never reads it. Default time.Now; tests inject their own.
	Clock func() time.Time
	// Rand is the randomness for keys (default crypto/rand).
	Rand io.Reader
	// NoSync skips fsync in the store (tests only).
	NoSync bool
	// JournalRetention keeps journal entries, and the dedup ids they carry, whose event
	// time is within this long of the newest. Default (0): Streams.EventsMaxAge, else
	// DefaultJournalRetention — the events stream's age, so the journal stops growing
	// while every event the stream can still redeliver is recognised as a duplicate.
	// KeepJournal (any negative value) keeps everything. A redelivery older than this is
	// no longer recognised as a duplicate; `replay --verify` and `log export` see only
	// what is kept.
	JournalRetention time.Duration

	// stepHook runs before each step (tests: export_test.go); an error is an internal
	// failure of that input, as a failing store or view would be.
	stepHook func(context.Context, events.Event) error
}

// DefaultJournalRetention is the journal retention when neither Config.JournalRetention
// nor Config.Streams.EventsMaxAge is set: the events stream's default age (30 days).
const DefaultJournalRetention = 30 * 24 * time.Hour

// KeepJournal as Config.JournalRetention keeps every journal entry and dedup id.
const KeepJournal time.Duration = -1

// ClusterConfig configures a worker in a cluster of workers.
type ClusterConfig struct {
	// Enabled turns cluster mode on.
	Enabled bool
	// Partitions is P, the number of partitions (default 16). It is fixed per deployment.
	Partitions int
	// WorkerID names this worker among the others (default: host name and a random
	// suffix). Letters, digits, '-' and '_'.
	WorkerID string
	// LeaseTTL is how long a partition stays owned by a worker that stopped renewing it
	// (default 5s): the failover time is about LeaseTTL plus catching up.
	LeaseTTL time.Duration
	// Replicas is how many NATS servers keep each stream and bucket (default 3 when the
	// server is part of a NATS cluster, 1 when it is a single server).
	Replicas int
	// SnapshotEvery is how often an owner copies a partition's view to the snapshots
	// object store when inputs were applied since the last copy (default 5m). A new
	// owner starts from the copy and replays the log after it; the log must keep at
	// least this much (the events stream keeps 30 days).
	SnapshotEvery time.Duration
}

// ErrConfig marks an invalid worker configuration.
var ErrConfig = errors.New("worker: invalid configuration")

func (c Config) withDefaults() (Config, error) {
	if c.DataDir == "" {
		return c, fmt.Errorf("%w: the data directory is required", ErrConfig)
	}
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(c.DataDir, "kpool.key")
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:4222"
	}
	if c.Prefix == "" {
		c.Prefix = events.DefaultPrefix
	}
	if err := validPrefix(c.Prefix); err != nil {
		return c, err
	}
	if c.Tick < 0 {
		return c, fmt.Errorf("%w: tick %v is negative (0 disables the ticker)", ErrConfig, c.Tick)
	}
	if c.Defaults == nil {
		d := pool.DefaultConfig()
		c.Defaults = &d
	}
	if err := (&pool.Core{Defaults: *c.Defaults}).Effective(events.Policy{}).Validate(); err != nil {
		return c, fmt.Errorf("%w: default pool policy: %v", ErrConfig, err)
	}
	switch {
	case c.JournalRetention < 0:
		c.JournalRetention = 0 // persistence: 0 keeps everything
	case c.JournalRetention == 0 && c.Streams.EventsMaxAge > 0:
		c.JournalRetention = c.Streams.EventsMaxAge
	case c.JournalRetention == 0:
		c.JournalRetention = DefaultJournalRetention
	}
	if c.MaxSkew <= 0 {
		c.MaxSkew = 5 * time.Minute
	}
	if c.Batch <= 0 {
		c.Batch = 512
	}
	if c.GenerateWorkers <= 0 {
		c.GenerateWorkers = runtime.GOMAXPROCS(0)
		if c.Rand != nil {
			c.GenerateWorkers = 1
		}
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.MaxInternalFailures <= 0 {
		c.MaxInternalFailures = 5
	}
	if c.Cluster.Enabled {
		if err := c.Cluster.withDefaults(); err != nil {
			return c, err
		}
		c.Streams.Partitions = c.Cluster.Partitions
		if c.Streams.Replicas <= 0 {
			c.Streams.Replicas = c.Cluster.Replicas // 0: decided once connected
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c, nil
}

func (c *ClusterConfig) withDefaults() error {
	if c.Partitions == 0 {
		c.Partitions = events.DefaultPartitions
	}
	if c.Partitions < 1 || c.Partitions > events.MaxPartitions {
		return fmt.Errorf("%w: partitions %d: use 1 to %d", ErrConfig, c.Partitions, events.MaxPartitions)
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		c.WorkerID = StreamSafe(host) + "-" + newToken()[:8]
	}
	if StreamSafe(c.WorkerID) != c.WorkerID || len(c.WorkerID) > 64 {
		return fmt.Errorf("%w: worker id %q: use 1-64 letters, digits, '-' and '_'", ErrConfig, c.WorkerID)
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.SnapshotEvery <= 0 {
		c.SnapshotEvery = 5 * time.Minute
	}
	if c.LeaseTTL < time.Second {
		return fmt.Errorf("%w: lease TTL %v is under 1s", ErrConfig, c.LeaseTTL)
	}
	return nil
}

// validPrefix: one or more NATS tokens without wildcards.
func validPrefix(p string) error {
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return fmt.Errorf("%w: subject prefix %q must be dot-separated tokens without wildcards", ErrConfig, p)
		}
		for _, r := range tok {
			if r <= ' ' || r == '*' || r == '>' {
				return fmt.Errorf("%w: subject prefix %q contains %q", ErrConfig, p, r)
			}
		}
	}
	return nil
}

// StreamSafe turns a prefix into a name usable for streams and consumers.
func StreamSafe(prefix string) string {
	b := []byte(prefix)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

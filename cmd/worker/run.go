package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// connFlags are the NATS client flags shared by run, pool and events.
type connFlags struct {
	url, creds, nkey, user, password, tlsCA, tlsCert, tlsKey, prefix, inbox string
}

func (c *connFlags) register(fs *pflag.FlagSet, defURL string) {
	fs.StringVar(&c.url, "nats-url", envOr("KPOOL_NATS_URL", defURL), "NATS server URL(s), comma-separated [KPOOL_NATS_URL]")
	fs.StringVar(&c.creds, "creds", envOr("KPOOL_CREDS", ""), "NATS credentials file [KPOOL_CREDS]")
	fs.StringVar(&c.nkey, "nkey", envOr("KPOOL_NKEY", ""), "NATS nkey seed file [KPOOL_NKEY]")
	fs.StringVar(&c.user, "user", envOr("KPOOL_USER", ""), "NATS user [KPOOL_USER]")
	// Taken from the environment after registering, so usage never prints it as a default.
	fs.StringVar(&c.password, "password", "", "NATS password [KPOOL_PASSWORD]")
	c.password = os.Getenv("KPOOL_PASSWORD")
	fs.StringVar(&c.tlsCA, "tls-ca", envOr("KPOOL_TLS_CA", ""), "CA certificate file for NATS TLS [KPOOL_TLS_CA]")
	fs.StringVar(&c.tlsCert, "tls-cert", envOr("KPOOL_TLS_CERT", ""), "client certificate file for NATS TLS [KPOOL_TLS_CERT]")
	fs.StringVar(&c.tlsKey, "tls-key", envOr("KPOOL_TLS_KEY", ""), "client key file for NATS TLS [KPOOL_TLS_KEY]")
	fs.StringVar(&c.prefix, "subject-prefix", envOr("KPOOL_SUBJECT_PREFIX", events.DefaultPrefix), "subject prefix [KPOOL_SUBJECT_PREFIX]")
	fs.StringVar(&c.inbox, "inbox-prefix", envOr("KPOOL_INBOX_PREFIX", ""), "prefix of reply subjects instead of _INBOX, for a user allowed to subscribe to its own replies only (docs/security.md) [KPOOL_INBOX_PREFIX]")
}

// options turns the flags into nats.go options.
func (c *connFlags) options() ([]nats.Option, error) {
	var opts []nats.Option
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(c.nkey)
		if err != nil {
			return nil, fmt.Errorf("--nkey %s: %w", c.nkey, err)
		}
		opts = append(opts, o)
	}
	if c.user != "" || c.password != "" {
		opts = append(opts, nats.UserInfo(c.user, c.password))
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	if c.inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.inbox))
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	return opts, nil
}

func (c *connFlags) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.options()
	if err != nil {
		return nil, usageError{err}
	}
	opts = append(opts, nats.Name(name), nats.Timeout(5*time.Second))
	nc, err := nats.Connect(c.url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w %s", c.url, err, noWorkerHint)
	}
	return nc, nil
}

// loadPolicy reads a JSON pool policy (the `policy` object of pool.register) used as the
// worker's default for every pool.
func loadPolicy(path string) (pool.Config, error) {
	var p events.Policy
	data, err := os.ReadFile(path)
	if err != nil {
		return pool.Config{}, fmt.Errorf("--config: %w", err)
	}
	if err := events.UnmarshalStrict(data, &p); err != nil {
		return pool.Config{}, fmt.Errorf("--config %s: %w", path, err)
	}
	c := pool.DefaultConfig().WithPolicy(p)
	if err := c.Validate(); err != nil {
		return pool.Config{}, fmt.Errorf("--config %s: %w", path, err)
	}
	return c, nil
}

// runOptions are the flags of `worker run`.
type runOptions struct {
	conn                                                  connFlags
	data, keyFile, listen, tick, config, metrics, maxSkew string
	startTimeout                                          string
	retention, replicas, logLevel                         string
	logJSON, newDatabase                                  bool
	cluster                                               bool
	partitions                                            int
	workerID, leaseTTL, snapshotEvery                     string
	streams                                               natsbus.StreamOptions
}

func runCmd() *cobra.Command { return runCmdFor(new(runOptions)) }

// runCmdFor builds `worker run` around o (tests read the flags it parsed).
func runCmdFor(o *runOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "run",
		Short: "run the worker (embedded NATS by default)",
		Long: "Run the worker until Ctrl-C or SIGTERM. Without --nats-url it starts an embedded NATS\n" +
			"server (JetStream on) on --listen and keeps everything under --data.\n" +
			"A first signal stops it gracefully; a second one exits at once.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return o.run(ctx, stop, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := c.Flags()
	o.conn.register(fs, "")
	fs.StringVar(&o.data, "data", envOr("KPOOL_DATA", "./data"), "data directory: kpool.db, kpool.key, embedded JetStream [KPOOL_DATA]")
	fs.StringVar(&o.keyFile, "key-file", envOr("KPOOL_KEY_FILE", ""), "master key file (default <data>/kpool.key, created if absent) [KPOOL_KEY_FILE]")
	fs.BoolVar(&o.newDatabase, "new-database", false, "create a new, empty database although the key file exists (it refuses to start on a missing or empty database otherwise: every pool would be lost)")
	fs.StringVar(&o.listen, "listen", envOr("KPOOL_LISTEN", "127.0.0.1:4222"), "embedded NATS server address, when --nats-url is empty [KPOOL_LISTEN]")
	fs.StringVar(&o.tick, "tick", envOr("KPOOL_TICK", "1m"), "period of the internal expiry ticker; 0 = rely on an external scheduler [KPOOL_TICK]")
	fs.StringVar(&o.config, "config", envOr("KPOOL_CONFIG", ""), "JSON file with the default pool policy [KPOOL_CONFIG]")
	fs.StringVar(&o.metrics, "metrics", envOr("KPOOL_METRICS", ""), "serve Prometheus metrics on HOST:PORT/metrics [KPOOL_METRICS]")
	fs.StringVar(&o.maxSkew, "max-skew", envOr("KPOOL_MAX_SKEW", "5m"), "refuse events timed further than this ahead of the clock [KPOOL_MAX_SKEW]")
	fs.StringVar(&o.retention, "journal-retention", envOr("KPOOL_JOURNAL_RETENTION", "30d"), "keep the input journal and dedup ids this long of event time (default: the events stream's 30 days); 0 = forever [KPOOL_JOURNAL_RETENTION]")
	fs.Int64Var(&o.streams.EventsMaxBytes, "events-max-bytes", natsbus.DefaultStreamMaxBytes, "size limit of the inbound stream when kpool creates it; a full stream refuses publishes")
	fs.Int64Var(&o.streams.EventsMaxPerSubject, "events-max-per-subject", natsbus.DefaultEventsMaxPerSubject, "each pool's budget per event type: messages kept per inbound subject; further publishes there are refused")
	fs.Int64Var(&o.streams.OutboundMaxBytes, "outbound-max-bytes", natsbus.DefaultStreamMaxBytes, "size limit of the outbound stream (uploads, transitions, alerts, dead letters) when kpool creates it; the oldest go first")
	fs.StringVar(&o.replicas, "replicas", envOr("KPOOL_REPLICAS", "auto"), "replicas of the streams and buckets kpool creates: auto is 3 with --cluster and --nats-url, else 1 [KPOOL_REPLICAS]")
	fs.BoolVar(&o.cluster, "cluster", envOr("KPOOL_CLUSTER", "") != "", "run as one of several workers sharing the NATS cluster: pools spread over --partitions, each owned by one worker at a time (docs/scale-out.md) [KPOOL_CLUSTER]")
	fs.IntVar(&o.partitions, "partitions", events.DefaultPartitions, "with --cluster: number of partitions P, fixed per deployment")
	fs.StringVar(&o.workerID, "worker-id", envOr("KPOOL_WORKER_ID", ""), "with --cluster: this worker's name among the others (default: host name and a random suffix) [KPOOL_WORKER_ID]")
	fs.StringVar(&o.snapshotEvery, "snapshot-every", envOr("KPOOL_SNAPSHOT_EVERY", "5m"), "with --cluster: how often an owner copies a changed partition view to the snapshots store [KPOOL_SNAPSHOT_EVERY]")
	fs.StringVar(&o.leaseTTL, "lease-ttl", envOr("KPOOL_LEASE_TTL", "5s"), "with --cluster: a stopped worker's partitions move to the others after about this long [KPOOL_LEASE_TTL]")
	fs.StringVar(&o.startTimeout, "start-timeout", envOr("KPOOL_START_TIMEOUT", "30s"), "how long start-up keeps trying to reach --nats-url before giving up [KPOOL_START_TIMEOUT]")
	fs.StringVar(&o.logLevel, "log-level", envOr("KPOOL_LOG_LEVEL", "info"), "debug, info, warn or error [KPOOL_LOG_LEVEL]")
	fs.BoolVar(&o.logJSON, "log-json", envOr("KPOOL_LOG_JSON", "") != "", "log JSON instead of text [KPOOL_LOG_JSON]")
	return c
}

// workerConfig turns the flags into a worker configuration; its errors are usage errors,
// except a --config file that cannot be read or is invalid.
func (o *runOptions) workerConfig(stderr io.Writer) (worker.Config, error) {
	tick, err := time.ParseDuration(o.tick)
	if err != nil {
		return worker.Config{}, usagef("--tick %q: %w", o.tick, err)
	}
	maxSkew, err := time.ParseDuration(o.maxSkew)
	if err != nil {
		return worker.Config{}, usagef("--max-skew %q: %w", o.maxSkew, err)
	}
	startTimeout, err := time.ParseDuration(o.startTimeout)
	if err != nil || startTimeout <= 0 {
		return worker.Config{}, usagef("--start-timeout %q: a positive duration such as 30s", o.startTimeout)
	}
	retention, err := events.ParseDuration(o.retention)
	if err != nil {
		return worker.Config{}, usagef("--journal-retention: %w", err)
	}
	if retention == 0 {
		retention = worker.KeepJournal // the flag's 0 is "forever"; the Config's 0 is the default
	}
	replicas := 0 // auto
	if o.replicas != "auto" {
		if replicas, err = strconv.Atoi(o.replicas); err != nil || replicas < 1 || replicas > 5 {
			return worker.Config{}, usagef("--replicas %q: auto or a number from 1 to 5", o.replicas)
		}
	}
	if o.partitions < 1 || o.partitions > events.MaxPartitions {
		return worker.Config{}, usagef("--partitions %d: use 1 to %d", o.partitions, events.MaxPartitions)
	}
	leaseTTL, err := time.ParseDuration(o.leaseTTL)
	if err != nil {
		return worker.Config{}, usagef("--lease-ttl %q: %w", o.leaseTTL, err)
	}
	snapshotEvery, err := time.ParseDuration(o.snapshotEvery)
	if err != nil || snapshotEvery <= 0 {
		return worker.Config{}, usagef("--snapshot-every %q: a positive duration such as 5m", o.snapshotEvery)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return worker.Config{}, usagef("--log-level %q: %w", o.logLevel, err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	logger := slog.New(slog.NewTextHandler(stderr, hopts))
	if o.logJSON {
		logger = slog.New(slog.NewJSONHandler(stderr, hopts))
	}
	cf := &o.conn
	cfg := worker.Config{DataDir: o.data, KeyFile: o.keyFile, NewDatabase: o.newDatabase, NATSURL: cf.url, Listen: o.listen, Prefix: cf.prefix,
		Tick: tick, MaxSkew: maxSkew, MetricsAddr: o.metrics, Logger: logger, JournalRetention: retention,
		Streams: o.streams, StartTimeout: startTimeout}
	cfg.Streams.Replicas = replicas
	if o.cluster {
		cfg.Cluster = worker.ClusterConfig{Enabled: true, Partitions: o.partitions, WorkerID: o.workerID, LeaseTTL: leaseTTL, Replicas: replicas, SnapshotEvery: snapshotEvery}
	}
	if cfg.NATSOptions, err = cf.options(); err != nil {
		return worker.Config{}, usageError{err}
	}
	if cf.url == "" && (cf.creds != "" || cf.nkey != "" || cf.user != "" || cf.tlsCA != "" || cf.tlsCert != "") {
		return worker.Config{}, usagef("--creds/--nkey/--user/--tls-* need --nats-url (the embedded server has no authentication; it listens on --listen)")
	}
	if o.config != "" {
		d, err := loadPolicy(o.config)
		if err != nil {
			return worker.Config{}, err
		}
		cfg.Defaults = &d
	}
	return cfg, nil
}

// run starts the worker and runs it until ctx ends (a signal) or the worker stops. stop
// unregisters the signal handler: after the first signal, a second one exits at once.
func (o *runOptions) run(ctx context.Context, stop func(), stdout, stderr io.Writer) error {
	cfg, err := o.workerConfig(stderr)
	if err != nil {
		return err
	}
	// A busy port is refused before anything is written, so a failed start leaves no
	// kpool.db or kpool.key behind in a new data directory.
	if cfg.NATSURL == "" {
		if err := checkListen(cfg.Listen); err != nil {
			return err
		}
	}
	type started struct {
		w   *worker.Worker
		err error
	}
	ready := make(chan started, 1)
	go func() {
		w, err := worker.Start(ctx, cfg)
		ready <- started{w, err}
	}()
	var s started
	received := false
	select {
	case s = <-ready:
		received = true
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		// Said at once, not when start-up ends: a signal is never taken silently.
		cfg.Logger.Info("stopping: interrupted during start-up (a second signal exits at once)")
		stop()
		if !received {
			s = <-ready
		}
		if s.err == nil {
			return s.w.Close()
		}
		cfg.Logger.Info("start-up abandoned", "err", s.err)
		return nil // interrupted, as asked
	}
	if s.err != nil {
		return s.err
	}
	w := s.w
	fmt.Fprintf(stdout, "kpool worker running: NATS %s, subjects %s.>, data %s (Ctrl-C to stop)\n", w.ClientURL(), cfg.Prefix, cfg.DataDir)
	select {
	case <-ctx.Done():
		cfg.Logger.Info("stopping: finishing the messages in hand, flushing the outbox (a second signal exits at once)")
		stop()
	case <-w.Done():
	}
	return w.Close()
}

// checkListen fails when the embedded server's port is taken (port 0 or -1: any free port).
func checkListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" || port == "-1" {
		return nil // worker.Start reports a malformed address
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--listen %s: %w (is a worker already running? use another --listen, or --nats-url for a server that is running)", addr, err)
	}
	return ln.Close()
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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
)

func init() {
	register(command{name: "run", summary: "run the worker (embedded NATS by default)", run: runWorker})
}

// envOr returns the environment variable's value, or def when unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// connFlags are the NATS client flags shared by run, pool and events.
type connFlags struct {
	url, creds, nkey, user, password, tlsCA, tlsCert, tlsKey, prefix string
}

func (c *connFlags) register(fs *flag.FlagSet, defURL string) {
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
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	return opts, nil
}

func (c *connFlags) connect(name string) (*nats.Conn, error) {
	opts, err := c.options()
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(c.url, append(opts, nats.Name(name), nats.Timeout(5*time.Second))...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is the worker running? `make run`)", c.url, err)
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

func runWorker(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runWorkerCtx(ctx, args, stdout, stderr)
}

// runWorkerCtx runs the worker until ctx ends (a signal) or the worker stops.
func runWorkerCtx(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs, "")
	data := fs.String("data", envOr("KPOOL_DATA", "./data"), "data directory: kpool.db, kpool.key, embedded JetStream [KPOOL_DATA]")
	keyFile := fs.String("key-file", envOr("KPOOL_KEY_FILE", ""), "master key file (default <data>/kpool.key, created if absent) [KPOOL_KEY_FILE]")
	listen := fs.String("listen", envOr("KPOOL_LISTEN", "127.0.0.1:4222"), "embedded NATS server address, when --nats-url is empty [KPOOL_LISTEN]")
	tickStr := fs.String("tick", envOr("KPOOL_TICK", "1m"), "period of the internal expiry ticker; 0 = rely on an external scheduler [KPOOL_TICK]")
	config := fs.String("config", envOr("KPOOL_CONFIG", ""), "JSON file with the default pool policy [KPOOL_CONFIG]")
	metricsAddr := fs.String("metrics", envOr("KPOOL_METRICS", ""), "serve Prometheus metrics on HOST:PORT/metrics [KPOOL_METRICS]")
	maxSkewStr := fs.String("max-skew", envOr("KPOOL_MAX_SKEW", "5m"), "refuse events timed further than this ahead of the clock [KPOOL_MAX_SKEW]")
	retentionStr := fs.String("journal-retention", envOr("KPOOL_JOURNAL_RETENTION", "0"), "keep the input journal and dedup ids this long (e.g. 30d); 0 = forever [KPOOL_JOURNAL_RETENTION]")
	replicasStr := fs.String("replicas", envOr("KPOOL_REPLICAS", "1"), "replicas of the streams kpool creates (clusters) [KPOOL_REPLICAS]")
	logLevel := fs.String("log-level", envOr("KPOOL_LOG_LEVEL", "info"), "debug, info, warn or error [KPOOL_LOG_LEVEL]")
	logJSON := fs.Bool("log-json", envOr("KPOOL_LOG_JSON", "") != "", "log JSON instead of text [KPOOL_LOG_JSON]")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int { fmt.Fprintln(stderr, "worker run:", err); return 1 }
	tick, err := time.ParseDuration(*tickStr)
	if err != nil {
		return fail(fmt.Errorf("--tick %q: %w", *tickStr, err))
	}
	maxSkew, err := time.ParseDuration(*maxSkewStr)
	if err != nil {
		return fail(fmt.Errorf("--max-skew %q: %w", *maxSkewStr, err))
	}
	retention, err := events.ParseDuration(*retentionStr)
	if err != nil {
		return fail(fmt.Errorf("--journal-retention: %w", err))
	}
	replicas, err := strconv.Atoi(*replicasStr)
	if err != nil || replicas < 1 || replicas > 5 {
		return fail(fmt.Errorf("--replicas %q: a number from 1 to 5", *replicasStr))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fail(fmt.Errorf("--log-level %q: %w", *logLevel, err))
	}
	hopts := &slog.HandlerOptions{Level: level}
	var logger *slog.Logger
	if *logJSON {
		logger = slog.New(slog.NewJSONHandler(stderr, hopts))
	} else {
		logger = slog.New(slog.NewTextHandler(stderr, hopts))
	}
	cfg := worker.Config{DataDir: *data, KeyFile: *keyFile, NATSURL: cf.url, Listen: *listen, Prefix: cf.prefix,
		Tick: tick, MaxSkew: maxSkew, MetricsAddr: *metricsAddr, Logger: logger, JournalRetention: retention,
		Streams: natsbus.StreamOptions{Replicas: replicas}}
	if cfg.NATSOptions, err = cf.options(); err != nil {
		return fail(err)
	}
	if cf.url == "" && (cf.creds != "" || cf.nkey != "" || cf.user != "" || cf.tlsCA != "" || cf.tlsCert != "") {
		return fail(errors.New("--creds/--nkey/--user/--tls-* need --nats-url (the embedded server has no authentication; it listens on --listen)"))
	}
	if *config != "" {
		d, err := loadPolicy(*config)
		if err != nil {
			return fail(err)
		}
		cfg.Defaults = &d
	}
	w, err := worker.Start(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "kpool worker running: NATS %s, subjects %s.>, data %s (Ctrl-C to stop)\n", w.ClientURL(), cf.prefix, *data)
	select {
	case <-ctx.Done():
		logger.Info("stopping: finishing the messages in hand, flushing the outbox")
	case <-w.Done():
	}
	if err := w.Close(); err != nil {
		return fail(err)
	}
	return 0
}

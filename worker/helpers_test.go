package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/replay"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// testClock is the edge's wall clock in tests: it only moves when the test says so.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock {
	return &testClock{t: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *testClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// natsServer is an embedded nats-server with JetStream in a temp dir, restartable on the
// same port and store.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	ns   *server.Server
	mu   sync.Mutex
}

func startNATS(t *testing.T) *natsServer {
	t.Helper()
	s := &natsServer{t: t, dir: t.TempDir()}
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: s.dir})
	if err != nil {
		t.Fatal(err)
	}
	s.ns = ns
	s.port = ns.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

func (s *natsServer) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *natsServer) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		s.ns = nil
	}
}

// Restart starts the server again on the same port with the same JetStream store.
func (s *natsServer) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:" + strconv.Itoa(s.port), StoreDir: s.dir})
	if err != nil {
		s.t.Fatal(err)
	}
	s.ns = ns
}

// testDefaults is a small pool policy so tests stay fast.
func testDefaults() *pool.Config {
	c := pool.DefaultConfig()
	c.Target, c.LowWatermark, c.HardCap = 10, 4, 20
	return &c
}

func startWorker(t *testing.T, url, dataDir string, clock *testClock, mod ...func(*worker.Config)) *worker.Worker {
	t.Helper()
	cfg := worker.Config{DataDir: dataDir, NATSURL: url, Clock: clock.Now, NoSync: true, Defaults: testDefaults(),
		// JetStream reserves each stream's max_bytes: the 1 GiB defaults of dozens of
		// workers on one test server would exceed a small disk
		Streams: natsbus.StreamOptions{EventsMaxBytes: 64 << 20, OutboundMaxBytes: 64 << 20}}
	if os.Getenv("KPOOL_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, m := range mod {
		m(&cfg)
	}
	w, err := worker.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func connect(t *testing.T, url string) (*nats.Conn, *natsbus.Client) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, err := natsbus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, c
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for an outcome
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// deliveryService simulates a DS: it stores upload requests and acknowledges them.
type deliveryService struct {
	mu        sync.Mutex
	uploads   map[string]events.Upload // ref → request
	order     []string                 // refs in upload order
	withdrawn []string
	autoAck   bool
	c         *natsbus.Client
	t         *testing.T
}

func startDS(t *testing.T, c *natsbus.Client, autoAck bool) *deliveryService {
	t.Helper()
	ds := &deliveryService{uploads: map[string]events.Upload{}, autoAck: autoAck, c: c, t: t}
	stop, err := c.ConsumeDeliveries(ctx(t), "test-ds", "", natsbus.DeliveryHandler{
		Upload: func(u events.Upload) error {
			ds.mu.Lock()
			_, seen := ds.uploads[u.Ref]
			ds.uploads[u.Ref] = u
			if !seen {
				ds.order = append(ds.order, u.Ref)
			}
			ds.mu.Unlock()
			if ds.autoAck {
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return c.UploadAck(cctx, u.Pool, u.Ref)
			}
			return nil
		},
		Withdraw: func(w events.Withdraw) error {
			ds.mu.Lock()
			ds.withdrawn = append(ds.withdrawn, w.Ref)
			ds.mu.Unlock()
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return ds
}

func (ds *deliveryService) refs(pool string, lastResort bool) []string {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	var out []string
	for _, r := range ds.order {
		if u := ds.uploads[r]; u.Pool == pool && u.LastResort == lastResort {
			out = append(out, r)
		}
	}
	return out
}

func (ds *deliveryService) count() int {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return len(ds.uploads)
}

// status reads a pool record straight from the worker's store.
func poolRecord(t *testing.T, w *worker.Worker, id string) pool.Pool {
	t.Helper()
	p, ok, err := w.Store().Pool(id)
	if err != nil || !ok {
		t.Fatalf("pool %s: ok=%v err=%v", id, ok, err)
	}
	return p
}

// deadLetters collects dead letters.
type deadLetters struct {
	mu  sync.Mutex
	got []events.DeadLetter
}

func collectDeadLetters(t *testing.T, c *natsbus.Client) *deadLetters {
	t.Helper()
	d := &deadLetters{}
	stop, err := c.SubscribeDeadLetters(func(dl events.DeadLetter) {
		d.mu.Lock()
		d.got = append(d.got, dl)
		d.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return d
}

func (d *deadLetters) list() []events.DeadLetter {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.got)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprint(err))
	}
	return b
}

// startNATSB and connectB are the benchmark versions of the helpers.
func startNATSB(b *testing.B) *natsServer {
	b.Helper()
	s := &natsServer{dir: b.TempDir()}
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: s.dir})
	if err != nil {
		b.Fatal(err)
	}
	s.ns = ns
	s.port = ns.Addr().(*net.TCPAddr).Port
	b.Cleanup(s.Shutdown)
	return s
}

func connectB(b *testing.B, s *natsServer) (*nats.Conn, *natsbus.Client) {
	b.Helper()
	nc, err := nats.Connect(s.URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	c, err := natsbus.NewClient(nc)
	if err != nil {
		b.Fatal(err)
	}
	return nc, c
}

// verifyStored is the audit of a stopped worker's database: `db check` clean and the
// journal replaying to the stored state (`replay --verify`). It returns the inputs applied.
func verifyStored(t *testing.T, st *persistence.Store) uint64 {
	t.Helper()
	var problems []string
	if err := st.Check(func(p string) { problems = append(problems, p) }); err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("db check: %d problems:\n%s", len(problems), strings.Join(problems, "\n"))
	}
	diff, sum, err := replay.Verify(context.Background(), st, &pool.Core{Defaults: *testDefaults()})
	if err != nil {
		t.Fatalf("replay --verify: %v", err)
	}
	if len(diff) > 0 {
		t.Fatalf("replay --verify: the journal does not rebuild the stored state:\n%s", strings.Join(diff, "\n"))
	}
	return sum.Applied
}

// verifyDir opens a stopped worker's database read-only and audits it (verifyStored).
func verifyDir(t *testing.T, dir string) uint64 {
	t.Helper()
	st, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	return verifyStored(t, st)
}

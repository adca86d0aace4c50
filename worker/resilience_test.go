package worker_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
)

// counter reads a counter from the worker's metrics (sum over label values).
func counter(t *testing.T, w *worker.Worker, name string) float64 {
	t.Helper()
	mfs, err := w.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += metricValue(m)
			}
		}
	}
	return sum
}

// journaled counts the applied inputs with this event id.
func journaled(t *testing.T, w *worker.Worker, id string) int {
	t.Helper()
	n := 0
	if err := w.Store().Journal(0, 0, func(_ uint64, ev events.Event) error {
		if ev.ID == id {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func metricValue(m *dto.Metric) float64 {
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return 0
}

// TestDuplicates: an event id applied once is never applied again, whether JetStream
// deduplicates it (same Nats-Msg-Id) or it arrives as a new message (beyond the window).
func TestDuplicates(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	nc, c := connect(t, ns.URL())
	js, _ := jetstream.New(nc)
	ds := startDS(t, c, false)
	dls := collectDeadLetters(t, c)
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "generation done", func() bool {
		return len(ds.refs("alice", false)) == 10 && poolRecord(t, w, "alice").Requested == 0
	})
	ref := ds.refs("alice", false)[0]
	ack, err := c.Publish(ctx(t), events.Event{ID: "ack-1", Type: events.TypeUploadAck, Pool: "alice", Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "ack applied", func() bool {
		kp, _, _ := w.Store().KeyPackage(ref)
		return kp.State == "available"
	})
	seq := func() uint64 { m, _ := w.Store().Meta(); return m.Seq }
	before, statusBefore := seq(), poolRecord(t, w, "alice").StatusSeq

	// Same Nats-Msg-Id: JetStream drops it at publish time.
	pa, err := js.Publish(context.Background(), w.Subjects().Event("alice", events.TypeUploadAck), mustJSON(ack), jetstream.WithMsgID(ack.MsgID()))
	if err != nil || !pa.Duplicate {
		t.Fatalf("publish ack: %+v %v, want a JetStream duplicate", pa, err)
	}
	// A new message with the same event id (as after the dedup window): the worker drops it.
	for i := range 3 {
		if _, err := js.Publish(context.Background(), w.Subjects().Event("alice", events.TypeUploadAck), mustJSON(ack), jetstream.WithMsgID("other-"+string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "duplicates counted", func() bool { return counter(t, w, "kpool_duplicates_total") == 3 })
	if after := seq(); after != before {
		t.Fatalf("sequence moved %d → %d on duplicates", before, after)
	}
	if poolRecord(t, w, "alice").StatusSeq != statusBefore {
		t.Fatal("status changed on duplicates")
	}
	if n := len(dls.list()); n != 0 {
		t.Fatalf("duplicates were dead-lettered: %+v", dls.list())
	}
}

// gatedRand hands out a budget of random bytes, then fails until opened: it stops the
// generator at a known point without blocking shutdown.
type gatedRand struct {
	budget atomic.Int64
	open   atomic.Bool
}

func (g *gatedRand) Read(p []byte) (int, error) {
	if !g.open.Load() && g.budget.Add(-int64(len(p))) < 0 {
		return 0, errors.New("test entropy gate closed")
	}
	return rand.Read(p)
}

// TestRestartResumesGenerationAndOutbox: generation interrupted by a shutdown resumes at
// the next start (outstanding requests are durable), and outbox messages committed while
// NATS was down are published when the worker comes back.
func TestRestartResumesGenerationAndOutbox(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	dir := t.TempDir()
	gate := &gatedRand{}
	gate.budget.Store(32 + 3*64) // the signature key and three KeyPackages (suite 1)
	w := startWorker(t, ns.URL(), dir, clock, func(c *worker.Config) { c.Rand = gate })
	_, c := connect(t, ns.URL())
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "three KeyPackages", func() bool { return poolRecord(t, w, "alice").Counts.Created == 3 })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	// Second run: NATS goes away while the rest is generated, so the outbox fills.
	gate.open.Store(true)
	w = startWorker(t, ns.URL(), dir, clock)
	eventually(t, 10*time.Second, "generation resumed", func() bool {
		p := poolRecord(t, w, "alice")
		return p.Counts.Created == 11 && p.Requested == 0 && !p.LastResortRequested
	})
	ns.Shutdown()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	// A DS that subscribes now gets every upload once NATS and the worker are back.
	ns.Restart()
	w = startWorker(t, ns.URL(), dir, clock)
	_, c = connect(t, ns.URL())
	ds := startDS(t, c, true)
	eventually(t, 10*time.Second, "all uploads delivered and acked", func() bool {
		return ds.count() == 11 && poolRecord(t, w, "alice").Counts.Available == 11
	})
	// The status stream catches up with the record (the relay runs after each commit).
	eventually(t, 10*time.Second, "last status current", func() bool {
		st, found, err := c.LastStatus(ctx(t), "alice")
		return err == nil && found && st.Seq == poolRecord(t, w, "alice").StatusSeq && st.Counts.Available == 11
	})
}

// TestNATSRestartMidRun: the NATS server restarts while events flow; the worker
// reconnects and nothing acknowledged is lost.
func TestNATSRestartMidRun(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, true)
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "pool full", func() bool { return poolRecord(t, w, "alice").Fresh == 10 })
	refs := ds.refs("alice", false)
	for _, ref := range refs[:7] { // below the watermark: a refill starts
		if err := c.Claimed(ctx(t), "alice", ref); err != nil {
			t.Fatal(err)
		}
	}
	ns.Restart() // mid-refill
	eventually(t, 10*time.Second, "client reconnected", func() bool { return connected(c) })
	eventually(t, 20*time.Second, "claims before the restart applied and the refill done", func() bool {
		p := poolRecord(t, w, "alice")
		return p.Counts.Claimed == 7 && p.Fresh == 10 && p.Requested == 0 && p.Counts.Created == 0
	})
	for _, ref := range refs[7:9] {
		if err := publishRetry(t, func() error { return c.Claimed(ctx(t), "alice", ref) }); err != nil {
			t.Fatal(err)
		}
	}
	// 7 claims → refill to 10 (7 new), then 2 more claims → 8, above the watermark.
	eventually(t, 20*time.Second, "every claim applied and the pool refilled", func() bool {
		p := poolRecord(t, w, "alice")
		return p.Counts.Claimed == 9 && p.Fresh == 8 && p.Requested == 0 && p.Counts.Created == 0
	})
	st, err := c.Status(ctx(t), "alice")
	if err != nil || st.Counts.Claimed != 9 || st.AvailableFresh != 8 || ds.count() != 18 {
		t.Fatalf("status after NATS restart: %+v %v", st, err)
	}
}

func connected(c *natsbus.Client) bool {
	_, err := c.List(context.Background())
	return err == nil
}

// publishRetry retries a publish while JetStream settles after a restart.
func publishRetry(t *testing.T, f func() error) error {
	t.Helper()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// TestStartFailureCleansUp: a worker that cannot reach NATS fails with a clear error and
// releases its store, so the next start with the same data directory works.
// TestStartWaitsForNATS: a worker started while its NATS server is down waits for it,
// reporting not ready meanwhile, and runs once the server is up.
func TestStartWaitsForNATS(t *testing.T) {
	ns := startNATS(t)
	ns.Shutdown()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics := ln.Addr().String()
	ln.Close()
	type started struct {
		w   *worker.Worker
		err error
	}
	done := make(chan started, 1)
	go func() {
		w, err := worker.Start(context.Background(), worker.Config{DataDir: t.TempDir(), NATSURL: ns.URL(), NoSync: true, MetricsAddr: metrics, StartTimeout: time.Minute})
		done <- started{w, err}
	}()
	readyz := func() int {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, 20*time.Second, "not ready while NATS is down", func() bool { return readyz() == http.StatusServiceUnavailable })
	ns.Restart()
	var s started
	select {
	case s = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Start did not return after NATS came up")
	}
	if s.err != nil {
		t.Fatalf("start once NATS is up: %v", s.err)
	}
	defer s.w.Close()
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d once running", code)
	}
}

func TestStartFailureCleansUp(t *testing.T) {
	dir := t.TempDir()
	_, err := worker.Start(context.Background(), worker.Config{DataDir: dir, NATSURL: "nats://127.0.0.1:1", NoSync: true, StartTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "connect to NATS at nats://127.0.0.1:1") {
		t.Fatalf("start without NATS: %v", err)
	}
	if _, err := worker.Start(context.Background(), worker.Config{}); !errors.Is(err, worker.ErrConfig) {
		t.Fatalf("start without a data directory: %v", err)
	}
	bad := pool.DefaultConfig()
	bad.Target, bad.HardCap = 50, 10
	if _, err := worker.Start(context.Background(), worker.Config{DataDir: dir, Defaults: &bad}); !errors.Is(err, worker.ErrConfig) || !strings.Contains(err.Error(), "default pool policy") {
		t.Fatalf("start with an invalid default policy: %v", err)
	}
	ns := startNATS(t)
	// The embedded server on a busy port fails at once with the reason.
	_, err = worker.Start(context.Background(), worker.Config{DataDir: dir, Listen: strings.TrimPrefix(ns.URL(), "nats://"), NoSync: true})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("embedded server on a busy port: %v", err)
	}
	w := startWorker(t, ns.URL(), dir, newClock())
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestGracefulShutdownMidStream: Close while inputs stream in commits the group in hand
// and stops; the rest stays in the stream and is applied after a restart, exactly once.
// The writer is held on the 10th input of the burst until Close begins, so the test
// always lands mid-stream.
func TestGracefulShutdownMidStream(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	dir := t.TempDir()
	held := make(chan struct{})
	var once sync.Once
	hold := worker.WithStepHook(func(ctx context.Context, ev events.Event) error {
		if ev.ID == "burst-10" {
			once.Do(func() { close(held); <-ctx.Done() })
		}
		return nil
	})
	small := func(c *worker.Config) { c.Batch = 8 }
	w := startWorker(t, ns.URL(), dir, clock, hold, small)
	nc, c := connect(t, ns.URL())
	js, _ := jetstream.New(nc)
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "generation done", func() bool {
		p := poolRecord(t, w, "alice")
		return p.Requested == 0 && !p.LastResortRequested
	})
	m0, _ := w.Store().Meta()
	const n = 300
	for i := range n {
		ev := events.Event{ID: "burst-" + strconv.Itoa(i), Type: events.TypeExpiryTick, Time: clock.Now(), Pool: "alice"}
		if _, err := js.PublishAsync(w.Subjects().Event("alice", events.TypeExpiryTick), mustJSON(ev), jetstream.WithMsgID(ev.MsgID())); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the writer never reached the 10th input of the burst")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	mClosed, _ := ro.Meta()
	ro.Close()
	if got := mClosed.Seq - m0.Seq; got < 10 || got >= n {
		t.Fatalf("applied %d of %d before Close; want the group holding the 10th and no more than part of the burst", got, n)
	}
	w = startWorker(t, ns.URL(), dir, clock)
	eventually(t, 20*time.Second, "every event applied after the restart", func() bool {
		m, _ := w.Store().Meta()
		return m.Seq == m0.Seq+n
	})
	if d := counter(t, w, "kpool_duplicates_total"); d != 0 {
		t.Fatalf("%v events applied twice", d)
	}
}

// TestInputConsumerDeletedIsRecreated: an operator deleting the worker's (ephemeral,
// ordered) consumer does not stop the worker; it re-creates it at the next sequence and
// applies nothing twice.
func TestInputConsumerDeletedIsRecreated(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	w := startWorker(t, ns.URL(), t.TempDir(), clock)
	nc, c := connect(t, ns.URL())
	js, _ := jetstream.New(nc)
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	tick := func(id string) {
		t.Helper()
		if _, err := c.Publish(ctx(t), events.Event{ID: id, Type: events.TypeExpiryTick, Pool: "alice", Time: clock.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	tick("before")
	eventually(t, 10*time.Second, "first tick applied", func() bool { return journaled(t, w, "before") == 1 })
	stream, err := js.Stream(context.Background(), natsbus.StreamNames("kpool").Events)
	if err != nil {
		t.Fatal(err)
	}
	deleted := 0
	for name := range stream.ListConsumers(context.Background()).Info() {
		if err := stream.DeleteConsumer(context.Background(), name.Name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted == 0 {
		t.Fatal("found no consumer to delete on the input stream")
	}
	tick("after")
	eventually(t, 20*time.Second, "second tick applied after the consumer was re-created", func() bool {
		return journaled(t, w, "after") == 1
	})
	if n := journaled(t, w, "before"); n != 1 {
		t.Fatalf("first tick journaled %d times", n)
	}
	if d := counter(t, w, "kpool_duplicates_total"); d != 0 {
		t.Fatalf("%v inputs applied twice", d)
	}
}

package worker_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go/jetstream"
)

// The kill tests run the worker in a child process — this test binary re-executed with
// childDirEnv set, so TestWorkerChild runs worker.Start on that data directory against
// the NATS server the parent runs in-process — and SIGSTOP/SIGKILL it. The child prints
// "ready <seq>" once started and "applied <seq>" whenever Worker.AppliedSeq moves, and
// stops gracefully on SIGTERM.

const (
	childDirEnv = "KPOOL_WORKER_CHILD_DIR"
	childURLEnv = "KPOOL_WORKER_CHILD_URL"
)

func TestWorkerChild(t *testing.T) {
	dir := os.Getenv(childDirEnv)
	if dir == "" {
		t.Skip("helper process for the kill tests")
	}
	os.Exit(runChild(dir, os.Getenv(childURLEnv)))
}

func runChild(dir, url string) int {
	cfg := worker.Config{DataDir: dir, NATSURL: url, Defaults: testDefaults()}
	if os.Getenv("KPOOL_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	term, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	w, err := worker.Start(context.Background(), cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: start: %v\n", err)
		return 1
	}
	last := w.AppliedSeq()
	fmt.Printf("ready %d\n", last)
	// Polling AppliedSeq is how the parent learns progress; the interval only bounds how
	// late it hears of it.
	for term.Err() == nil {
		if seq := w.AppliedSeq(); seq != last {
			last = seq
			fmt.Printf("applied %d\n", seq)
		}
		select {
		case <-term.Done():
		case <-time.After(2 * time.Millisecond):
		}
	}
	if err := w.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "child: close: %v\n", err)
		return 1
	}
	fmt.Println("closed")
	return 0
}

// child is a running child worker.
type child struct {
	t       *testing.T
	cmd     *exec.Cmd
	applied atomic.Uint64
	ready   chan struct{}
	exited  chan struct{}
	stderr  syncBuffer
	waitErr error
}

// syncBuffer collects the child's stderr for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.b.String()
	if len(out) > 4000 {
		out = "…" + out[len(out)-4000:]
	}
	return out
}

// startChild starts a child worker on dir and waits until it runs.
func startChild(t *testing.T, dir, url string) *child {
	t.Helper()
	c := &child{t: t, ready: make(chan struct{}), exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestWorkerChild$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), childDirEnv+"="+dir, childURLEnv+"="+url)
	c.cmd.Stderr = &c.stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			kind, num, _ := strings.Cut(sc.Text(), " ")
			n, _ := strconv.ParseUint(num, 10, 64)
			switch kind {
			case "ready":
				c.applied.Store(n)
				close(c.ready)
			case "applied":
				c.applied.Store(n)
			}
		}
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() { c.kill() })
	select {
	case <-c.ready:
	case <-c.exited:
		t.Fatalf("child worker exited before it was ready: %v\n%s", c.waitErr, c.stderr.String())
	case <-time.After(90 * time.Second):
		c.kill()
		t.Fatalf("child worker not ready within 90s\n%s", c.stderr.String())
	}
	return c
}

func (c *child) signal(sig syscall.Signal) {
	c.t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %v: %v", sig, err)
	}
}

// kill SIGKILLs the child (if it still runs) and waits until it is gone.
func (c *child) kill() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// killed reports whether the child died of SIGKILL (and not of something of its own).
func (c *child) killedBySIGKILL() bool {
	var ee *exec.ExitError
	if !errors.As(c.waitErr, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// stop asks the child to stop (SIGTERM) and checks that it closed cleanly.
func (c *child) stop() {
	c.t.Helper()
	c.signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(60 * time.Second):
		c.kill()
		c.t.Fatalf("child worker did not stop within 60s of SIGTERM\n%s", c.stderr.String())
	}
	if c.waitErr != nil {
		c.t.Fatalf("child worker stopped with %v\n%s", c.waitErr, c.stderr.String())
	}
}

// running fails the test if the child died.
func (c *child) running() bool {
	select {
	case <-c.exited:
		c.t.Fatalf("child worker died: %v\n%s", c.waitErr, c.stderr.String())
		return false
	default:
		return true
	}
}

// TestKillOrdering is the reproduction of issue 10: the worker is frozen (SIGSTOP) while
// the delivery service acknowledges R, killed, restarted, and R is claimed. The ack was
// delivered to the frozen worker and never applied; the restarted worker must read it
// again before the claim (it resumes from the last applied stream sequence), so R ends
// claimed, the ack journaled before the claim, each once, nothing dead-lettered.
func TestKillOrdering(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	w := startChild(t, dir, ns.URL())
	nc, c := connect(t, ns.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ds := startDS(t, c, false)
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	var refs []string
	eventually(t, 60*time.Second, "ten uploads", func() bool { refs = ds.refs("alice", false); return len(refs) == 10 })
	const spare = 3 // refs left unacknowledged: candidates for R
	for _, ref := range refs[spare:] {
		publishEvent(t, c, events.Event{ID: "ack-" + ref, Type: events.TypeUploadAck, Pool: "alice", Ref: ref})
	}
	eventually(t, 60*time.Second, "seven available", func() bool {
		st, err := c.Status(ctx(t), "alice")
		return w.running() && err == nil && st.Counts.Available == 10-spare
	})

	// The ack must reach the frozen worker: its pull request may have expired (they
	// last 2s) just before SIGSTOP. Then the worker is thawed, applies that ack, and the
	// next spare ref is tried.
	var r string
	var ack events.Event
	for i := 0; r == ""; i++ {
		if i == spare {
			t.Fatalf("no ack reached the frozen worker in %d tries: the test never reached its subject", spare)
		}
		w.signal(syscall.SIGSTOP)
		ack = publishEvent(t, c, events.Event{ID: "ack-" + refs[i], Type: events.TypeUploadAck, Pool: "alice", Ref: refs[i]})
		if waitDelivered(js, 10*time.Second) {
			r = refs[i]
			break
		}
		w.signal(syscall.SIGCONT)
		last := streamLast(t, js)
		eventually(t, 60*time.Second, "the thawed worker applies the ack", func() bool { return w.running() && w.applied.Load() >= last })
	}
	w.kill()
	if !w.killedBySIGKILL() {
		t.Fatalf("child ended with %v, not SIGKILL", w.waitErr)
	}
	w = startChild(t, dir, ns.URL())
	claim := publishEvent(t, c, events.Event{ID: "claim-R", Type: events.TypeClaimed, Pool: "alice", Ref: r})
	last := streamLast(t, js)
	eventually(t, 60*time.Second, "the claim applied", func() bool { return w.running() && w.applied.Load() >= last })
	kp, err := c.Get(ctx(t), "alice", r)
	if err != nil || kp.State != string(fsm.Claimed) {
		t.Fatalf("R after ack, kill and claim: state %q, %v; want claimed", kp.State, err)
	}
	w.stop()

	st := openStore(t, dir)
	seqs := journalSeqs(t, st)
	if got := seqs[poolID{"alice", ack.ID}]; len(got) != 1 {
		t.Fatalf("ack journaled at %v, want once", got)
	}
	if got := seqs[poolID{"alice", claim.ID}]; len(got) != 1 || got[0] < seqs[poolID{"alice", ack.ID}][0] {
		t.Fatalf("claim journaled at %v, ack at %v: want once, after the ack", got, seqs[poolID{"alice", ack.ID}])
	}
	for _, dl := range deadLettersIn(t, js) {
		if dl.EventID == ack.ID || dl.EventID == claim.ID {
			t.Fatalf("dead letter for %s: %+v", dl.EventID, dl)
		}
	}
	auditStore(t, st)
}

// publishEvent publishes an event with its id as Nats-Msg-Id, retrying (same id) while
// NATS is away, and returns it as sent.
func publishEvent(t *testing.T, c *natsbus.Client, ev events.Event) events.Event {
	t.Helper()
	sent, err := tryPublish(c, ev, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return sent
}

// tryPublish is publishEvent for goroutines other than the test's. Any error is retried
// until the deadline: while NATS restarts they take many forms.
func tryPublish(c *natsbus.Client, ev events.Event, within time.Duration) (events.Event, error) {
	var err error
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var sent events.Event
		sent, err = c.Publish(pctx, ev)
		cancel()
		if err == nil {
			return sent, nil
		}
		time.Sleep(50 * time.Millisecond) // retry interval while NATS comes back
	}
	return ev, fmt.Errorf("publish %s: not accepted within %v: %w", ev.ID, within, err)
}

// waitDelivered waits until the worker's input consumer was handed the inbound stream's
// last message (its delivered sequence reaches it).
func waitDelivered(js jetstream.JetStream, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if s, err := js.Stream(context.Background(), natsbus.StreamNames("kpool").Events); err == nil {
			if info, err := s.Info(context.Background()); err == nil {
				for ci := range s.ListConsumers(context.Background()).Info() {
					if ci.Delivered.Stream >= info.State.LastSeq {
						return true
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	return false
}

// streamLast is the inbound stream's last sequence.
func streamLast(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	var last uint64
	eventually(t, 60*time.Second, "inbound stream info", func() bool {
		s, err := js.Stream(context.Background(), natsbus.StreamNames("kpool").Events)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		if err != nil {
			return false
		}
		last = info.State.LastSeq
		return true
	})
	return last
}

// deadLettersIn reads every dead letter kept in the outbound stream.
func deadLettersIn(t *testing.T, js jetstream.JetStream) []events.DeadLetter {
	t.Helper()
	var out []events.DeadLetter
	for _, m := range readStream(t, js, natsbus.StreamNames("kpool").Outbound, events.Subjects{Prefix: "kpool"}.DeadLetter()) {
		var dl events.DeadLetter
		if err := json.Unmarshal(m.data, &dl); err != nil {
			t.Fatalf("dead letter %d: %v", m.seq, err)
		}
		out = append(out, dl)
	}
	return out
}

type streamMsg struct {
	seq     uint64
	subject string
	data    []byte
}

// readStream reads a whole stream (filtered to subject when given) in sequence order.
func readStream(t *testing.T, js jetstream.JetStream, stream, subject string) []streamMsg {
	t.Helper()
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := js.Stream(rctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if subject != "" {
		cfg.FilterSubjects = []string{subject}
	}
	cons, err := s.OrderedConsumer(rctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out []streamMsg
	for {
		ci, err := cons.Info(rctx)
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		if ci.NumPending == 0 {
			return out
		}
		batch, err := cons.Fetch(int(min(256, ci.NumPending)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, streamMsg{seq: md.Sequence.Stream, subject: m.Subject(), data: m.Data()})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatalf("read %s: %v", stream, err)
		}
	}
}

// openStore opens a stopped worker's database read-only, with its key.
func openStore(t *testing.T, dir string) *persistence.Store {
	t.Helper()
	st, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{ReadOnly: true, KeyFile: filepath.Join(dir, "kpool.key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

type poolID struct{ pool, id string }

// journalSeqs maps each journaled (pool, event id) to the sequences it was applied at.
func journalSeqs(t *testing.T, st *persistence.Store) map[poolID][]uint64 {
	t.Helper()
	out := map[poolID][]uint64{}
	if err := st.Journal(0, 0, func(seq uint64, ev events.Event) error {
		k := poolID{ev.Pool, ev.ID}
		out[k] = append(out[k], seq)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// auditStore is the audit after every crash test: `db check` clean, `replay --verify`
// clean, and no live KeyPackage without its sealed private keys.
func auditStore(t *testing.T, st *persistence.Store) {
	t.Helper()
	verifyStored(t, st)
	pools, err := st.Pools()
	if err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, p := range pools {
		if err := st.KeyPackages(p.ID, func(kp pool.KeyPackage) bool {
			if kp.State.Live() {
				live++
				if ok, err := st.HasSecret(kp.Ref); err != nil || !ok {
					t.Errorf("KeyPackage %s of pool %s is %s without its stored private keys (%v)", kp.Ref, p.ID, kp.State, err)
				}
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
	}
	if live == 0 {
		t.Fatal("audit found no live KeyPackage: the run never reached its subject")
	}
}

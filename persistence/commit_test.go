package persistence

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/pool"
	berrors "go.etcd.io/bbolt/errors"
)

// gatedStep blocks the step of event "block" until release is closed, so that the
// inputs submitted meanwhile queue up and commit as one batch. It records the batch
// (one bbolt transaction) each event was stepped in.
type gatedStep struct {
	entered, release chan struct{}
	mu               sync.Mutex
	txOf             map[string]uint64
}

func newGatedStep() *gatedStep {
	return &gatedStep{entered: make(chan struct{}), release: make(chan struct{}), txOf: map[string]uint64{}}
}

func (g *gatedStep) step(v pool.View, ev events.Event) (pool.Ready, error) {
	g.mu.Lock()
	g.txOf[ev.ID] = v.(*ovView).batch
	g.mu.Unlock()
	if ev.ID == "block" {
		close(g.entered)
		<-g.release
	}
	return fakeStep(v, ev)
}

func (g *gatedStep) tx(id string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.txOf[id]
}

type outcome struct {
	res Result
	err error
}

// batchOf submits "block" and, while its transaction is held, the inputs; it returns
// their outcomes once all committed in the following transaction.
func batchOf(t *testing.T, c *Committer, g *gatedStep, block Input, ins []Input) []outcome {
	t.Helper()
	out := make([]outcome, len(ins))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.Submit(context.Background(), block) }()
	<-g.entered
	// One at a time, so the queue order (and so the sequence order) is known.
	for i, in := range ins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Submit(context.Background(), in)
			out[i] = outcome{res, err}
		}()
		deadline := time.Now().Add(10 * time.Second)
		for len(c.reqs) < i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("only %d of %d inputs queued", len(c.reqs), len(ins))
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	close(g.release)
	wg.Wait()
	return out
}

func TestGroupCommitIsolatesRejections(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	g := newGatedStep()
	c := NewCommitter(s, g.step)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))

	out := batchOf(t, c, g, genInput("block", "p1", refOf(100), t0), []Input{
		genInput("g1", "p1", refOf(1), t0),
		{Event: evRef("bad", events.TypeUploadAck, "p1", refOf(77), t0)}, // unknown ref
		genInput("g2", "p1", refOf(2), t0),
		{Event: evRef("bad2", events.TypeUploadAck, "nope", refOf(1), t0)}, // wrong pool
		genInput("g3", "p1", refOf(3), t0),
	})
	tx := g.tx("g1")
	for _, id := range []string{"bad", "g2", "bad2", "g3"} {
		if g.tx(id) != tx {
			t.Fatalf("%s stepped in tx %d, g1 in %d: not one batch", id, g.tx(id), tx)
		}
	}
	if g.tx("block") == tx {
		t.Fatal("block and batch in the same tx")
	}
	for i, o := range out {
		if o.err != nil {
			t.Fatalf("input %d: %v", i, o.err)
		}
	}
	if !errors.Is(out[1].res.Err, pool.ErrRejected) || !errors.Is(out[3].res.Err, pool.ErrRejected) {
		t.Fatalf("rejections: %v / %v", out[1].res.Err, out[3].res.Err)
	}
	// The accepted ones got consecutive sequence numbers, as if the rejected ones
	// had never been submitted.
	var got []string
	s.Journal(1, 0, func(seq uint64, ev events.Event) error { got = append(got, ev.ID); return nil })
	want := []string{"r1", "block", "g1", "g2", "g3"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("journal %v, want %v", got, want)
	}
	for i, ref := range []string{refOf(1), refOf(2), refOf(3)} {
		if _, ok, _ := s.KeyPackage(ref); !ok {
			t.Errorf("input %d: record %s missing", i, ref)
		}
	}
}

func TestWriteFailureOnlyFailsItsInput(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	g := newGatedStep()
	c := NewCommitter(s, g.step)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	bad := genInput("g2", "p1", refOf(2), t0)
	bad.Secrets[""] = []byte("x") // bbolt refuses an empty key, after the step accepted
	out := batchOf(t, c, g, genInput("block", "p1", refOf(100), t0), []Input{
		genInput("g1", "p1", refOf(1), t0), bad, genInput("g3", "p1", refOf(3), t0),
	})
	if !errors.Is(out[1].err, berrors.ErrKeyRequired) {
		t.Fatalf("bad input: err %v, want key required", out[1].err)
	}
	if out[0].err != nil || out[2].err != nil || out[0].res.Err != nil || out[2].res.Err != nil {
		t.Fatalf("good inputs failed: %+v %+v", out[0], out[2])
	}
	if _, ok, _ := s.KeyPackage(refOf(2)); ok {
		t.Fatal("failed input's record was written")
	}
	if out[2].res.Ready.Seq != out[0].res.Ready.Seq+1 {
		t.Fatalf("seqs %d, %d: not consecutive", out[0].res.Ready.Seq, out[2].res.Ready.Seq)
	}
}

func TestCommitFailureFailsWholeBatch(t *testing.T) {
	db, key := testPaths(t)
	s, err := Open(db, Options{KeyFile: key, MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g := newGatedStep()
	c := NewCommitter(s, g.step)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	big := func(id string, n int) Input {
		in := genInput(id, "p1", refOf(n), t0)
		in.Secrets[refOf(n)] = make([]byte, 400<<10) // three of these outgrow 1 MiB
		return in
	}
	out := batchOf(t, c, g, genInput("block", "p1", refOf(100), t0), []Input{big("g1", 1), big("g2", 2), big("g3", 3)})
	for i, o := range out {
		if !errors.Is(o.err, berrors.ErrMaxSizeReached) {
			t.Errorf("input %d: err %v, want the commit's error", i, o.err)
		}
	}
	if _, ok, _ := s.KeyPackage(refOf(1)); ok {
		t.Fatal("record of a failed batch was written")
	}
	m, _ := s.Meta()
	if m.Seq != 2 {
		t.Fatalf("Meta.Seq = %d, want 2 (r1, block)", m.Seq)
	}
	// The writer keeps going.
	if res := submitOK(t, c, genInput("g4", "p1", refOf(4), t0)); res.Ready.Seq != 3 {
		t.Fatalf("after failure Seq = %d, want 3", res.Ready.Seq)
	}
}

func TestSubmitAfterClose(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := NewCommitter(s, fakeStep)
	submitOK(t, c, regInput("r1", "p1"))
	c.Close()
	if _, err := c.Submit(context.Background(), regInput("r2", "p2")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close: %v, want ErrClosed", err)
	}
	if _, ok, _ := s.Pool("p2"); ok {
		t.Fatal("input submitted after Close was written")
	}
}

func TestStepPanicIsARejection(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := NewCommitter(s, func(v pool.View, ev events.Event) (pool.Ready, error) {
		if ev.ID == "boom" {
			var m map[string]int
			m["x"] = 1
		}
		return fakeStep(v, ev)
	})
	defer c.Close()
	if res := submit(t, c, regInput("boom", "p1")); res.Err == nil || !strings.Contains(res.Err.Error(), "panicked") {
		t.Fatalf("Err = %v, want a panic report", res.Err)
	}
	submitOK(t, c, regInput("r1", "p1"))
}

func TestOutboxAckAndResend(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	c := NewCommitter(s, fakeStep)
	submitOK(t, c, regInput("r1", "p1"))
	submitOK(t, c, genInput("g1", "p1", refOf(1), t0))
	var ids []string
	s.Outbox(func(o events.Outbound) error { ids = append(ids, o.ID); return nil })
	want := []string{"status-p1-1", "upload-" + refOf(1), "status-p1-2"}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("outbox %v, want %v", ids, want)
	}
	c.Ack(ids[0])
	if err := s.AckOutbox(ids[2], "unknown-id"); err != nil {
		t.Fatal(err)
	}
	c.Close() // flushes the pending Ack
	s.Close()
	s = mustOpen(t, db, key)
	defer s.Close()
	ids = nil
	s.Outbox(func(o events.Outbound) error { ids = append(ids, o.ID); return nil })
	if len(ids) != 1 || ids[0] != "upload-"+refOf(1) {
		t.Fatalf("after acks and reopen the outbox holds %v, want only the unacked upload", ids)
	}
}

func TestJournalRetentionPrunesOldEntriesAndDedupIDs(t *testing.T) {
	db, key := testPaths(t)
	s, err := Open(db, Options{KeyFile: key, JournalRetention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := NewCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	for i := range 5 {
		submitOK(t, c, genInput("g"+refOf(i), "p1", refOf(i), t0.Add(time.Duration(i)*time.Hour)))
	}
	// Two days later: everything before t0+24h goes, this tick stays.
	submitOK(t, c, Input{Event: evTick("late", t0.Add(48*time.Hour))})
	var seqs []uint64
	s.Journal(0, 0, func(seq uint64, _ events.Event) error { seqs = append(seqs, seq); return nil })
	if len(seqs) != 1 || seqs[0] != 7 {
		t.Fatalf("journal after retention: %v, want [7]", seqs)
	}
	s.View(func(v pool.View) error {
		if _, ok, _ := v.Seen("p1", "r1"); ok {
			t.Error("pruned entry's dedup id kept")
		}
		if _, ok, _ := v.Seen("", "late"); !ok {
			t.Error("retained entry's dedup id lost")
		}
		return nil
	})
	// Records are not the journal: pools and KeyPackages stay.
	if p, ok, _ := s.Pool("p1"); !ok || p.Counts.Created+p.Counts.Expired+p.Counts.Deleted != 5 {
		t.Fatalf("pool after pruning: %+v", p)
	}
}

// The benchmark's raw baseline writes what the store writes: same keys, same value
// sizes (bucket by bucket), when applied to an empty database.
func TestRawWritesMirrorStore(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := NewCommitter(s, (&pool.Core{}).Step)
	before := dump(t, s)
	var seq uint64
	want := map[string]map[string]int{}
	record := func(in Input, res Result) {
		for _, w := range rawWrites(in, res.Ready, &seq) {
			if w.del {
				delete(want[string(w.bucket)], string(w.key))
				continue
			}
			if want[string(w.bucket)] == nil {
				want[string(w.bucket)] = map[string]int{}
			}
			want[string(w.bucket)][string(w.key)] = len(w.val)
		}
	}
	benchRegisterRecord := func(in Input) { record(in, submitOK(t, c, in)) }
	benchRegisterRecord(regInput("reg-0", "bp0"))
	for _, r := range commitWorkload(t, c, 40, 4, 1, 0) {
		record(r.in, r.res)
	}
	c.Close()
	after := dump(t, s)
	for b, keys := range after {
		for k, v := range keys {
			if before[b][k] == v {
				continue // unchanged since open (schema, key check)
			}
			if n, ok := want[b][k]; !ok || n != len(v) {
				t.Errorf("bucket %s key %x: stored %d bytes, raw baseline %d (%v)", b, k, len(v), n, ok)
			}
		}
		if len(want[b]) > len(keys) {
			t.Errorf("bucket %s: raw baseline writes %d keys, store holds %d", b, len(want[b]), len(keys))
		}
	}
}

// A batch stepped on top of one whose commit then fails saw state that never reached
// the file: it fails too, and the next input is stepped on the committed state.
func TestFailedCommitVoidsTheBatchSteppedOnIt(t *testing.T) {
	db, key := testPaths(t)
	s, err := Open(db, Options{KeyFile: key, MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	stepped := map[uint64]int{}
	gate, atGate := make(chan struct{}), make(chan struct{})
	c := NewCommitterWith(s, fakeStep, CommitterOptions{
		onStep: func(b uint64) { mu.Lock(); stepped[b]++; mu.Unlock() },
		onWrite: func(b uint64) {
			if b == 2 {
				close(atGate)
				<-gate
			}
		},
	})
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1")) // batch 1
	big := genInput("g1", "p1", refOf(1), t0)
	big.Secrets[refOf(1)] = make([]byte, 2<<20) // outgrows MaxSize: batch 2 fails
	var bigErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _, bigErr = c.Submit(context.Background(), big) }()
	<-atGate
	// Batch 3 is stepped while batch 2 waits to be written: it sees g1.
	var next outcome
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, err := c.Submit(context.Background(), Input{Event: evRef("a1", events.TypeUploadAck, "p1", refOf(1), t0)})
		next = outcome{res, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := stepped[3]
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("second input never stepped")
		}
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	if !errors.Is(bigErr, berrors.ErrMaxSizeReached) {
		t.Fatalf("big input: %v, want the commit's error", bigErr)
	}
	if next.err == nil || !errors.Is(next.err, berrors.ErrMaxSizeReached) || !strings.Contains(next.err.Error(), "earlier batch") {
		t.Fatalf("input stepped on the failed batch: %+v, want it failed", next)
	}
	if _, ok, _ := s.KeyPackage(refOf(1)); ok {
		t.Fatal("record of the failed batch stored")
	}
	// The committer recovers: the next input sees the committed state (no g1).
	res := submit(t, c, Input{Event: evRef("a1b", events.TypeUploadAck, "p1", refOf(1), t0)})
	var rej *pool.RejectError
	if !errors.As(res.Err, &rej) || rej.Code != pool.CodeUnknownRef {
		t.Fatalf("after the failure: %v, want unknown_ref (g1 was never stored)", res.Err)
	}
	if res := submitOK(t, c, genInput("g2", "p1", refOf(2), t0)); res.Ready.Seq != 2 {
		t.Fatalf("Seq after the failure = %d, want 2", res.Ready.Seq)
	}
}

// A sequential producer that does not wait gets its inputs stepped in order and
// grouped into few transactions.
func TestSubmitAsyncKeepsOrderAndGroups(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := NewCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	var ps []*Pending
	for i := range 300 {
		in := genInput(fmt.Sprintf("g%03d", i), "p1", refOf(i), t0)
		if i%2 == 1 { // each ack follows its generate: only in order is it valid
			in = Input{Event: evRef(fmt.Sprintf("a%03d", i-1), events.TypeUploadAck, "p1", refOf(i-1), t0)}
		}
		p, err := c.SubmitAsync(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for i, p := range ps {
		res, err := p.Wait(context.Background())
		if err != nil || res.Err != nil {
			t.Fatalf("input %d: %v %v", i, err, res.Err)
		}
		if res.Ready.Seq != uint64(i+2) {
			t.Fatalf("input %d committed at seq %d, want %d", i, res.Ready.Seq, i+2)
		}
	}
	st := c.Stats()
	t.Logf("%d inputs in %d transactions", st.Inputs, st.Transactions)
	if st.Transactions > 100 {
		t.Fatalf("%d transactions for 301 inputs: not grouped", st.Transactions)
	}
}

// A step sees the timers of batches stepped but not yet committed: a tick stepped while
// the batch that put a KeyPackage's deadline waits to be written expires it, together
// with a committed one; an earlier tick, before both deadlines, expires nothing.
func TestStepSeesDueTimersOfUncommittedBatches(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	var mu sync.Mutex
	stepped := map[uint64]int{}
	gate, atGate := make(chan struct{}), make(chan struct{})
	c := NewCommitterWith(s, fakeStep, CommitterOptions{
		onStep: func(b uint64) { mu.Lock(); stepped[b]++; mu.Unlock() },
		onWrite: func(b uint64) {
			if b == 3 {
				close(atGate)
				<-gate
			}
		},
	})
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))                                                 // batch 1
	submitOK(t, c, genInput("g0", "p1", refOf(0), t0))                                   // batch 2: committed, due t0+1h
	held, err := c.SubmitAsync(context.Background(), genInput("g1", "p1", refOf(1), t0)) // batch 3, held
	if err != nil {
		t.Fatal(err)
	}
	<-atGate
	var ticks []*Pending
	for i, at := range []time.Time{t0.Add(30 * time.Minute), t0.Add(2 * time.Hour)} {
		p, err := c.SubmitAsync(context.Background(), Input{Event: evTick(fmt.Sprintf("k%d", i), at)})
		if err != nil {
			t.Fatal(err)
		}
		ticks = append(ticks, p)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := stepped[4]
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ticks stepped %d of 2 while batch 3 was held", n)
		}
		time.Sleep(time.Millisecond)
	}
	close(gate)
	if res, err := held.Wait(context.Background()); err != nil || res.Err != nil {
		t.Fatalf("g1: %v %v", err, res.Err)
	}
	var expired [][]string
	for i, p := range ticks {
		res, err := p.Wait(context.Background())
		if err != nil || res.Err != nil {
			t.Fatalf("tick %d: %v %v", i, err, res.Err)
		}
		var refs []string
		for _, kp := range res.Ready.KeyPackages {
			if kp.State == fsm.Expired {
				refs = append(refs, kp.Ref)
			}
		}
		expired = append(expired, refs)
	}
	if len(expired[0]) != 0 {
		t.Fatalf("tick before the deadlines expired %v", expired[0])
	}
	if want := []string{refOf(0), refOf(1)}; !slices.Equal(expired[1], want) {
		t.Fatalf("tick after the deadlines expired %v, want %v (the committed one and the held one)", expired[1], want)
	}
}

package worker_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var propertyRuns = flag.Int("property-runs", 50, "seeds of TestLiveOrderReplaysExactly")

// TestLiveOrderReplaysExactly: random interleavings of events for several pools, from
// concurrent publishers, with times that jump forward (hours to weeks) and API calls
// mixed in. After each run the journal is in stream order and replaying it gives the
// live database's state exactly (replay.Verify).
func TestLiveOrderReplaysExactly(t *testing.T) {
	ns := startNATS(t)
	for seed := range *propertyRuns {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { liveOrderRun(t, ns, uint64(seed)) })
	}
}

func liveOrderRun(t *testing.T, ns *natsServer, seed uint64) {
	prefix := fmt.Sprintf("prop%d", seed)
	clock := newClock()
	dir := t.TempDir()
	// the clock jumps weeks at a time: keep the whole journal so that it replays from seq 1
	w := startWorker(t, ns.URL(), dir, clock, func(c *worker.Config) { c.Prefix = prefix; c.JournalRetention = worker.KeepJournal })
	nc, _ := connect(t, ns.URL())
	c, err := natsbus.NewClient(nc, natsbus.WithPrefix(prefix), natsbus.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	ds := startDS(t, c, true)
	pools := []string{"a", "b", "c"}
	policy := events.Policy{Target: new(4), LowWatermark: new(2), HardCap: new(8)}
	for _, p := range pools {
		if _, err := c.RegisterSealed(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1, Policy: policy}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "pools filled", func() bool {
		for _, p := range pools {
			if poolRecord(t, w, p).Fresh < 4 {
				return false
			}
		}
		return true
	})

	rng := rand.New(rand.NewPCG(seed, 7))
	var mu sync.Mutex // rng and clock jumps
	pick := func(n int) int { mu.Lock(); defer mu.Unlock(); return rng.IntN(n) }
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				p := pools[pick(len(pools))]
				refs := ds.refs(p, false)
				ref := refs[pick(len(refs))]
				var err error
				switch pick(6) {
				case 0:
					mu.Lock()
					clock.Advance(time.Duration(1+rng.IntN(24*21)) * time.Hour)
					mu.Unlock()
					err = c.ExpiryTick(ctx(t), "", clock.Now())
				case 1:
					_, err = c.Replenish(ctx(t), p)
				case 2:
					_, err = c.Take(ctx(t), p, ref, 1)
				default:
					_, err = c.Publish(ctx(t), events.Event{ID: fmt.Sprintf("claim-%d-%d", g, i), Type: events.TypeClaimed, Pool: p, Ref: ref})
				}
				var ae *natsbus.APIError
				if err != nil && !errors.As(err, &ae) { // API refusals are verdicts, fine here
					t.Errorf("op: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	waitIdle(t, w, nc, prefix)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	if n := verifyDir(t, dir); n < 20 {
		t.Fatalf("only %d inputs applied: the run did not exercise the worker", n)
	}
	st, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	checkJournalInStreamOrder(t, st, nc, prefix)
}

// waitIdle waits until every input in the stream is applied and nothing more follows
// (refills, their uploads and acks).
func waitIdle(t *testing.T, w *worker.Worker, nc *nats.Conn, prefix string) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stable := 0
	var last uint64
	eventually(t, 30*time.Second, "worker idle", func() bool {
		s, err := js.Stream(context.Background(), natsbus.StreamNames(prefix).Events)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		if err != nil || w.AppliedSeq() != info.State.LastSeq {
			stable = 0
			return false
		}
		if info.State.LastSeq == last {
			stable++
		} else {
			last, stable = info.State.LastSeq, 0
		}
		return stable >= 3
	})
}

// checkJournalInStreamOrder: every journaled input is in the stream, in the same order.
func checkJournalInStreamOrder(t *testing.T, st *persistence.Store, nc *nats.Conn, prefix string) {
	t.Helper()
	js, _ := jetstream.New(nc)
	cons, err := js.OrderedConsumer(ctx(t), natsbus.StreamNames(prefix).Events, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	seqOf := map[string]uint64{}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			break
		}
		ev, err := events.Decode(msg.Data())
		md, _ := msg.Metadata()
		if err == nil {
			if _, dup := seqOf[ev.MsgID()]; !dup {
				seqOf[ev.MsgID()] = md.Sequence.Stream
			}
		}
		if md.NumPending == 0 {
			break
		}
	}
	var prev uint64
	n := 0
	if err := st.Journal(0, 0, func(seq uint64, ev events.Event) error {
		s, ok := seqOf[ev.MsgID()]
		if !ok {
			return fmt.Errorf("journal %d (%s %s) is not in the stream", seq, ev.Type, ev.MsgID())
		}
		if s <= prev {
			return fmt.Errorf("journal %d (%s) is at stream seq %d, after %d: not stream order", seq, ev.MsgID(), s, prev)
		}
		prev = s
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("empty journal")
	}
}

// TestInternalFailuresAreNotVerdicts: an input that fails inside the worker (here a
// failing step, as a failing store or view would) is not dead-lettered and not skipped:
// it is retried, the worker reports not ready after MaxInternalFailures, and once the
// fault is gone every input is applied exactly once, in order.
func TestInternalFailuresAreNotVerdicts(t *testing.T) {
	ns := startNATS(t)
	var faulty atomic.Bool
	var failed atomic.Int64
	hook := worker.WithStepHook(func(_ context.Context, ev events.Event) error {
		if ev.Type == events.TypeClaimed && faulty.Load() {
			failed.Add(1)
			return errors.New("injected: the store cannot read the KeyPackage")
		}
		return nil
	})
	w := startWorker(t, ns.URL(), t.TempDir(), newClock(), hook, func(c *worker.Config) { c.MaxInternalFailures = 3 })
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, true)
	dls := collectDeadLetters(t, c)
	if _, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{Target: new(6), LowWatermark: new(1), HardCap: new(12)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "pool full", func() bool { return poolRecord(t, w, "alice").Fresh == 6 })
	refs := ds.refs("alice", false)[:3]
	faulty.Store(true)
	for i, ref := range refs {
		if _, err := c.Publish(ctx(t), events.Event{ID: fmt.Sprint("claim-", i), Type: events.TypeClaimed, Pool: "alice", Ref: ref}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "not ready after repeated failures", func() bool { return !w.Ready() })
	if n := failed.Load(); n < 3 {
		t.Fatalf("%d failed attempts before not ready, want at least 3", n)
	}
	for _, ref := range refs {
		if k, _, _ := w.Store().KeyPackage(ref); k.State != "available" {
			t.Fatalf("%s is %s while its claim keeps failing", ref, k.State)
		}
	}
	if d := dls.list(); len(d) != 0 {
		t.Fatalf("internal failures were dead-lettered: %+v", d)
	}
	faulty.Store(false)
	eventually(t, 30*time.Second, "claims applied after the fault is gone", func() bool {
		for _, ref := range refs {
			if k, _, _ := w.Store().KeyPackage(ref); k.State != "claimed" {
				return false
			}
		}
		return w.Ready()
	})
	for i := range refs {
		if n := journaled(t, w, fmt.Sprint("claim-", i)); n != 1 {
			t.Fatalf("claim-%d journaled %d times", i, n)
		}
	}
	if d := dls.list(); len(d) != 0 {
		t.Fatalf("dead letters after recovery: %+v", d)
	}
}

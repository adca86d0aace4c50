package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
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

// The soak: a child worker under a delivery-service + claim + take load (and ticks) is
// SIGKILLed at random points and/or its NATS server restarted, many times; then the
// whole run is audited against the inbound stream and the database. The CI versions are
// bounded; `make soak` runs the long one (KPOOL_SOAK=1, docs/operations.md).

// soakPlan says how hard a run is.
type soakPlan struct {
	kills, natsRestarts int
	pools               int
	seed                uint64
}

// soakFigures are what a run did; the audit proved nothing of it lost or doubled.
type soakFigures struct {
	kills, natsRestarts int
	streamMsgs          int // messages in the inbound stream
	journaled           int // inputs applied
	published           int // events the test's publishers had accepted by JetStream
	claims              int
	takesAnswered       int // takes that returned the private keys
	takesAnswerLost     int // applied takes whose answer did not come back (a retry says "already taken")
	abandoned           int // dead letters of internal inputs whose caller was gone
	elapsed             time.Duration
}

func (f soakFigures) String() string {
	return fmt.Sprintf("%d SIGKILLs, %d NATS restarts in %v: %d stream messages, %d inputs applied, %d events published by the DS/clients/ticker, %d claims, %d takes answered, %d takes applied with the answer lost, %d abandoned internal inputs",
		f.kills, f.natsRestarts, f.elapsed.Round(time.Second), f.streamMsgs, f.journaled, f.published, f.claims, f.takesAnswered, f.takesAnswerLost, f.abandoned)
}

// TestKillLoop: SIGKILL right after DS acks, right after commits or at random moments,
// at least 50 times under load; every published event is applied exactly once, in stream
// order, no claim is lost, and the database passes db check and replay --verify.
func TestKillLoop(t *testing.T) {
	f := runSoak(t, soakPlan{kills: 50, pools: 3, seed: soakSeed(t)})
	t.Log(f)
}

// TestNATSRestartsUnderLoad: the NATS server restarts at least 5 times while the worker
// runs under load; nothing is lost, nothing doubled.
func TestNATSRestartsUnderLoad(t *testing.T) {
	f := runSoak(t, soakPlan{natsRestarts: 5, pools: 3, seed: soakSeed(t)})
	t.Log(f)
}

// TestSoak is the long run of `make soak`: KPOOL_SOAK=1, with KPOOL_SOAK_KILLS (default
// 500) and KPOOL_SOAK_RESTARTS (default 20).
func TestSoak(t *testing.T) {
	if os.Getenv("KPOOL_SOAK") == "" {
		t.Skip("the long soak runs with KPOOL_SOAK=1 (make soak); CI runs TestKillLoop and TestNATSRestartsUnderLoad")
	}
	plan := soakPlan{kills: envInt(t, "KPOOL_SOAK_KILLS", 500), natsRestarts: envInt(t, "KPOOL_SOAK_RESTARTS", 20), pools: 4, seed: soakSeed(t)}
	f := runSoak(t, plan)
	t.Log(f)
	fmt.Println("soak:", f)
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q is not a count", name, s)
	}
	return n
}

// soakSeed is KPOOL_SOAK_SEED or a fresh one, logged so a failing run can be repeated.
func soakSeed(t *testing.T) uint64 {
	t.Helper()
	seed := rand.Uint64()
	if s := os.Getenv("KPOOL_SOAK_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("KPOOL_SOAK_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (KPOOL_SOAK_SEED=%d repeats the kill points)", seed, seed)
	return seed
}

// ledger is what the load's publishers know was accepted.
type ledger struct {
	mu        sync.Mutex
	published map[poolID]events.Event // accepted by JetStream: must be applied exactly once
	acked     map[string][]string     // pool → refs acknowledged, not yet claimed
	claimed   map[string][]string     // pool → refs claimed, not yet taken
	claims    int
	takes     map[string]string // ref → "answered" or "lost"
	kick      chan struct{}     // an ack was published
}

func (l *ledger) record(ev events.Event) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := poolID{ev.Pool, ev.ID}
	_, seen := l.published[k]
	l.published[k] = ev
	return !seen
}

func (l *ledger) pop(m map[string][]string, p string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(m[p]) == 0 {
		return "", false
	}
	ref := m[p][0]
	m[p] = m[p][1:]
	return ref, true
}

func (l *ledger) push(m map[string][]string, p, ref string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m[p] = append(m[p], ref)
}

func (l *ledger) pending(m map[string][]string, p string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(m[p])
}

// soakRun holds a run's moving parts.
type soakRun struct {
	t          *testing.T
	c          *natsbus.Client
	l          *ledger
	stop       chan struct{} // the load stops
	claimsDone chan struct{} // the claimers stopped: the takers finish what is claimed
}

// publish publishes ev until JetStream accepts it (same id, so a retry is deduplicated)
// and records it.
func (r *soakRun) publish(ev events.Event) bool {
	sent, err := tryPublish(r.c, ev, 2*time.Minute)
	if err != nil {
		r.t.Error(err)
		return false
	}
	r.l.record(sent)
	return true
}

func runSoak(t *testing.T, plan soakPlan) soakFigures {
	start := time.Now()
	rng := rand.New(rand.NewPCG(plan.seed, plan.seed>>1|1))
	ns := startNATS(t)
	dir := t.TempDir()
	cur := startChild(t, dir, ns.URL())
	nc, c := connect(t, ns.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r := &soakRun{t: t, c: c, stop: make(chan struct{}), claimsDone: make(chan struct{}),
		l: &ledger{published: map[poolID]events.Event{}, acked: map[string][]string{}, claimed: map[string][]string{}, takes: map[string]string{}, kick: make(chan struct{}, 1)}}

	pools := make([]string, plan.pools)
	for i := range pools {
		pools[i] = "soak-" + strconv.Itoa(i)
		rctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		_, err := c.Register(rctx, pools[i], natsbus.RegisterRequest{Identity: pools[i], CipherSuite: 1}, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}

	// The delivery service acks every upload with an id derived from the ref, so an
	// upload delivered twice is acked twice with one id (and applied once). dsMu keeps
	// a handler from publishing once the DS is stopped (stopping a consumer does not
	// wait for its handler).
	var dsMu sync.Mutex
	dsStopped := false
	stopConsumer, err := c.ConsumeDeliveries(ctx(t), "soak-ds", "", natsbus.DeliveryHandler{
		Upload: func(u events.Upload) error {
			dsMu.Lock()
			defer dsMu.Unlock()
			if dsStopped {
				return errors.New("the delivery service stopped")
			}
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			sent, err := c.Publish(pctx, events.Event{ID: "ack-" + u.Ref, Type: events.TypeUploadAck, Pool: u.Pool, Ref: u.Ref})
			if err != nil {
				return err // redelivered
			}
			if r.l.record(sent) && !u.LastResort {
				r.l.push(r.l.acked, u.Pool, u.Ref)
			}
			select {
			case r.l.kick <- struct{}{}:
			default:
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopDS := func() {
		stopConsumer()
		dsMu.Lock()
		dsStopped = true
		dsMu.Unlock()
	}

	var claimers, load sync.WaitGroup
	for _, p := range pools {
		claimers.Add(1)
		load.Add(1)
		go func() { defer claimers.Done(); r.claimer(p) }()
		go func() { defer load.Done(); r.taker(p) }()
	}
	load.Add(1)
	go func() { defer load.Done(); r.ticker() }()

	// The faults. Kill points: right after the DS published an ack, right after the
	// worker committed a few more inputs, or after a random delay. NATS restarts are
	// spread over the kills, alternately while the worker is down and while it runs;
	// after each restart under a running worker it must apply inputs again.
	f := soakFigures{}
	restartEvery := 0
	if plan.natsRestarts > 0 && plan.kills > 0 {
		restartEvery = max(1, plan.kills/plan.natsRestarts)
	}
	for f.kills < plan.kills || f.natsRestarts < plan.natsRestarts {
		switch rng.IntN(3) {
		case 0:
			select {
			case <-r.l.kick:
			case <-time.After(5 * time.Second):
			}
		case 1:
			target := cur.applied.Load() + 1 + uint64(rng.IntN(20))
			deadline := time.Now().Add(5 * time.Second)
			for cur.applied.Load() < target && time.Now().Before(deadline) && cur.running() {
				time.Sleep(time.Millisecond) // polling interval
			}
		default:
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random kill point
		}
		cur.running()
		restart := f.natsRestarts < plan.natsRestarts && (f.kills >= plan.kills || restartEvery > 0 && (f.kills+1)%restartEvery == 0)
		if f.kills < plan.kills {
			cur.kill()
			if !cur.killedBySIGKILL() {
				t.Fatalf("child ended with %v, not SIGKILL\n%s", cur.waitErr, cur.stderr.String())
			}
			f.kills++
			if restart && f.natsRestarts%2 == 0 {
				ns.Restart() // while the worker is down
				f.natsRestarts++
				restart = false
			}
			cur = startChild(t, dir, ns.URL())
		}
		if restart {
			ns.Restart() // under load, the worker running
			f.natsRestarts++
			// The worker recovers: it applies more inputs before the next fault.
			from := cur.applied.Load()
			eventually(t, 2*time.Minute, "the worker applying inputs again after a NATS restart", func() bool {
				return cur.running() && cur.applied.Load() >= from+20
			})
		}
	}

	// Quiesce: stop the load, let the takes in hand finish, stop the DS, then wait until
	// the worker applied the whole stream and stop it gracefully.
	close(r.stop)
	waitGroup(t, &claimers, 3*time.Minute, "the claimers to stop")
	close(r.claimsDone)
	waitGroup(t, &load, 5*time.Minute, "the load to finish its takes")
	stopDS()
	last := streamLast(t, js)
	eventually(t, 3*time.Minute, "the worker to apply the whole stream", func() bool { return cur.running() && cur.applied.Load() >= last })
	cur.stop()
	f.elapsed = time.Since(start)

	st := openStore(t, dir)
	r.audit(st, js, &f)
	return f
}

// claimer claims acknowledged KeyPackages, keeping a few claimed ones ahead of the taker.
func (r *soakRun) claimer(p string) {
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		if r.l.pending(r.l.claimed, p) >= 3 {
			time.Sleep(5 * time.Millisecond) // polling interval: the taker catches up
			continue
		}
		ref, ok := r.l.pop(r.l.acked, p)
		if !ok {
			time.Sleep(5 * time.Millisecond) // polling interval: uploads on their way
			continue
		}
		if !r.publish(events.Event{ID: "claim-" + ref, Type: events.TypeClaimed, Pool: p, Ref: ref}) {
			return
		}
		r.l.mu.Lock()
		r.l.claims++
		r.l.mu.Unlock()
		r.l.push(r.l.claimed, p, ref)
	}
}

// taker takes claimed KeyPackages, retrying with the same id through kills and restarts.
func (r *soakRun) taker(p string) {
	for {
		ref, ok := r.l.pop(r.l.claimed, p)
		if !ok {
			select {
			case <-r.claimsDone:
				if r.l.pending(r.l.claimed, p) == 0 {
					return
				}
			case <-time.After(5 * time.Millisecond): // polling interval
			}
			continue
		}
		outcome := r.take(p, ref)
		r.l.mu.Lock()
		r.l.takes[ref] = outcome
		r.l.mu.Unlock()
	}
}

// take takes ref until the worker answers: "answered" (the bundle) or "lost" (the take
// was applied by an earlier attempt whose answer did not come back).
func (r *soakRun) take(p, ref string) string {
	rk, err := natsbus.NewRecipientKey(1)
	if err != nil {
		r.t.Error(err)
		return "error"
	}
	deadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		tr, err := r.c.TakeSealed(cctx, p, natsbus.TakeRequest{Ref: ref, RecipientKey: rk.Public, CipherSuite: 1, ID: "take-" + ref})
		cancel()
		var apiErr *natsbus.APIError
		switch {
		case err == nil:
			bundle, err := rk.Open(tr.Sealed, natsbus.SealInfoTake(p, ref))
			if err != nil || len(bundle) == 0 {
				r.t.Errorf("take %s: the answer does not open: %v", ref, err)
				return "error"
			}
			return "answered"
		case errors.As(err, &apiErr) && apiErr.Code == pool.CodeInvalidTransition && strings.Contains(apiErr.Description, "already taken"):
			return "lost"
		case errors.As(err, &apiErr) && apiErr.Code != natsbus.CodeUnavailable:
			r.t.Errorf("take %s of pool %s refused: %v", ref, p, err)
			return "error"
		}
		time.Sleep(50 * time.Millisecond) // retry interval: the worker restarts
	}
	r.t.Errorf("take %s of pool %s: no answer within 4m", ref, p)
	return "error"
}

// ticker publishes an expiry_tick for every pool every 250ms.
func (r *soakRun) ticker() {
	for n := 0; ; n++ {
		select {
		case <-r.stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
		if !r.publish(events.Event{ID: "tick-" + strconv.Itoa(n), Type: events.TypeExpiryTick}) {
			return
		}
	}
}

func waitGroup(t *testing.T, wg *sync.WaitGroup, within time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("timed out after %v waiting for %s", within, what)
	}
}

// audit checks the run against the stream and the database.
func (r *soakRun) audit(st *persistence.Store, js jetstream.JetStream, f *soakFigures) {
	t := r.t
	t.Helper()
	// The journal holds each (pool, id) once.
	var journal []poolID
	if err := st.Journal(0, 0, func(_ uint64, ev events.Event) error {
		journal = append(journal, poolID{ev.Pool, ev.ID})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	count := map[poolID]int{}
	for _, k := range journal {
		if count[k]++; count[k] == 2 {
			t.Errorf("input %s of pool %q applied twice", k.id, k.pool)
		}
	}
	f.journaled = len(journal)

	// Every event the publishers had accepted was applied (once, above).
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	f.published, f.claims = len(r.l.published), r.l.claims
	for k, ev := range r.l.published {
		if count[k] == 0 {
			t.Errorf("%s %s of pool %q accepted by JetStream, never applied", ev.Type, k.id, k.pool)
		}
	}

	// In stream order: the journal is a subsequence of the inbound stream.
	msgs := readStream(t, js, natsbus.StreamNames("kpool").Events, "")
	f.streamMsgs = len(msgs)
	i := 0
	for _, m := range msgs {
		var ev struct{ ID, Pool string }
		if json.Unmarshal(m.data, &ev) != nil {
			t.Fatalf("stream message %d is not an event: %q", m.seq, m.data)
		}
		if i < len(journal) && journal[i] == (poolID{ev.Pool, ev.ID}) {
			i++
		}
	}
	if i < len(journal) {
		t.Fatalf("applied out of stream order: journal entry %d (%s of pool %q) has no stream message after the one of entry %d", i+1, journal[i].id, journal[i].pool, i)
	}

	// No claim lost: every claimed KeyPackage was taken, once, and its keys are gone.
	for ref, outcome := range r.l.takes {
		switch outcome {
		case "answered":
			f.takesAnswered++
		case "lost":
			f.takesAnswerLost++
		}
		kp, ok, err := st.KeyPackage(ref)
		if err != nil || !ok || kp.State != fsm.Deleted || count[poolID{kp.Pool, "take-" + ref}] != 1 || count[poolID{kp.Pool, "claim-" + ref}] != 1 {
			t.Errorf("KeyPackage %s after claim and take (%s): %+v found=%v %v; want deleted, claim and take applied once", ref, outcome, kp.State, ok, err)
		}
		if has, _ := st.HasSecret(ref); has {
			t.Errorf("KeyPackage %s was taken, its private keys remain", ref)
		}
	}
	if len(r.l.takes) != f.claims {
		t.Errorf("%d claims, %d takes finished", f.claims, len(r.l.takes))
	}

	// Nothing the worker owed NATS was lost: its outbox is empty after the graceful stop,
	// and every KeyPackage it generated was offered to the delivery service.
	left := 0
	if err := st.Outbox(func(events.Outbound) error { left++; return nil }); err != nil {
		t.Fatal(err)
	}
	if left > 0 {
		t.Errorf("%d outbox messages left unpublished after a graceful stop", left)
	}
	uploaded := map[string]bool{}
	for _, m := range readStream(t, js, natsbus.StreamNames("kpool").Outbound, events.Subjects{Prefix: "kpool"}.Outbound(events.KindUpload, "*")) {
		var u events.Upload
		if err := json.Unmarshal(m.data, &u); err != nil {
			t.Fatalf("upload %d: %v", m.seq, err)
		}
		uploaded[u.Ref] = true
	}
	generated := 0
	if err := st.Journal(0, 0, func(_ uint64, ev events.Event) error {
		if ev.Type == events.TypeGenerated && ev.Generated != nil {
			generated++
			if !uploaded[ev.Generated.Ref] {
				t.Errorf("KeyPackage %s of pool %s generated, never uploaded", ev.Generated.Ref, ev.Pool)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if generated == 0 {
		t.Fatal("no KeyPackage generated: the run never reached its subject")
	}

	// The only refusals are internal inputs whose caller died with a killed worker.
	for _, dl := range deadLettersIn(t, js) {
		if dl.Code != worker.CodeAbandoned {
			t.Errorf("dead letter: %+v", dl)
		}
		f.abandoned++
	}
	auditStore(t, st)
	if f.takesAnswered == 0 || f.claims < 10 {
		t.Fatalf("the load hardly ran (%s): the run never reached its subject", f)
	}
}

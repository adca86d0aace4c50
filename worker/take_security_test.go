package worker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
)

// TestTakeNeverRevealsOnAReusedID: a take whose id was already applied — in another pool,
// in the same pool by another event, or by an earlier take — reveals nothing, consumes
// nothing and leaves the KeyPackage offerable; only the take that consumes a KeyPackage
// returns its keys, once.
func TestTakeNeverRevealsOnAReusedID(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, false) // nothing is acknowledged: KeyPackages stay created

	policy := events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6)}
	if _, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{ID: "reg-alice", Identity: "alice", CipherSuite: 1, Policy: policy}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RegisterSealed(ctx(t), "bob", natsbus.RegisterRequest{ID: "reg-bob", Identity: "bob", CipherSuite: 1, Policy: policy}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "uploads for both pools", func() bool {
		return len(ds.refs("alice", false)) >= 2 && len(ds.refs("bob", false)) >= 1
	})
	created := ds.refs("alice", false)[0]

	// Generated ids are random, never derived from the ref.
	if err := w.Store().Journal(0, 0, func(_ uint64, ev events.Event) error {
		if ev.Type == events.TypeGenerated && strings.Contains(ev.ID, ev.Generated.Ref[:16]) {
			t.Errorf("generated input id %q is derived from its ref", ev.ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	rk, err := natsbus.NewRecipientKey(1)
	if err != nil {
		t.Fatal(err)
	}
	take := func(ref, id string) (natsbus.TakeResponse, error) {
		return c.TakeSealed(ctx(t), "alice", natsbus.TakeRequest{Ref: ref, RecipientKey: rk.Public, CipherSuite: 1, ID: id})
	}
	// A created KeyPackage is never taken, whatever id names the take.
	for _, tc := range []struct{ name, id, code string }{
		{"another pool's id", "reg-bob", pool.CodeInvalidTransition},
		{"this pool's registration id", "reg-alice", pool.CodeIDReused},
		{"the old generated-id pattern", "gen-" + created, pool.CodeInvalidTransition},
		{"a fresh id", "", pool.CodeInvalidTransition},
	} {
		for range 2 { // and again: a repeat must not do better
			resp, err := take(created, tc.id)
			if err == nil {
				t.Fatalf("%s: take of a created KeyPackage answered %d sealed bytes", tc.name, len(resp.Sealed.Ciphertext))
			}
			if code := apiCode(t, err); code != tc.code {
				t.Fatalf("%s: code %s, want %s (%v)", tc.name, code, tc.code, err)
			}
		}
	}
	if kp, _, _ := w.Store().KeyPackage(created); kp.State != "created" {
		t.Fatalf("refused takes moved the KeyPackage to %s", kp.State)
	}
	if ok, _ := w.Store().HasSecret(created); !ok {
		t.Fatal("refused takes erased the private keys")
	}

	// An available KeyPackage is taken once; the same request again reveals nothing.
	refs := ds.refs("alice", false)
	first, second := refs[0], refs[1]
	for _, ref := range []string{first, second} {
		if err := c.UploadAck(ctx(t), "alice", ref); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "acks applied", func() bool {
		a, _, _ := w.Store().KeyPackage(first)
		b, _, _ := w.Store().KeyPackage(second)
		return a.State == "available" && b.State == "available"
	})
	bundle, err := c.TakeWith(ctx(t), "alice", first, rk)
	if err != nil || len(bundle) == 0 {
		t.Fatalf("first take: %v", err)
	}
	// TakeWith picks a random id: take again with a known one to repeat it exactly.
	if _, err := take(second, "take-1"); err != nil {
		t.Fatalf("take with id: %v", err)
	}
	if _, err := take(second, "take-1"); apiCode(t, err) != pool.CodeInvalidTransition {
		t.Fatalf("repeated take: %v, want invalid_transition (already taken)", err)
	}
	// The same id for another ref is another event: refused, that KeyPackage untouched.
	third := ""
	eventually(t, 10*time.Second, "a refill upload", func() bool {
		for _, r := range ds.refs("alice", false) {
			if r != first && r != second && r != created {
				third = r
				return true
			}
		}
		return false
	})
	if err := c.UploadAck(ctx(t), "alice", third); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "third available", func() bool {
		k, _, _ := w.Store().KeyPackage(third)
		return k.State == "available"
	})
	if _, err := take(third, "take-1"); apiCode(t, err) != pool.CodeIDReused {
		t.Fatalf("take-1 reused for another ref: %v, want id_reused", err)
	}
	if k, _, _ := w.Store().KeyPackage(third); k.State != "available" {
		t.Fatalf("refused take moved %s to %s", third, k.State)
	}
	if ok, _ := w.Store().HasSecret(third); !ok {
		t.Fatal("refused take erased the private keys")
	}
}

// TestEventIDsArePerPool: pool B's event is applied although pool A applied an event with
// the same id; within a pool, another event reusing an id is dead-lettered id_reused.
func TestEventIDsArePerPool(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	nc, c := connect(t, ns.URL())
	ds := startDS(t, c, false)
	dls := collectDeadLetters(t, c)
	policy := events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)}
	for _, p := range []string{"a", "b"} {
		if _, err := c.RegisterSealed(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1, Policy: policy}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "uploads", func() bool {
		return len(ds.refs("a", false)) >= 2 && len(ds.refs("b", false)) >= 2
	})
	a, b := ds.refs("a", false), ds.refs("b", false)
	now := time.Now().UTC()
	publish := func(ev events.Event) {
		t.Helper()
		if _, err := c.Publish(ctx(t), ev); err != nil {
			t.Fatal(err)
		}
	}
	publish(events.Event{ID: "x", Type: events.TypeUploadAck, Time: now, Pool: "a", Ref: a[0]})
	publish(events.Event{ID: "x", Type: events.TypeUploadAck, Time: now, Pool: "b", Ref: b[0]})
	eventually(t, 10*time.Second, "both acks applied", func() bool {
		ka, _, _ := w.Store().KeyPackage(a[0])
		kb, _, _ := w.Store().KeyPackage(b[0])
		return ka.State == "available" && kb.State == "available"
	})
	// Same pool, same id, another event. Its Nats-Msg-Id must differ from the first
	// publish's, or JetStream itself drops it.
	data := mustJSON(events.Event{ID: "x", Type: events.TypeUploadAck, Time: now, Pool: "a", Ref: a[1]})
	if err := nc.Publish(c.Subjects().Event("a", events.TypeUploadAck), data); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "id_reused dead letter", func() bool {
		for _, d := range dls.list() {
			if d.EventID == "x" && d.Code == pool.CodeIDReused {
				return true
			}
		}
		return false
	})
	if k, _, _ := w.Store().KeyPackage(a[1]); k.State != "created" {
		t.Fatalf("reused id changed %s to %s", a[1], k.State)
	}
}

// TestRegisterWithAnAppliedID: a registration id applied in another pool does not
// matter (ids are per pool); reused in its own pool for another request it is refused
// with id_reused, never answered "internal".
func TestRegisterWithAnAppliedID(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	_, c := connect(t, ns.URL())
	reg := func(pool string, target int) error {
		_, err := c.RegisterSealed(ctx(t), pool, natsbus.RegisterRequest{ID: "reg-x", Identity: pool, CipherSuite: 1, Policy: events.Policy{Target: new(target), LowWatermark: new(1), HardCap: new(8)}})
		return err
	}
	if err := reg("alice", 3); err != nil {
		t.Fatal(err)
	}
	if err := reg("bob", 3); err != nil {
		t.Fatalf("bob's registration with alice's id: %v", err)
	}
	if _, ok, _ := w.Store().Pool("bob"); !ok {
		t.Fatal("bob not created")
	}
	if err := reg("alice", 3); err != nil {
		t.Fatalf("the same registration again (a retry): %v", err)
	}
	if code := apiCode(t, reg("alice", 4)); code != pool.CodeIDReused {
		t.Fatalf("another registration with the same id: %s, want id_reused", code)
	}
	if got := poolRecord(t, w, "alice").Config.Target; got != 3 {
		t.Fatalf("refused registration changed the target to %d", got)
	}
}

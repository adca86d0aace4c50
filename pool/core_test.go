package pool

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

func registerEvent(h *harness, pool string, pol events.Policy) events.Event {
	in := h.event(events.TypePoolRegistered, pool)
	in.Register = &events.Register{Identity: "alice", CipherSuite: 1, SignatureKey: []byte("sig"), Policy: pol}
	return in
}

func mustStep(t *testing.T, h *harness, in events.Event) Ready {
	t.Helper()
	r, err := h.step(in)
	if err != nil {
		t.Fatalf("Step(%s %s): %v", in.ID, in.Type, err)
	}
	return r
}

func TestDuplicateChangesNothing(t *testing.T) {
	h := newHarness(t)
	in := registerEvent(h, "p1", events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)})
	first := mustStep(t, h, in)
	before := snapshot(h.store)
	r, err := h.core.Step(h.store, in)
	if err != nil || !r.Duplicate || r.Seq != 0 || len(r.Pools)+len(r.Outbox)+len(r.Generate) != 0 {
		t.Fatalf("duplicate: %+v, %v", r, err)
	}
	h.store.Apply(r)
	if snapshot(h.store) != before || first.Seq != 1 {
		t.Fatal("a duplicate changed the store")
	}
}

func TestInvalidTransitionIsTyped(t *testing.T) {
	h := newHarness(t)
	mustStep(t, h, registerEvent(h, "p1", events.Policy{Target: new(1), LowWatermark: new(1), HardCap: new(3)}))
	g := h.generated("p1", false, 0)
	mustStep(t, h, g)
	before := snapshot(h.store)
	in := h.event(events.TypeClaimed, "p1")
	in.Ref = g.Generated.Ref
	_, err := h.step(in)
	var re *RejectError
	var te *fsm.TransitionError
	if !errors.As(err, &re) || !errors.As(err, &te) || !errors.Is(err, ErrRejected) || !errors.Is(err, fsm.ErrInvalidTransition) {
		t.Fatalf("err = %v; want a RejectError wrapping a TransitionError", err)
	}
	if re.Code != CodeInvalidTransition || re.Pool != "p1" || re.Ref != g.Generated.Ref || re.EventID != in.ID {
		t.Fatalf("RejectError = %+v", re)
	}
	if te.State != fsm.Created || te.Event != fsm.Claim || te.Ref != g.Generated.Ref {
		t.Fatalf("TransitionError = %+v", te)
	}
	if snapshot(h.store) != before {
		t.Fatal("a rejected input changed the store")
	}
}

func TestConfigPrecedence(t *testing.T) {
	defaults := DefaultConfig()
	defaults.Target, defaults.LowWatermark, defaults.UploadTimeout = 50, 10, time.Minute
	c := &Core{Defaults: defaults}
	got := c.Effective(events.Policy{LowWatermark: new(0), ExpiryMargin: new(events.Duration(48 * time.Hour))})
	want := defaults
	want.LowWatermark, want.ExpiryMargin = 0, 48*time.Hour
	if got != want {
		t.Fatalf("Effective = %+v\nwant %+v", got, want)
	}
	if got := (&Core{}).Effective(events.Policy{}); got != DefaultConfig() {
		t.Fatalf("a Core without defaults: Effective = %+v, want DefaultConfig()", got)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	bad := DefaultConfig()
	bad.LowWatermark, bad.HardCap = 150, 50
	var ce *ConfigError
	if err := bad.Validate(); !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Fatalf("Validate = %v; want two problems", err)
	}
}

func TestClockIsLargestEventTime(t *testing.T) {
	h := newHarness(t)
	r := mustStep(t, h, registerEvent(h, "p1", events.Policy{Target: new(1), LowWatermark: new(1), HardCap: new(3)}))
	if !r.Meta.Time.Equal(start) || r.Seq != 1 || r.Meta.Seq != 1 {
		t.Fatalf("meta %+v", r.Meta)
	}
	in := h.event(events.TypeExpiryTick, "")
	in.Time = start.Add(-time.Hour)
	if r := mustStep(t, h, in); !r.Meta.Time.Equal(start) || r.Seq != 2 {
		t.Fatalf("an old event moved the clock: %+v", r.Meta)
	}
	in = h.event(events.TypeExpiryTick, "")
	in.Time = start.Add(time.Hour).In(time.FixedZone("X", 3600))
	if r := mustStep(t, h, in); !r.Meta.Time.Equal(start.Add(time.Hour)) || r.Meta.Time.Location() != time.UTC {
		t.Fatalf("clock %v", r.Meta.Time)
	}
}

func TestStatusHasExplicitZeros(t *testing.T) {
	h := newHarness(t)
	r := mustStep(t, h, registerEvent(h, "p1", events.Policy{Target: new(1), LowWatermark: new(1), HardCap: new(3)}))
	var body string
	for _, o := range r.Outbox {
		if o.Kind == events.KindStatus {
			body = string(o.Body)
		}
	}
	for _, want := range []string{`"created":0`, `"available":0`, `"claimed":0`, `"expired":0`, `"deleted":0`, `"available_fresh":0`, `"seq":1`, `"health":"depleted"`, `"last_resort_ref":""`, `"next_expiry":null`} {
		if !strings.Contains(body, want) {
			t.Errorf("status %s lacks %s", body, want)
		}
	}
}

// A View that fails must surface as a plain error (not a rejection) with nothing written.
type failingView struct{ *MemStore }

var errDisk = errors.New("disk on fire")

func (f failingView) KeyPackage(string) (KeyPackage, bool, error) {
	return KeyPackage{}, false, errDisk
}

func TestViewErrorsPropagate(t *testing.T) {
	h := newHarness(t)
	mustStep(t, h, registerEvent(h, "p1", events.Policy{Target: new(1), LowWatermark: new(1), HardCap: new(3)}))
	in := h.event(events.TypeUploadAck, "p1")
	in.Ref = refOf("x")
	_, err := h.core.Step(failingView{h.store}, in)
	if !errors.Is(err, errDisk) || errors.Is(err, ErrRejected) {
		t.Fatalf("err = %v; want the view's error, not a rejection", err)
	}
}

// Every outbox body of a replenish on a used pool is JSON naming the pool. (That no
// private key reaches a body holds by construction: the core never sees one.)
func TestOutboxBodiesDecode(t *testing.T) {
	h := newHarness(t)
	for _, line := range []string{"register target=2 low=1 cap=4", "generate n=all", "ack ref=all", "claim ref=lr1", "tick +80d"} {
		h.run(line)
	}
	in := h.event(events.TypeReplenish, "p1")
	r := mustStep(t, h, in)
	for _, o := range r.Outbox {
		var v map[string]any
		if err := json.Unmarshal(o.Body, &v); err != nil || v["pool"] != "p1" {
			t.Fatalf("%s body %s: %v", o.Kind, o.Body, err)
		}
	}
}

func TestCheckPoolCatchesBadCounters(t *testing.T) {
	h := newHarness(t)
	h.run("register target=2 low=1 cap=4")
	h.run("generate n=all")
	if err := CheckInvariants(h.store); err != nil {
		t.Fatal(err)
	}
	p := h.store.pools["p1"]
	p.Counts.Created++
	h.store.pools["p1"] = p
	if err := CheckInvariants(h.store); !errors.Is(err, ErrInvariant) {
		t.Fatalf("CheckInvariants = %v; want a counter violation", err)
	}
}

func TestRefusedTransition(t *testing.T) {
	h := newHarness(t)
	h.run("register target=1 low=1 cap=3")
	h.run("generate n=all")
	in := h.event(events.TypeConsumed, "p1")
	in.Ref = refOf("k1")
	_, err := h.step(in)
	tr, ok := RefusedTransition(in, err, start)
	if !ok || tr.From != "created" || tr.To != "created" || tr.Event != "consumed" || tr.Ref != in.Ref || tr.EventID != in.ID || tr.Error == "" {
		t.Fatalf("RefusedTransition = %+v, %v", tr, ok)
	}
	if _, ok := RefusedTransition(in, errDisk, start); ok {
		t.Fatal("a non-transition error made a transition record")
	}
}

func TestCheckReadyCatchesViolations(t *testing.T) {
	h := newHarness(t)
	h.run("register target=1 low=1 cap=3")
	h.run("generate n=all")
	h.run("consume ref=k1") // invalid: created
	h.run("reject ref=k1 reason=x")
	k, _, _ := h.store.KeyPackage(refOf("k1"))
	meta, _ := h.store.Meta()
	revived := k
	revived.State = fsm.Available
	r := Ready{Seq: meta.Seq + 1, Meta: Meta{Seq: meta.Seq + 1, Time: meta.Time}, KeyPackages: []KeyPackage{revived}}
	if err := CheckReady(h.store, r); !errors.Is(err, ErrInvariant) || !strings.Contains(err.Error(), "left deleted") {
		t.Fatalf("CheckReady(revive) = %v", err)
	}
	p, _, _ := h.store.Pool("p1")
	p.StatusSeq--
	r = Ready{Seq: meta.Seq + 1, Meta: Meta{Seq: meta.Seq + 1, Time: meta.Time}, Pools: []Pool{p}}
	if err := CheckReady(h.store, r); !errors.Is(err, ErrInvariant) || !strings.Contains(err.Error(), "went back") {
		t.Fatalf("CheckReady(status back) = %v", err)
	}
	r = Ready{Seq: meta.Seq + 1, Meta: Meta{Seq: meta.Seq + 1, Time: meta.Time.Add(-time.Second)}}
	if err := CheckReady(h.store, r); !errors.Is(err, ErrInvariant) {
		t.Fatalf("CheckReady(time back) = %v", err)
	}
}

// TestRegisterAgainChangesOnlyGivenFields: a later register changes only the policy
// fields it gives; a field given as 0 is 0, not "the default".
func TestRegisterAgainChangesOnlyGivenFields(t *testing.T) {
	h := newHarness(t)
	mustStep(t, h, registerEvent(h, "p1", events.Policy{Target: new(10), LowWatermark: new(4), HardCap: new(30),
		DeleteGrace: new(events.Duration(time.Hour))}))
	first := h.store.pools["p1"].Config
	if first.Target != 10 || first.LowWatermark != 4 || first.HardCap != 30 || first.DeleteGrace != time.Hour {
		t.Fatalf("after the first register: %+v", first)
	}
	mustStep(t, h, registerEvent(h, "p1", events.Policy{}))
	if got := h.store.pools["p1"].Config; got != first {
		t.Fatalf("a register without policy changed the config:\n%+v\nwas\n%+v", got, first)
	}
	mustStep(t, h, registerEvent(h, "p1", events.Policy{LowWatermark: new(0)}))
	got := h.store.pools["p1"].Config
	want := first
	want.LowWatermark = 0
	if got != want {
		t.Fatalf("low_watermark 0:\n%+v\nwant\n%+v", got, want)
	}
	if names := Changed(first, got); len(names) != 1 || names[0] != "low_watermark" {
		t.Fatalf("Changed = %v, want [low_watermark]", names)
	}
	p := h.store.pools["p1"].Policy
	if p.Target == nil || *p.Target != 10 || p.LowWatermark == nil || *p.LowWatermark != 0 || p.Lifetime != nil {
		t.Fatalf("stored policy %+v: want the given fields merged, the others absent", p)
	}
	// a refused update changes nothing
	before := snapshot(h.store)
	if _, err := h.step(registerEvent(h, "p1", events.Policy{HardCap: new(5)})); err == nil {
		t.Fatal("hard_cap below target accepted")
	}
	if snapshot(h.store) != before {
		t.Fatal("a refused register changed the store")
	}
}

package pool

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

func clientPolicy() events.Policy {
	return events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6), LastResort: new(false)}
}

func registerClient(t *testing.T, h *harness, pool string) Ready {
	t.Helper()
	in := registerEvent(h, pool, clientPolicy())
	in.Register.Custody = events.CustodyClient
	return mustStep(t, h, in)
}

// submitted is what the worker hands the core after validating a client's KeyPackage.
func (h *harness) submitted(pool string) events.Event {
	g := h.generated(pool, false, 0)
	in := h.event(events.TypeSubmitted, pool)
	in.KeyPackage, in.Generated = g.Generated.KeyPackage, g.Generated
	return in
}

// outbound returns the bodies of r's messages of kind k.
func outbound[T any](t *testing.T, r Ready, k events.Kind) []T {
	t.Helper()
	var out []T
	for _, o := range r.Outbox {
		if o.Kind != k {
			continue
		}
		var v T
		if err := json.Unmarshal(o.Body, &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var re *RejectError
	if !errors.As(err, &re) || re.Code != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
}

func TestClientPoolAsksItsClientAndRecordsSubmissions(t *testing.T) {
	h := newHarness(t)
	r := registerClient(t, h, "c1")
	if len(r.Generate) != 0 {
		t.Fatalf("a client pool asked the generator: %+v", r.Generate)
	}
	asks := outbound[events.ClientGenerate](t, r, events.KindClientGenerate)
	if len(asks) != 1 || asks[0].Count != 3 || asks[0].CipherSuite != 1 || asks[0].RequestID == "" ||
		asks[0].MaxNotAfter != h.clock.Add(DefaultConfig().MaxLifetime).Unix() {
		t.Fatalf("asks = %+v, want one for 3", asks)
	}
	var refs []string
	for i := range 3 {
		in := h.submitted("c1")
		r := mustStep(t, h, in)
		refs = append(refs, in.Generated.Ref)
		if len(outbound[events.Upload](t, r, events.KindUpload)) != 1 {
			t.Fatalf("submission %d not uploaded", i)
		}
		asks := outbound[events.ClientGenerate](t, r, events.KindClientGenerate)
		if i == 2 && (len(asks) != 1 || asks[0].Count != 0) {
			t.Fatalf("last submission: asks %+v, want one saying 0", asks)
		}
	}
	// more than asked
	before := records(h.store)
	_, err := h.step(h.submitted("c1"))
	wantCode(t, err, CodeOverCap)
	// the same KeyPackage again changes nothing but the dedup id
	again := h.event(events.TypeSubmitted, "c1")
	again.Generated = h.store.kps[refs[0]].generatedForTest()
	if r, err := h.step(again); err != nil || len(r.Outbox) != 0 || records(h.store) != before {
		t.Fatalf("resubmission: %+v, %v", r, err)
	}
	// last_resort when not asked; a `generated` input for a client pool
	lr := h.generated("c1", true, 0)
	sub := h.event(events.TypeSubmitted, "c1")
	sub.Generated = lr.Generated
	_, err = h.step(sub)
	wantCode(t, err, CodeNotAsked)
	_, err = h.step(h.generated("c1", false, 0))
	wantCode(t, err, CodeCustody)
	if got := h.store.pools["c1"].Counts.Created; got != 3 {
		t.Fatalf("created %d, want 3", got)
	}
}

func TestClientPoolDeleteInstructionsAndConfirmation(t *testing.T) {
	h := newHarness(t)
	registerClient(t, h, "c1")
	in := h.submitted("c1")
	mustStep(t, h, in)
	ref := in.Generated.Ref
	ack := h.event(events.TypeUploadAck, "c1")
	ack.Ref = ref
	mustStep(t, h, ack)
	con := h.event(events.TypeConsumed, "c1")
	con.Ref = ref
	r := mustStep(t, h, con)
	dels := outbound[events.ClientDelete](t, r, events.KindClientDelete)
	if len(dels) != 1 || !slices.Equal(dels[0].Refs, []string{ref}) {
		t.Fatalf("delete instructions %+v", dels)
	}
	if len(r.Erase) != 0 {
		t.Fatalf("erase ordered for a client KeyPackage: %v", r.Erase)
	}
	st := outbound[events.Status](t, r, events.KindStatus)
	if len(st) != 1 || st[0].DeletePending != 1 || st[0].Custody != events.CustodyClient {
		t.Fatalf("status %+v", st)
	}
	// unconfirmed: re-sent on a backoff, alerted after a day, never more often
	sends, alerts := 1, 0
	deletedAt := h.clock
	var alertAt time.Time
	for range 36 * 60 / 5 { // 36h in 5-minute ticks
		h.clock = h.clock.Add(5 * time.Minute)
		r := mustStep(t, h, h.event(events.TypeExpiryTick, ""))
		sends += len(outbound[events.ClientDelete](t, r, events.KindClientDelete))
		for _, a := range outbound[events.Alert](t, r, events.KindAlert) {
			if a.Kind == events.AlertDeleteUnconfirmed {
				alerts++
				alertAt = a.Time
			}
		}
	}
	if want := deletedAt.Add(24 * time.Hour); !alertAt.Equal(want) { // delete_alert_after's default, on a tick boundary
		t.Fatalf("delete_unconfirmed alert at %s, want %s", alertAt, want)
	}
	// backoff 5m, 10m, 20m, …, capped at 24h: 5+10+20+…+640m ≈ 21h, then 24h: 10 sends in 36h
	if sends < 5 || sends > 12 || alerts != 1 {
		t.Fatalf("%d delete instructions and %d alerts in 36h", sends, alerts)
	}
	d := h.event(events.TypeDeleted, "c1")
	d.Refs = []string{ref}
	r = mustStep(t, h, d)
	if k := h.store.kps[ref]; k.DeletePending || h.store.pools["c1"].DeletePending != 0 {
		t.Fatalf("after confirmation: %+v", k)
	}
	if st := outbound[events.Status](t, r, events.KindStatus); len(st) != 1 || st[0].DeletePending != 0 {
		t.Fatalf("status after confirmation %+v", st)
	}
}

func TestClientOfflineIsAskedOnABackoff(t *testing.T) {
	h := newHarness(t)
	registerClient(t, h, "c1")
	asks := 0
	for range 7 * 24 * 60 / 5 { // a week of 5-minute ticks
		h.clock = h.clock.Add(5 * time.Minute)
		r := mustStep(t, h, h.event(events.TypeExpiryTick, ""))
		for _, a := range outbound[events.ClientGenerate](t, r, events.KindClientGenerate) {
			if a.Count != 3 {
				t.Fatalf("re-ask for %d, want the 3 outstanding", a.Count)
			}
			asks++
		}
	}
	// 5m·2^k up to 24h: about 10 asks the first day, then one a day
	if asks < 10 || asks > 20 {
		t.Fatalf("%d asks in a week, want a backoff (10–20)", asks)
	}
}

func TestClientInventoryReconcilesBothWays(t *testing.T) {
	h := newHarness(t)
	registerClient(t, h, "c1")
	var refs []string
	for range 3 {
		in := h.submitted("c1")
		mustStep(t, h, in)
		refs = append(refs, in.Generated.Ref)
	}
	ack := h.event(events.TypeUploadAck, "c1")
	ack.Ref = refs[1]
	mustStep(t, h, ack)
	stranger := h.ref("stranger")
	inv := h.event(events.TypeInventory, "c1")
	inv.Refs = []string{refs[0], stranger}
	r := mustStep(t, h, inv)
	dels := outbound[events.ClientDelete](t, r, events.KindClientDelete)
	if len(dels) != 1 || !slices.Equal(dels[0].Refs, []string{stranger}) {
		t.Fatalf("delete instructions %+v, want the stranger only", dels)
	}
	lost := 0
	for _, tr := range r.Transitions {
		if tr.Event == string(fsm.Lose) && tr.To == string(fsm.Deleted) {
			lost++
		}
	}
	if lost != 2 || len(outbound[events.Withdraw](t, r, events.KindWithdraw)) != 2 {
		t.Fatalf("transitions %+v", r.Transitions)
	}
	p := h.store.pools["c1"]
	if p.Counts.Created != 1 || p.DeletePending != 0 || h.store.kps[refs[1]].Reason != "lost: absent from the client's inventory" {
		t.Fatalf("pool after inventory %+v", p.Counts)
	}
	if asks := outbound[events.ClientGenerate](t, r, events.KindClientGenerate); len(asks) != 1 || asks[0].Count != 2 {
		t.Fatalf("refill after losses: %+v", asks)
	}
}

func TestCustodyCannotChange(t *testing.T) {
	h := newHarness(t)
	mustStep(t, h, registerEvent(h, "k1", clientPolicy()))
	in := registerEvent(h, "k1", events.Policy{})
	in.Register.Custody = events.CustodyClient
	_, err := h.step(in)
	wantCode(t, err, CodeConflict)
	registerClient(t, h, "c1")
	in = registerEvent(h, "c1", events.Policy{})
	in.Register.Custody = events.CustodyKpool
	_, err = h.step(in)
	wantCode(t, err, CodeConflict)
	in = registerEvent(h, "c1", events.Policy{Target: new(4)}) // custody not given: kept
	mustStep(t, h, in)
	sub := h.submitted("k1")
	_, err = h.step(sub)
	wantCode(t, err, CodeCustody)
}

func (k KeyPackage) generatedForTest() *events.Generated {
	return &events.Generated{Ref: k.Ref, KeyPackage: k.KeyPackage, NotBefore: k.NotBefore, NotAfter: k.NotAfter, LastResort: k.LastResort}
}

// records is the pools and KeyPackages of m as JSON.
func records(m *MemStore) string {
	b, _ := json.Marshal(struct {
		P map[string]Pool
		K map[string]KeyPackage
	}{m.pools, m.kps})
	return string(b)
}

func TestDeleteAlertAfterIsConfigurable(t *testing.T) {
	h := newHarness(t)
	pol := clientPolicy()
	pol.DeleteAlertAfter = new(events.Duration(2 * time.Hour))
	in := registerEvent(h, "c1", pol)
	in.Register.Custody = events.CustodyClient
	mustStep(t, h, in)
	sub := h.submitted("c1")
	mustStep(t, h, sub)
	rej := h.event(events.TypeUploadRejected, "c1")
	rej.Ref, rej.Reason = sub.Generated.Ref, "policy"
	r := mustStep(t, h, rej)
	if d := outbound[events.ClientDelete](t, r, events.KindClientDelete); len(d) != 1 {
		t.Fatalf("no delete instruction after upload_rejected: %+v", d)
	}
	deletedAt := h.clock
	for range 3 * 60 / 5 {
		h.clock = h.clock.Add(5 * time.Minute)
		r := mustStep(t, h, h.event(events.TypeExpiryTick, ""))
		for _, a := range outbound[events.Alert](t, r, events.KindAlert) {
			if a.Kind == events.AlertDeleteUnconfirmed {
				if want := deletedAt.Add(2 * time.Hour); !a.Time.Equal(want) {
					t.Fatalf("alert at %s, want %s", a.Time, want)
				}
				return
			}
		}
	}
	t.Fatal("no delete_unconfirmed alert within 3h for delete_alert_after 2h")
}

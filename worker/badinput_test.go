package worker_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/worker"
)

// TestBadMessages publishes one bad message per kind of mistake: each yields a dead letter
// with its specific code, nothing in the store changes, and the worker keeps consuming.
func TestBadMessages(t *testing.T) {
	tp := startTwoPools(t)
	w, clock, js, c, ds, dls := tp.w, tp.clock, tp.js, tp.c, tp.ds, tp.dls
	var refusedMu sync.Mutex
	var refused []events.Transition
	stopTr, err := c.SubscribeTransitions("alice", func(tr events.Transition) {
		if tr.Error != "" {
			refusedMu.Lock()
			refused = append(refused, tr)
			refusedMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stopTr()
	aliceRef := ds.refs("alice", false)[0]
	unknownRef := strings.Repeat("ab", 32)
	now := clock.Now()
	ev := func(typ events.Type, poolID, ref string) []byte {
		return mustJSON(events.Event{ID: natsbus.NewEventID(), Type: typ, Time: now, Pool: poolID, Ref: ref})
	}
	s := w.Subjects()
	gen := mustJSON(events.Event{ID: "forged", Type: events.TypeGenerated, Time: now, Pool: "alice",
		Generated: &events.Generated{Ref: unknownRef, KeyPackage: []byte{1}, NotBefore: 1, NotAfter: 2}})
	cases := []struct {
		name, subject string
		data          []byte
		code          string
	}{
		{"malformed JSON", s.Event("alice", events.TypeUploadAck), []byte(`{"id":"x","type":`), "malformed"},
		{"unknown field", s.Event("alice", events.TypeUploadAck), []byte(`{"id":"x","type":"upload_ack","time":"2030-01-01T00:00:00Z","pool":"alice","ref":"` + aliceRef + `","colour":"red"}`), "malformed"},
		{"unknown type", "kpool.events.alice.bogus", []byte(`{"id":"x","type":"bogus","time":"2030-01-01T00:00:00Z","pool":"alice"}`), "unknown_type"},
		{"type/subject mismatch", s.Event("alice", events.TypeClaimed), ev(events.TypeUploadAck, "alice", aliceRef), "subject_mismatch"},
		{"pool/subject mismatch", s.Event("bob", events.TypeUploadAck), ev(events.TypeUploadAck, "alice", aliceRef), "subject_mismatch"},
		{"missing ref", s.Event("alice", events.TypeUploadAck), ev(events.TypeUploadAck, "alice", ""), "invalid_field"},
		{"unknown pool", s.Event("carol", events.TypeUploadAck), ev(events.TypeUploadAck, "carol", aliceRef), "unknown_pool"},
		{"unknown ref", s.Event("alice", events.TypeUploadAck), ev(events.TypeUploadAck, "alice", unknownRef), "unknown_ref"},
		{"wrong pool for ref", s.Event("bob", events.TypeUploadAck), ev(events.TypeUploadAck, "bob", aliceRef), "wrong_pool"},
		{"oversized", s.Event("alice", events.TypeUploadAck), []byte(`{"id":"` + strings.Repeat("x", events.MaxEventSize) + `"}`), "too_large"},
		{"invalid transition", s.Event("alice", events.TypeClaimed), ev(events.TypeClaimed, "alice", aliceRef), "invalid_transition"},
		{"future time", s.Event("alice", events.TypeUploadAck), mustJSON(events.Event{ID: "future", Type: events.TypeUploadAck, Time: now.Add(time.Hour), Pool: "alice", Ref: aliceRef}), worker.CodeFutureTime},
		{"internal type from outside", s.Event("alice", events.TypeGenerated), gen, worker.CodeInternalType},
	}
	metaBefore, _ := w.Store().Meta()
	aliceBefore, bobBefore := poolRecord(t, w, "alice"), poolRecord(t, w, "bob")
	kpBefore, _, _ := w.Store().KeyPackage(aliceRef)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := js.Publish(context.Background(), tc.subject, tc.data); err != nil {
				t.Fatalf("publish: %v", err)
			}
			eventually(t, 10*time.Second, "dead letter", func() bool { return len(dls.list()) > i })
			d := dls.list()[i]
			if d.Code != tc.code || d.Subject != tc.subject || d.Reason == "" {
				t.Fatalf("dead letter %+v, want code %s on %s", d, tc.code, tc.subject)
			}
			if len(d.Data) > natsbus.MaxDeadLetterData+len("…") {
				t.Fatalf("dead letter carries %d bytes of payload", len(d.Data))
			}
		})
	}
	if got := len(dls.list()); got != len(cases) {
		t.Fatalf("%d dead letters for %d bad messages", got, len(cases))
	}
	// Nothing changed.
	metaAfter, _ := w.Store().Meta()
	kpAfter, _, _ := w.Store().KeyPackage(aliceRef)
	if metaAfter.Seq != metaBefore.Seq || !metaAfter.Time.Equal(metaBefore.Time) {
		t.Fatalf("meta changed: %+v → %+v", metaBefore, metaAfter)
	}
	if a, b := poolRecord(t, w, "alice"), poolRecord(t, w, "bob"); a.StatusSeq != aliceBefore.StatusSeq || a.Counts != aliceBefore.Counts || b.Counts != bobBefore.Counts {
		t.Fatal("pool records changed")
	}
	if kpAfter.State != kpBefore.State || !kpAfter.UpdatedAt.Equal(kpBefore.UpdatedAt) {
		t.Fatalf("KeyPackage changed: %s → %s", kpBefore.State, kpAfter.State)
	}
	// The refused transition is in the transition log too.
	eventually(t, 10*time.Second, "refused transition", func() bool {
		refusedMu.Lock()
		defer refusedMu.Unlock()
		return len(refused) == 1 && refused[0].Ref == aliceRef && refused[0].From == "created" && refused[0].Event == "claimed"
	})
	// The worker keeps consuming: a good event after all that is applied.
	if err := c.UploadAck(ctx(t), "alice", aliceRef); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "good event applied", func() bool {
		kp, _, _ := w.Store().KeyPackage(aliceRef)
		return kp.State == "available"
	})
	// Every message of the stream was applied or refused, and the position was recorded.
	stream, err := js.Stream(context.Background(), natsbus.StreamNames("kpool").Events)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "every input taken", func() bool {
		info, err := stream.Info(context.Background())
		seq, _ := w.Store().InputSeq()
		return err == nil && w.AppliedSeq() == info.State.LastSeq && seq == info.State.LastSeq
	})
}

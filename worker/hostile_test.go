package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestHostileInputs sends a table of hostile events and API calls — the ones an
// adversarial run found (case variants, duplicate keys, fields of other types, overflowing
// durations, invalid UTF-8, ids too long, reused ids, foreign internal types) and the
// classic ones — through a real worker on an embedded nats-server. Each gets its specific
// code (dead letter or API error), nothing in the store changes, and the worker keeps
// going: a good event afterwards is applied.
func TestHostileInputs(t *testing.T) {
	tp := startTwoPools(t)
	w, clock, nc, js, c, ds, dls := tp.w, tp.clock, tp.nc, tp.js, tp.c, tp.ds, tp.dls
	// an applied event whose id a hostile event reuses
	if _, err := c.Publish(ctx(t), events.Event{ID: "ops-1", Type: events.TypeReplenish, Pool: "alice", Time: clock.Now()}); err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(context.Background(), natsbus.StreamNames("kpool").Events)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "replenish applied", func() bool {
		info, err := stream.Info(context.Background())
		return err == nil && w.AppliedSeq() == info.State.LastSeq
	})

	aliceRef, bobRef := ds.refs("alice", false)[0], ds.refs("bob", false)[0]
	unknownRef := strings.Repeat("ab", 32)
	now := clock.Now().UTC().Format(time.RFC3339)
	s := w.Subjects()
	ackSubj := s.Event("alice", events.TypeUploadAck)
	ack := `"id":"h1","type":"upload_ack","time":"` + now + `","pool":"alice","ref":"` + aliceRef + `"`
	tick := `"id":"h2","type":"expiry_tick","time":"` + now + `"`
	ev := func(typ events.Type, poolID, ref string) []byte {
		return mustJSON(events.Event{ID: natsbus.NewEventID(), Type: typ, Time: clock.Now(), Pool: poolID, Ref: ref})
	}
	eventCases := []struct {
		name, subject, data, code string
	}{
		{"not JSON", ackSubj, `{"id":"x","type":`, "malformed"},
		{"JSON null", ackSubj, `null`, "malformed"},
		{"JSON array", ackSubj, `[{` + ack + `}]`, "malformed"},
		{"trailing data", ackSubj, `{` + ack + `}{}`, "malformed"},
		{"invalid UTF-8 id", ackSubj, `{` + strings.Replace(ack, `"h1"`, "\"h\xff1\"", 1) + `}`, "malformed"},
		{"upper-case ID", ackSubj, `{` + strings.Replace(ack, `"id"`, `"ID"`, 1) + `}`, "malformed"},
		{"upper-case TYPE", ackSubj, `{` + strings.Replace(ack, `"type"`, `"TYPE"`, 1) + `}`, "malformed"},
		{"case variant beside the field", ackSubj, `{` + ack + `,"Ref":"` + unknownRef + `"}`, "malformed"},
		{"duplicate id", ackSubj, `{` + ack + `,"id":"h1b"}`, "malformed"},
		{"duplicate ref", ackSubj, `{` + ack + `,"ref":"` + unknownRef + `"}`, "malformed"},
		{"unknown field", ackSubj, `{` + ack + `,"colour":"red"}`, "malformed"},
		{"nested 40 deep", ackSubj, `{` + ack + `,"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "malformed"},
		{"null id", ackSubj, `{` + strings.Replace(ack, `"h1"`, `null`, 1) + `}`, "invalid_field"},
		{"ref on a tick", s.Event("", events.TypeExpiryTick), `{` + tick + `,"ref":"` + aliceRef + `"}`, "invalid_field"},
		{"reason on an ack", ackSubj, `{` + ack + `,"reason":"x"}`, "invalid_field"},
		{"register on a replenish", s.Event("alice", events.TypeReplenish), `{"id":"h3","type":"replenish","time":"` + now + `","pool":"alice","register":{}}`, "invalid_field"},
		{"missing id", ackSubj, `{` + strings.Replace(ack, `"id":"h1",`, ``, 1) + `}`, "invalid_field"},
		{"id of 129 bytes", ackSubj, `{` + strings.Replace(ack, `"h1"`, `"`+strings.Repeat("i", 129)+`"`, 1) + `}`, "invalid_field"},
		{"missing time", ackSubj, `{"id":"h4","type":"upload_ack","pool":"alice","ref":"` + aliceRef + `"}`, "invalid_field"},
		{"upper-case hex ref", ackSubj, `{` + strings.Replace(ack, aliceRef, strings.ToUpper(aliceRef), 1) + `}`, "invalid_field"},
		{"ref of 31 bytes", ackSubj, `{` + strings.Replace(ack, aliceRef, aliceRef[:62], 1) + `}`, "invalid_field"},
		{"rejection without reason", s.Event("alice", events.TypeUploadRejected), `{"id":"h5","type":"upload_rejected","time":"` + now + `","pool":"alice","ref":"` + aliceRef + `"}`, "invalid_field"},
		{"pool token not a pool id", "kpool.events.al!ce.upload_ack", `{` + ack + `}`, "invalid_field"},
		{"pool differs from subject", s.Event("bob", events.TypeUploadAck), `{` + ack + `}`, "subject_mismatch"},
		{"type differs from subject", s.Event("alice", events.TypeClaimed), `{` + ack + `}`, "subject_mismatch"},
		{"unknown type", "kpool.events.alice.bogus", `{"id":"h6","type":"bogus","time":"` + now + `","pool":"alice"}`, "unknown_type"},
		{"oversized", ackSubj, `{"id":"` + strings.Repeat("x", events.MaxEventSize) + `"}`, "too_large"},
		{"generated from outside", s.Event("alice", events.TypeGenerated), string(mustJSON(events.Event{ID: "h7", Type: events.TypeGenerated, Time: clock.Now(), Pool: "alice",
			Generated: &events.Generated{Ref: unknownRef, KeyPackage: []byte{1}, NotBefore: 1, NotAfter: 2}})), worker.CodeInternalType},
		{"pool_registered from outside", s.Event("alice", events.TypePoolRegistered), string(mustJSON(events.Event{ID: "h8", Type: events.TypePoolRegistered, Time: clock.Now(), Pool: "alice",
			Register: &events.Register{Identity: "mallory", CipherSuite: 1, SignatureKey: []byte{1}}})), worker.CodeInternalType},
		{"time an hour ahead", ackSubj, string(mustJSON(events.Event{ID: "h9", Type: events.TypeUploadAck, Time: clock.Now().Add(time.Hour), Pool: "alice", Ref: aliceRef})), worker.CodeFutureTime},
		{"unknown pool", s.Event("carol", events.TypeUploadAck), string(ev(events.TypeUploadAck, "carol", aliceRef)), pool.CodeUnknownPool},
		{"unknown ref", ackSubj, string(ev(events.TypeUploadAck, "alice", unknownRef)), pool.CodeUnknownRef},
		{"another pool's ref", ackSubj, string(ev(events.TypeUploadAck, "alice", bobRef)), pool.CodeWrongPool},
		{"claim of a created KeyPackage", s.Event("alice", events.TypeClaimed), string(ev(events.TypeClaimed, "alice", aliceRef)), pool.CodeInvalidTransition},
		{"id reused for another event", ackSubj, string(mustJSON(events.Event{ID: "ops-1", Type: events.TypeUploadAck, Time: clock.Now(), Pool: "alice", Ref: aliceRef})), pool.CodeIDReused},
	}

	rk, err := natsbus.NewRecipientKey(1)
	if err != nil {
		t.Fatal(err)
	}
	rk2, _ := natsbus.NewRecipientKey(2)
	take := func(ref, extra string) string {
		b, _ := json.Marshal(map[string]any{"ref": ref, "recipient_key": rk.Public})
		return strings.TrimSuffix(string(b), "}") + extra + "}"
	}
	reg := natsbus.APISubject(s, natsbus.VerbRegister, "alice")
	takeAlice := natsbus.APISubject(s, natsbus.VerbTake, "alice")
	apiCases := []struct {
		name, subject, body, code string
	}{
		{"register: not JSON", reg, `{"identity":`, natsbus.CodeBadRequest},
		{"register: invalid UTF-8", reg, "{\"identity\":\"\xff\",\"cipher_suite\":1}", natsbus.CodeBadRequest},
		{"register: case variant", reg, `{"Identity":"alice","cipher_suite":1}`, natsbus.CodeBadRequest},
		{"register: duplicate key", reg, `{"identity":"alice","cipher_suite":1,"identity":"mallory"}`, natsbus.CodeBadRequest},
		{"register: unknown policy field", reg, `{"identity":"alice","cipher_suite":1,"policy":{"tagret":5}}`, natsbus.CodeBadRequest},
		{"register: null policy", reg, `{"identity":"alice","cipher_suite":1,"policy":null}`, "invalid_field"},
		{"register: lifetime 213504d overflows", reg, `{"identity":"alice","cipher_suite":1,"policy":{"lifetime":"213504d"}}`, "invalid_field"},
		{"register: duration as a number", reg, `{"identity":"alice","cipher_suite":1,"policy":{"delete_grace":3600}}`, "invalid_field"},
		{"register: id of 129 bytes", reg, `{"identity":"alice","cipher_suite":1,"id":"` + strings.Repeat("i", 129) + `"}`, "invalid_field"},
		{"register: pool token not a pool id", natsbus.APISubject(s, natsbus.VerbRegister, "al!ce"), `{"identity":"alice","cipher_suite":1}`, natsbus.CodeInvalidPoolID},
		{"register: another identity", reg, `{"identity":"mallory","cipher_suite":1}`, pool.CodeConflict},
		{"register: hard cap below what the pool holds", reg, `{"identity":"alice","cipher_suite":1,"policy":{"target":1,"low_watermark":0,"hard_cap":2}}`, pool.CodeInvalidConfig},
		{"register: target over the limit", reg, `{"identity":"alice","cipher_suite":1,"policy":{"target":100001}}`, pool.CodeInvalidConfig},
		{"replenish: unknown field", natsbus.APISubject(s, natsbus.VerbReplenish, "alice"), `{"idd":"x"}`, natsbus.CodeBadRequest},
		{"replenish: unknown pool", natsbus.APISubject(s, natsbus.VerbReplenish, "carol"), ``, pool.CodeUnknownPool},
		{"status: unknown pool", natsbus.APISubject(s, natsbus.VerbStatus, "carol"), ``, pool.CodeUnknownPool},
		{"get: bad ref", natsbus.APISubject(s, natsbus.VerbGet, "alice"), `{"ref":"zz"}`, "invalid_field"},
		{"take: id of 129 bytes", takeAlice, take(aliceRef, `,"id":"`+strings.Repeat("i", 129)+`"`), "invalid_field"},
		{"take: id reused", takeAlice, take(aliceRef, `,"id":"ops-1"`), pool.CodeIDReused},
		{"take: unknown ref", takeAlice, take(unknownRef, ""), pool.CodeUnknownRef},
		{"take: another pool's ref", takeAlice, take(bobRef, ""), pool.CodeWrongPool},
		{"take: a created KeyPackage", takeAlice, take(aliceRef, ""), pool.CodeInvalidTransition},
		{"take: recipient key of another suite", takeAlice, `{"ref":"` + aliceRef + `","recipient_key":"` + b64(rk2.Public) + `"}`, natsbus.CodeInvalidRecipient},
		{"take: suite differs from the pool's", takeAlice, take(aliceRef, `,"cipher_suite":2`), natsbus.CodeInvalidRecipient},
		{"take: null recipient key", takeAlice, `{"ref":"` + aliceRef + `","recipient_key":null}`, "invalid_field"},
		{"take: oversized body", takeAlice, `{"ref":"` + strings.Repeat("a", events.MaxEventSize) + `"}`, natsbus.CodeBadRequest},
	}
	if n := len(eventCases) + len(apiCases); n < 40 {
		t.Fatalf("only %d hostile inputs", n)
	}

	before := storeSnapshot(t, w)
	for i, tc := range eventCases {
		t.Run("event/"+tc.name, func(t *testing.T) {
			if _, err := js.Publish(context.Background(), tc.subject, []byte(tc.data)); err != nil {
				t.Fatalf("publish: %v", err)
			}
			eventually(t, 10*time.Second, "dead letter", func() bool { return len(dls.list()) > i })
			d := dls.list()[i]
			if d.Code != tc.code || d.Subject != tc.subject || d.Reason == "" {
				t.Fatalf("dead letter %+v, want code %s on %s", d, tc.code, tc.subject)
			}
		})
	}
	for _, tc := range apiCases {
		t.Run("api/"+tc.name, func(t *testing.T) {
			msg, err := nc.Request(tc.subject, []byte(tc.body), 10*time.Second)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			code, desc := msg.Header.Get(natsbusErrCode), msg.Header.Get(natsbusErrDesc)
			if code != tc.code || desc == "" || len(msg.Data) != 0 {
				t.Fatalf("answer %q (%s: %s), want error code %s", msg.Data, code, desc, tc.code)
			}
		})
	}
	// API calls that reached the writer are refused there and reported like any input;
	// those refused before (bad body, bad key, unknown ref) leave no dead letter.
	for _, d := range dls.list()[len(eventCases):] {
		if !s.IsInput(d.Subject) {
			t.Errorf("dead letter %+v beyond the hostile events", d)
		}
	}
	if after := storeSnapshot(t, w); after != before {
		t.Fatalf("hostile inputs changed the store:\nbefore %s\nafter  %s", before, after)
	}
	// The worker keeps going: a good event is applied, a good take answers.
	if err := c.UploadAck(ctx(t), "alice", aliceRef); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "good event applied", func() bool {
		kp, _, _ := w.Store().KeyPackage(aliceRef)
		return kp.State == "available"
	})
	if _, err := c.TakeWith(ctx(t), "alice", aliceRef, rk); err != nil {
		t.Fatalf("a good take after the hostile ones: %v", err)
	}
}

// twoPools is a worker with pools alice and bob, each filled with 10 created KeyPackages
// that no delivery service acknowledges, and a collector of dead letters.
type twoPools struct {
	w     *worker.Worker
	clock *testClock
	nc    *nats.Conn
	js    jetstream.JetStream
	c     *natsbus.Client
	ds    *deliveryService
	dls   *deadLetters
}

func startTwoPools(t *testing.T) *twoPools {
	t.Helper()
	ns := startNATS(t)
	tp := &twoPools{clock: newClock()}
	tp.w = startWorker(t, ns.URL(), t.TempDir(), tp.clock)
	tp.nc, tp.c = connect(t, ns.URL())
	tp.js, _ = jetstream.New(tp.nc)
	tp.ds = startDS(t, tp.c, false) // no acks: KeyPackages stay created
	tp.dls = collectDeadLetters(t, tp.c)
	for _, p := range []string{"alice", "bob"} {
		if _, err := tp.c.Register(ctx(t), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1}, nil); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "uploads", func() bool { return len(tp.ds.refs("alice", false)) == 10 && len(tp.ds.refs("bob", false)) == 10 })
	eventually(t, 10*time.Second, "generation done", func() bool {
		return poolRecord(t, tp.w, "alice").Requested == 0 && poolRecord(t, tp.w, "bob").Requested == 0
	})
	return tp
}

const (
	natsbusErrCode = "Nats-Service-Error-Code"
	natsbusErrDesc = "Nats-Service-Error"
)

func b64(b []byte) string {
	s, _ := json.Marshal(b)
	return strings.Trim(string(s), `"`)
}

// storeSnapshot is everything a refused input must not change: the applied meta, every
// pool record and every KeyPackage record with whether its private keys are stored.
func storeSnapshot(t *testing.T, w *worker.Worker) string {
	t.Helper()
	st := w.Store()
	m, err := st.Meta()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "meta %s\n", mustJSON(m))
	pools, err := st.Pools()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		fmt.Fprintf(&b, "pool %s\n", mustJSON(p))
		err := st.KeyPackages(p.ID, func(kp pool.KeyPackage) bool {
			keys, _ := st.HasSecret(kp.Ref)
			fmt.Fprintf(&b, "kp %s keys=%v\n", mustJSON(kp), keys)
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

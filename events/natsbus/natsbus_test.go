package natsbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestNames(t *testing.T) {
	if got := natsbus.StreamNames("acme.kpool"); got.Events != "ACME_KPOOL_EVENTS" || got.Status != "ACME_KPOOL_STATUS" || got.Outbound != "ACME_KPOOL_OUTBOUND" {
		t.Fatalf("stream names %+v", got)
	}
	s := events.Subjects{Prefix: "kpool"}
	if got := natsbus.APISubject(s, natsbus.VerbTake, "alice"); got != "kpool.api.keypackage.take.alice" {
		t.Fatal(got)
	}
	if got := natsbus.APISubject(s, natsbus.VerbList, ""); got != "kpool.api.pool.list" {
		t.Fatal(got)
	}
	if got := natsbus.PoolFromAPISubject("kpool.api.pool.status.bob"); got != "bob" {
		t.Fatal(got)
	}
}

func TestRecipientKeyEverySuite(t *testing.T) {
	for _, suite := range mls.AllSuites {
		k, err := natsbus.NewRecipientKey(uint16(suite))
		if err != nil {
			t.Fatalf("suite %d: %v", suite, err)
		}
		enc, ct, err := mls.SealTo(suite, k.Public, []byte("info"), []byte("secret"), nil)
		if err != nil {
			t.Fatalf("suite %d seal: %v", suite, err)
		}
		pt, err := k.Open(natsbus.Sealed{Enc: enc, Ciphertext: ct}, []byte("info"))
		if err != nil || string(pt) != "secret" {
			t.Fatalf("suite %d open: %q %v", suite, pt, err)
		}
		if _, err := k.Open(natsbus.Sealed{Enc: enc, Ciphertext: ct}, []byte("other info")); !errors.Is(err, mls.ErrDecrypt) {
			t.Fatalf("suite %d: opened with the wrong info: %v", suite, err)
		}
	}
	if _, err := natsbus.NewRecipientKey(8); !errors.Is(err, mls.ErrUnknownCipherSuite) {
		t.Fatalf("suite 8: %v", err)
	}
}

// bus starts a bare NATS server with kpool's streams and no worker.
func bus(t *testing.T) (*nats.Conn, jetstream.JetStream, *natsbus.Client) {
	t.Helper()
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	s := events.Subjects{Prefix: "kpool"}
	for range 2 { // idempotent
		if err := natsbus.EnsureStreams(context.Background(), js, s, natsbus.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := natsbus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, c
}

func TestPublishValidatesAndDeduplicates(t *testing.T) {
	_, js, c := bus(t)
	ctx := context.Background()
	if _, err := c.Publish(ctx, events.Event{Type: events.TypeGenerated, Pool: "a", Generated: &events.Generated{Ref: "00", KeyPackage: []byte{1}, NotAfter: 1}}); err == nil {
		t.Fatal("published an internal event type")
	}
	if err := c.UploadAck(ctx, "bad pool!", "00"); !errors.Is(err, events.ErrInvalidField) {
		t.Fatalf("bad pool id: %v", err)
	}
	ref := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for range 2 {
		if _, err := c.Publish(ctx, events.Event{ID: "same", Type: events.TypeClaimed, Pool: "a", Ref: ref}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ExpiryTick(ctx, "", time.Time{}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, natsbus.StreamNames("kpool").Events)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	if info.State.Msgs != 2 {
		t.Fatalf("events stream holds %d messages, want 2 (claimed once, tick)", info.State.Msgs)
	}
	m, err := st.GetLastMsgForSubject(ctx, "kpool.events.tick")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Decode(m.Data)
	if err != nil || ev.Time.IsZero() || ev.ID == "" {
		t.Fatalf("tick as published: %+v %v", ev, err)
	}
}

func TestStatusKeepsLastValue(t *testing.T) {
	_, js, c := bus(t)
	ctx := context.Background()
	s := events.Subjects{Prefix: "kpool"}
	for seq := uint64(1); seq <= 3; seq++ {
		o := events.Outbound{ID: "st-" + string(rune('0'+seq)), Kind: events.KindStatus, Pool: "alice", Body: mustJSON(t, events.Status{Pool: "alice", Seq: seq})}
		if err := natsbus.PublishOutbound(ctx, js, s, o); err != nil {
			t.Fatal(err)
		}
		if err := natsbus.PublishOutbound(ctx, js, s, o); err != nil { // a re-send is deduplicated
			t.Fatal(err)
		}
	}
	st, found, err := c.LastStatus(ctx, "alice")
	if err != nil || !found || st.Seq != 3 {
		t.Fatalf("last status %+v %v %v", st, found, err)
	}
	if _, found, err := c.LastStatus(ctx, "bob"); err != nil || found {
		t.Fatalf("status of a pool that never published: found=%v err=%v", found, err)
	}
	got := make(chan events.Status, 8)
	stop, err := c.WatchStatus(ctx, "", func(st events.Status) { got <- st })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if first := <-got; first.Seq != 3 {
		t.Fatalf("a new watcher got seq %d first, want the current 3", first.Seq)
	}
	select {
	case extra := <-got:
		t.Fatalf("a new watcher got a stale status too: %+v", extra)
	case <-time.After(100 * time.Millisecond): // absence check: bounded, not a wait for an outcome
	}
}

func TestConsumeDeliveriesDropsGarbage(t *testing.T) {
	_, js, c := bus(t)
	ctx := context.Background()
	var mu sync.Mutex
	var got []events.Upload
	stop, err := c.ConsumeDeliveries(ctx, "ds", "", natsbus.DeliveryHandler{Upload: func(u events.Upload) error {
		mu.Lock()
		got = append(got, u)
		mu.Unlock()
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := js.Publish(ctx, "kpool.upload.alice", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "kpool.upload.alice", mustJSON(t, events.Upload{Pool: "alice", Ref: "r1"})); err != nil {
		t.Fatal(err)
	}
	cons, _ := js.Consumer(ctx, natsbus.StreamNames("kpool").Outbound, natsbus.DeliveryConsumer("ds", events.KindUpload))
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := cons.Info(ctx)
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if err == nil && n == 1 && info.NumAckPending == 0 && info.AckFloor.Stream == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("uploads %d, consumer %+v %v", n, info, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNoWorker(t *testing.T) {
	_, _, c := bus(t)
	if _, err := c.Status(context.Background(), "alice"); !errors.Is(err, natsbus.ErrNoWorker) {
		t.Fatalf("status without a worker: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEnsureStreamsKeepsOperatorSettings: an existing stream keeps its limits; missing
// subjects are added.
func TestEnsureStreamsKeepsOperatorSettings(t *testing.T) {
	_, js, _ := bus(t)
	ctx := context.Background()
	names := natsbus.StreamNames("kpool")
	st, _ := js.Stream(ctx, names.Outbound)
	cfg := st.CachedInfo().Config
	cfg.MaxAge = time.Hour
	cfg.Subjects = []string{"kpool.upload.>"}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := natsbus.EnsureStreams(ctx, js, events.Subjects{Prefix: "kpool"}, natsbus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	st, _ = js.Stream(ctx, names.Outbound)
	got := st.CachedInfo().Config
	if got.MaxAge != time.Hour || len(got.Subjects) != 5 || !slices.Contains(got.Subjects, "kpool.deadletter") {
		t.Fatalf("stream after EnsureStreams: max age %v subjects %v", got.MaxAge, got.Subjects)
	}
}

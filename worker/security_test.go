package worker_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// securityConfig is the nats-server configuration block of docs/security.md, as written.
func securityConfig(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	const fence = "```nats-server-config\n"
	_, rest, ok := strings.Cut(string(doc), fence)
	conf, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/security.md has no ```nats-server-config block")
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startSecureNATS starts an embedded nats-server with the configuration of
// docs/security.md and returns its client URL.
func startSecureNATS(t *testing.T) string {
	t.Helper()
	opts, err := server.ProcessConfigFile(securityConfig(t))
	if err != nil {
		t.Fatalf("the configuration of docs/security.md: %v", err)
	}
	opts.Host, opts.Port, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, t.TempDir(), true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return ns.ClientURL()
}

// role is one NATS user's connection; denied records the server's permission violations.
type role struct {
	name   string
	nc     *nats.Conn
	js     jetstream.JetStream
	c      *natsbus.Client
	mu     sync.Mutex
	denied []string
}

func dialRole(t *testing.T, url, user, password, inbox string) *role {
	t.Helper()
	r := &role{name: user}
	opts := []nats.Option{nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		r.mu.Lock()
		r.denied = append(r.denied, err.Error())
		r.mu.Unlock()
	})}
	if inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(inbox))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("%s: connect: %v", user, err)
	}
	t.Cleanup(nc.Close)
	r.nc = nc
	r.js, _ = jetstream.New(nc)
	if r.c, err = natsbus.NewClient(nc); err != nil {
		t.Fatal(err)
	}
	return r
}

// refused runs a forbidden action: it must fail (a plain publish or subscribe cannot:
// the server drops it) and the server must report a permissions violation naming subject.
func (r *role) refused(t *testing.T, what, subject string, act func(ctx context.Context) error) {
	t.Helper()
	cctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	plain := strings.HasPrefix(what, "subscribe") || strings.HasPrefix(what, "plain publish")
	if err := act(cctx); err == nil && !plain {
		t.Errorf("%s: %s was allowed", r.name, what)
		return
	}
	eventually(t, 5*time.Second, r.name+": permissions violation for "+subject, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, d := range r.denied {
			if strings.Contains(strings.ToLower(d), "permissions violation") && strings.Contains(d, subject) {
				return true
			}
		}
		return false
	})
}

// ackedUploads are the refs of the KeyPackages (not last resort) the delivery service
// acknowledged, per pool, in upload order.
type ackedUploads struct {
	mu   sync.Mutex
	refs map[string][]string
}

func (a *ackedUploads) ref(pool string, i int) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refs[pool][i]
}

// registerAndAck registers alice as client-alice (with rk) and bob as ops, and has
// ds-ab acknowledge both pools' uploads through its own durable consumers.
func registerAndAck(t *testing.T, alice, ops, ds *role, rk *natsbus.RecipientKey) *ackedUploads {
	t.Helper()
	if reg, err := alice.c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, rk); err != nil || reg.SignaturePrivateKey == nil {
		t.Fatalf("client-alice registers alice: %+v %v", reg, err)
	}
	if _, err := ops.c.Register(ctx(t), "bob", natsbus.RegisterRequest{Identity: "bob", CipherSuite: 1}, nil); err != nil {
		t.Fatalf("ops registers bob: %v", err)
	}
	acked := &ackedUploads{refs: map[string][]string{}}
	for _, p := range []string{"alice", "bob"} {
		stop, err := ds.c.ConsumeDeliveries(ctx(t), "ds-"+p, p, natsbus.DeliveryHandler{Upload: func(u events.Upload) error {
			if !u.LastResort {
				acked.mu.Lock()
				acked.refs[u.Pool] = append(acked.refs[u.Pool], u.Ref)
				acked.mu.Unlock()
			}
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return ds.c.UploadAck(cctx, u.Pool, u.Ref)
		}})
		if err != nil {
			t.Fatalf("ds-ab consumes %s's deliveries: %v", p, err)
		}
		t.Cleanup(stop)
	}
	return acked
}

// settled reports a pool with no generation requested and no upload waiting for its
// acknowledgement: nothing allowed changes it any more (bob's replenishment is acked
// asynchronously).
func settled(p pool.Pool) bool {
	return p.Requested == 0 && !p.LastResortRequested && p.Counts.Created == 0 && p.LastResortCounts.Created == 0
}

// TestSecurityConfig starts nats-server with exactly the configuration of
// docs/security.md, runs a worker as its `worker` user, and checks that every role can do
// what it needs and nothing it must not: no cross-pool publish, take, register or read
// of uploads, no dead letters outside operators, no take by operators.
func TestSecurityConfig(t *testing.T) {
	url := startSecureNATS(t)
	clock := newClock()
	w := startWorker(t, url, t.TempDir(), clock, func(c *worker.Config) {
		c.NATSOptions = []nats.Option{nats.UserInfo("worker", "worker-secret")}
	})
	ds := dialRole(t, url, "ds-ab", "ds-ab-secret", "_INBOX_ds_ab")
	alice := dialRole(t, url, "client-alice", "client-alice-secret", "_INBOX_client_alice")
	ops := dialRole(t, url, "ops", "ops-secret", "_INBOX_ops")

	// Allowed: the client registers its pool, operators register bob, the delivery
	// service consumes and acks both pools' uploads, the pools fill.
	rk, _ := natsbus.NewRecipientKey(1)
	acked := registerAndAck(t, alice, ops, ds, rk)
	eventually(t, 20*time.Second, "both pools full", func() bool {
		return poolRecord(t, w, "alice").Fresh == 10 && poolRecord(t, w, "bob").Fresh == 10
	})
	aliceRef, aliceRef2, bobRef := acked.ref("alice", 0), acked.ref("alice", 1), acked.ref("bob", 0)

	if st, err := alice.c.Status(ctx(t), "alice"); err != nil || st.Pool != "alice" {
		t.Fatalf("client-alice reads alice's status: %v", err)
	}
	if _, err := alice.c.Get(ctx(t), "alice", aliceRef); err != nil {
		t.Fatalf("client-alice reads a KeyPackage of alice: %v", err)
	}
	if _, err := alice.c.TakeWith(ctx(t), "alice", aliceRef, rk); err != nil {
		t.Fatalf("client-alice takes a KeyPackage of alice: %v", err)
	}
	if _, err := alice.c.Publish(ctx(t), events.Event{Type: events.TypeConsumed, Pool: "alice", Ref: aliceRef2}); err != nil {
		t.Fatalf("client-alice publishes consumed for alice: %v", err)
	}
	if err := ds.c.Claimed(ctx(t), "bob", bobRef); err != nil {
		t.Fatalf("ds-ab publishes claimed for bob: %v", err)
	}
	if pools, err := ops.c.List(ctx(t)); err != nil || len(pools) != 2 {
		t.Fatalf("ops lists the pools: %v %v", pools, err)
	}
	if _, err := ops.c.Replenish(ctx(t), "bob"); err != nil {
		t.Fatalf("ops replenishes bob: %v", err)
	}
	if _, err := ops.nc.Request("$SRV.PING.kpool", nil, 5*time.Second); err != nil {
		t.Fatalf("ops pings the service: %v", err)
	}
	var statusMu sync.Mutex
	watched := map[string]bool{}
	stopWatch, err := ops.c.WatchStatus(ctx(t), "", func(st events.Status) {
		statusMu.Lock()
		watched[st.Pool] = true
		statusMu.Unlock()
	})
	if err != nil {
		t.Fatalf("ops watches the status: %v", err)
	}
	defer stopWatch()
	eventually(t, 10*time.Second, "ops sees both statuses", func() bool {
		statusMu.Lock()
		defer statusMu.Unlock()
		return watched["alice"] && watched["bob"]
	})
	deadLetters := make(chan events.DeadLetter, 10)
	stopDL, err := ops.c.SubscribeDeadLetters(func(d events.DeadLetter) { deadLetters <- d })
	if err != nil {
		t.Fatal(err)
	}
	defer stopDL()
	if err := ops.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := ops.c.ReplenishEvent(ctx(t), "carol"); err != nil {
		t.Fatalf("ops publishes a replenish: %v", err)
	}
	select {
	case d := <-deadLetters:
		if d.Code != "unknown_pool" {
			t.Fatalf("ops reads dead letters: %+v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ops received no dead letter")
	}
	eventually(t, 10*time.Second, "allowed effects applied", func() bool {
		a, _, _ := w.Store().KeyPackage(aliceRef)
		a2, _, _ := w.Store().KeyPackage(aliceRef2)
		b, _, _ := w.Store().KeyPackage(bobRef)
		return a.State == "deleted" && a2.State == "deleted" && b.State == "claimed" && settled(poolRecord(t, w, "alice")) && settled(poolRecord(t, w, "bob"))
	})
	before := storeSnapshot(t, w)

	// Forbidden.
	bobRef2 := acked.ref("bob", 1)
	forbid := []struct {
		r       *role
		what    string
		subject string
		act     func(ctx context.Context) error
	}{
		{ds, "publish for a pool it does not serve", "kpool.events.carol.upload_ack", func(ctx context.Context) error { return ds.c.UploadAck(ctx, "carol", bobRef) }},
		{ds, "publish consumed", "kpool.events.bob.consumed", func(ctx context.Context) error {
			_, err := ds.c.Publish(ctx, events.Event{Type: events.TypeConsumed, Pool: "bob", Ref: bobRef2})
			return err
		}},
		{ds, "create a consumer for another pool", "$JS.API.CONSUMER.CREATE.KPOOL_OUTBOUND.ds-carol-upload.kpool.upload.carol", func(ctx context.Context) error {
			_, err := ds.c.ConsumeDeliveries(ctx, "ds-carol", "carol", natsbus.DeliveryHandler{})
			return err
		}},
		{ds, "re-filter its own consumer to another pool", "$JS.API.CONSUMER.CREATE.KPOOL_OUTBOUND.ds-alice-upload.kpool.upload.carol", func(ctx context.Context) error {
			_, err := ds.js.CreateOrUpdateConsumer(ctx, "KPOOL_OUTBOUND", jetstream.ConsumerConfig{Durable: "ds-alice-upload", FilterSubject: "kpool.upload.carol"})
			return err
		}},
		{ds, "create a consumer with two filters (uploads and dead letters)", "$JS.API.CONSUMER.CREATE.KPOOL_OUTBOUND.ds-any", func(ctx context.Context) error {
			_, err := ds.js.CreateOrUpdateConsumer(ctx, "KPOOL_OUTBOUND", jetstream.ConsumerConfig{Durable: "ds-any", FilterSubjects: []string{"kpool.upload.>", "kpool.deadletter"}})
			return err
		}},
		{ds, "subscribe to dead letters", "kpool.deadletter", func(context.Context) error {
			_, err := ds.nc.Subscribe("kpool.deadletter", func(*nats.Msg) {})
			return err
		}},
		{ds, "subscribe to another pool's uploads", "kpool.upload.carol", func(context.Context) error {
			_, err := ds.nc.Subscribe("kpool.upload.carol", func(*nats.Msg) {})
			return err
		}},
		{ds, "take", "kpool.api.keypackage.take.bob", func(ctx context.Context) error {
			_, err := ds.c.TakeWith(ctx, "bob", bobRef2, rk)
			return err
		}},
		{alice, "take another pool's KeyPackage", "kpool.api.keypackage.take.bob", func(ctx context.Context) error {
			_, err := alice.c.TakeWith(ctx, "bob", bobRef2, rk)
			return err
		}},
		{alice, "read another pool's KeyPackage", "kpool.api.keypackage.get.bob", func(ctx context.Context) error {
			_, err := alice.c.Get(ctx, "bob", bobRef2)
			return err
		}},
		{alice, "register another pool", "kpool.api.pool.register.bob", func(ctx context.Context) error {
			_, err := alice.c.Register(ctx, "bob", natsbus.RegisterRequest{Identity: "bob", CipherSuite: 1, Policy: events.Policy{Target: new(1), LowWatermark: new(0), HardCap: new(20)}}, nil)
			return err
		}},
		{alice, "publish consumed for another pool", "kpool.events.bob.consumed", func(ctx context.Context) error {
			_, err := alice.c.Publish(ctx, events.Event{Type: events.TypeConsumed, Pool: "bob", Ref: bobRef2})
			return err
		}},
		{alice, "publish a claim", "kpool.events.alice.claimed", func(ctx context.Context) error {
			return alice.c.Claimed(ctx, "alice", aliceRef2)
		}},
		{alice, "plain publish of a worker input", "kpool.inputs.alice.generated", func(context.Context) error {
			if err := alice.nc.Publish("kpool.inputs.alice.generated", []byte("{}")); err != nil {
				return err
			}
			return alice.nc.Flush()
		}},
		{alice, "subscribe to its pool's uploads", "kpool.upload.alice", func(context.Context) error {
			_, err := alice.nc.Subscribe("kpool.upload.alice", func(*nats.Msg) {})
			return err
		}},
		{alice, "subscribe to every reply", "_INBOX.>", func(context.Context) error {
			_, err := alice.nc.Subscribe("_INBOX.>", func(*nats.Msg) {})
			return err
		}},
		{ops, "take", "kpool.api.keypackage.take.bob", func(ctx context.Context) error {
			_, err := ops.c.TakeWith(ctx, "bob", bobRef2, rk)
			return err
		}},
		{ops, "publish an upload ack", "kpool.events.bob.upload_ack", func(ctx context.Context) error { return ops.c.UploadAck(ctx, "bob", bobRef2) }},
		{ops, "subscribe to uploads", "kpool.upload.>", func(context.Context) error {
			_, err := ops.nc.Subscribe("kpool.upload.>", func(*nats.Msg) {})
			return err
		}},
	}
	for _, f := range forbid {
		f.r.refused(t, f.what, f.subject, f.act)
	}
	// Nothing forbidden reached the worker.
	if after := storeSnapshot(t, w); after != before {
		t.Fatalf("a forbidden action changed the store:\nbefore %s\nafter  %s", before, after)
	}
}

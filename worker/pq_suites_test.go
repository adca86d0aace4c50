package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/kpooltest"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/replay"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
)

// pqEnc is the HPKE enc size of each PQ KEM: a take's sealed bundle of that size shows
// the bundle went to a post-quantum recipient key of the pool's own suite.
var pqEnc = map[mls.CipherSuite]int{77: 768, 78: 768, 79: 1088, 80: 1088, 81: 1568, 82: 1568,
	83: 1120, 84: 1120, 85: 1568, 86: 1568, 87: 1120, 88: 1120}

// TestPQSuitesEndToEnd runs a pool on every post-quantum suite through the worker's public
// API: register (the signature key comes back sealed to a PQ recipient key), fill to
// target, claims below the watermark and a refill, a take whose bundle is sealed with the
// suite's KEM and opens a Welcome-style message sealed to the init key, then expiry and
// deletion by ticks; the journal then replays to the same state.
func TestPQSuitesEndToEnd(t *testing.T) {
	for _, s := range mls.PQSuites {
		t.Run(s.String(), func(t *testing.T) {
			t.Parallel()
			runPQPool(t, s)
		})
	}
}

func runPQPool(t *testing.T, suite mls.CipherSuite) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// 92 days of ticks, then the journal is replayed from its start
	env := kpooltest.Start(t, kpooltest.Options{Deterministic: true, JournalRetention: worker.KeepJournal})
	c := env.Client
	const id = "pq"

	// The delivery service acknowledges every upload and remembers what it got.
	var mu sync.Mutex
	var uploads []events.Upload
	ackUploads(ctx, t, env, func(u events.Upload) {
		mu.Lock()
		uploads = append(uploads, u)
		mu.Unlock()
	})
	regular := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var refs []string
		for _, u := range uploads {
			if !u.LastResort && u.Attempt <= 1 {
				refs = append(refs, u.Ref)
			}
		}
		return refs
	}

	rk, err := natsbus.NewRecipientKey(uint16(suite))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.Register(ctx, id, natsbus.RegisterRequest{Identity: "pq@example.org", CipherSuite: uint16(suite),
		Policy: events.Policy{Target: new(3), LowWatermark: new(2), HardCap: new(8)}}, rk)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := mls.SignerFromPrivate(suite, reg.SignaturePrivateKey)
	if err != nil || !reg.Created || !bytes.Equal(signer.Public(), reg.SignatureKey) {
		t.Fatalf("register: created %v, opened signature key fits: %v", reg.Created, err)
	}

	if _, err := env.WaitStatus(ctx, id, func(st events.Status) bool {
		return st.AvailableFresh == 3 && st.LastResortRef != "" && st.Health == events.HealthHealthy
	}); err != nil {
		t.Fatalf("fill: %v", err)
	}
	mu.Lock()
	got := append([]events.Upload(nil), uploads...)
	mu.Unlock()
	if len(got) != 4 {
		t.Fatalf("%d uploads, want 3 + the last resort", len(got))
	}
	for _, u := range got {
		kp, err := mls.DecodeMLSMessage(u.KeyPackage)
		if err != nil {
			t.Fatal(err)
		}
		if kp.CipherSuite != suite || !bytes.Equal(kp.LeafNode.SignatureKey, reg.SignatureKey) {
			t.Fatalf("upload %s: suite %d", u.Ref, kp.CipherSuite)
		}
		if err := mls.Validate(kp, env.Clock.Now(), mls.DefaultPolicy()); err != nil {
			t.Fatalf("upload %s does not validate: %v", u.Ref, err)
		}
	}

	// Two claims leave one fresh KeyPackage, under the watermark of 2: it refills to 3.
	first := regular()
	for _, ref := range first[:2] {
		if err := c.Claimed(ctx, id, ref); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.WaitStatus(ctx, id, func(st events.Status) bool {
		return st.Counts.Claimed == 2 && st.AvailableFresh == 3
	}); err != nil {
		t.Fatalf("refill: %v", err)
	}

	// Take a claimed one with a recipient key of the pool's suite.
	ref := first[0]
	kpi, err := c.Get(ctx, id, ref)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := mls.DecodeMLSMessage(kpi.KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := natsbus.NewRecipientKey(uint16(suite))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := c.TakeSealed(ctx, id, natsbus.TakeRequest{Ref: ref, RecipientKey: tk.Public, CipherSuite: tk.Suite})
	if err != nil {
		t.Fatal(err)
	}
	if tr.CipherSuite != uint16(suite) || len(tr.Sealed.Enc) != pqEnc[suite] {
		t.Fatalf("take sealed with suite %d, enc of %d bytes; want suite %d, %d bytes", tr.CipherSuite, len(tr.Sealed.Enc), suite, pqEnc[suite])
	}
	raw, err := tk.Open(tr.Sealed, natsbus.SealInfoTake(id, ref))
	if err != nil {
		t.Fatal(err)
	}
	var bundle mls.PrivateBundle
	if err := bundle.UnmarshalBinary(raw); err != nil {
		t.Fatal(err)
	}
	if err := bundle.Check(kp); err != nil {
		t.Fatalf("bundle does not match the KeyPackage: %v", err)
	}
	kem, ct, err := mls.EncryptWithLabel(suite, kp.InitKey, "Welcome", []byte("group info"), []byte("group secrets"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := mls.DecryptWithLabel(suite, bundle.InitPriv, "Welcome", []byte("group info"), kem, ct); err != nil || string(pt) != "group secrets" {
		t.Fatalf("init key does not open the Welcome: %q %v", pt, err)
	}
	waitState(ctx, t, c, id, ref, fsm.Deleted)

	// Ticks: past not_after − margin the fresh ones expire, past not_after + grace they go.
	old := first[2]
	env.Clock.Advance(78 * 24 * time.Hour)
	if err := c.ExpiryTick(ctx, "", env.Clock.Now()); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, c, id, old, fsm.Expired)
	env.Clock.Advance(14 * 24 * time.Hour)
	if err := c.ExpiryTick(ctx, "", env.Clock.Now()); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, c, id, old, fsm.Deleted)

	// The journal — PQ KeyPackages in its generated inputs — exports as a log whose
	// replay rebuilds the stored state exactly. First the refill at the new time settles:
	// nothing left unacknowledged, so the delivery service sends no more input.
	if _, err := env.WaitStatus(ctx, id, func(st events.Status) bool {
		return st.AvailableFresh == 3 && st.Counts.Created == 0
	}); err != nil {
		t.Fatalf("refill after expiry: %v", err)
	}
	if err := env.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	diff, _, err := replay.Verify(ctx, env.Worker.Store(), &pool.Core{Defaults: pool.DefaultConfig()})
	if err != nil || len(diff) != 0 {
		t.Fatalf("replay of the journal: %v, differences %v", err, diff)
	}
}

// ackUploads plays the delivery service: it hands every upload request to seen (nil: no
// one) and acknowledges it, until the test ends.
func ackUploads(ctx context.Context, tb testing.TB, env *kpooltest.Env, seen func(events.Upload)) {
	sub, err := env.Conn.Subscribe(env.Worker.Subjects().Outbound(events.KindUpload, "*"), func(m *nats.Msg) {
		var u events.Upload
		if json.Unmarshal(m.Data, &u) != nil {
			return
		}
		if seen != nil {
			seen(u)
		}
		_ = env.Client.UploadAck(ctx, u.Pool, u.Ref)
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
}

// waitState polls a KeyPackage's state until it is want or ctx ends.
func waitState(ctx context.Context, t *testing.T, c *natsbus.Client, pool, ref string, want fsm.State) {
	t.Helper()
	var last string
	for ctx.Err() == nil {
		kpi, err := c.Get(ctx, pool, ref)
		if err == nil && kpi.State == string(want) {
			return
		}
		last = kpi.State
		time.Sleep(10 * time.Millisecond) // polling interval, not a wait for an outcome
	}
	t.Fatalf("KeyPackage %s: state %q, want %q (%v)", ref, last, want, ctx.Err())
}

// TestPQClientCustody: a client-custody pool on every PQ suite takes the KeyPackages its
// MLS client generates and submits (natsbus.RunClient over a MemKeyStore), validates them
// and uploads them: the pool fills, and what the delivery service gets is the client's.
func TestPQClientCustody(t *testing.T) {
	for _, s := range mls.PQSuites {
		t.Run(s.String(), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			env := kpooltest.Start(t, kpooltest.Options{Deterministic: true})
			c := env.Client
			var mu sync.Mutex
			uploaded := map[string][]byte{}
			ackUploads(ctx, t, env, func(u events.Upload) {
				mu.Lock()
				uploaded[u.Ref] = u.KeyPackage
				mu.Unlock()
			})

			priv, pub, err := mls.NewSignatureKey(s, nil)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := mls.SignerFromPrivate(s, priv)
			if err != nil {
				t.Fatal(err)
			}
			keys := natsbus.NewMemKeyStore(uint16(s), signer, "pq-client")
			keys.Now = env.Clock.Now
			if _, err := c.RegisterSealed(ctx, "pqc", natsbus.RegisterRequest{Identity: "pq-client", CipherSuite: uint16(s),
				Policy: events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(6)}, Custody: events.CustodyClient, SignatureKey: pub}); err != nil {
				t.Fatal(err)
			}
			stop, err := c.RunClient(ctx, "pqc", keys, natsbus.ClientOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			if _, err := env.WaitStatus(ctx, "pqc", func(st events.Status) bool {
				return st.AvailableFresh == 2 && st.LastResortRef != "" && st.Counts.Created == 0
			}); err != nil {
				t.Fatalf("client pool fill: %v", err)
			}
			held, err := keys.Refs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(uploaded) != 3 || len(held) != 3 {
				t.Fatalf("%d uploads, the client holds %d; want 2 + the last resort", len(uploaded), len(held))
			}
			for _, ref := range held {
				kp, err := mls.DecodeMLSMessage(uploaded[ref])
				if err != nil || kp.CipherSuite != s || !bytes.Equal(kp.LeafNode.SignatureKey, pub) {
					t.Fatalf("upload of the client's %s: %v", ref, err)
				}
			}
		})
	}
}

package worker_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
)

// TestEndToEnd drives one pool through its whole life over NATS with a simulated
// delivery service: fill to target, claims below the watermark and a refill, a take whose
// bundle decrypts what is sealed to the KeyPackage's init key, expiry and deletion by
// ticks, and a worker restart that resumes status, records and outbox.
func TestEndToEnd(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	dataDir := t.TempDir()
	w := startWorker(t, ns.URL(), dataDir, clock)
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, true)

	var statuses []events.Status
	var stMu = make(chan struct{}, 1)
	stMu <- struct{}{}
	stopWatch, err := c.WatchStatus(ctx(t), "alice", func(st events.Status) {
		<-stMu
		statuses = append(statuses, st)
		stMu <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stopWatch()
	lastStatus := func() events.Status {
		<-stMu
		defer func() { stMu <- struct{}{} }()
		if len(statuses) == 0 {
			return events.Status{}
		}
		return statuses[len(statuses)-1]
	}

	// Register; the signature private key comes back sealed to our recipient key.
	rk, err := natsbus.NewRecipientKey(1)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice@example.org", CipherSuite: 1}, rk)
	if err != nil {
		t.Fatal(err)
	}
	if !reg.Created || reg.SignaturePrivateKey == nil {
		t.Fatalf("register: created=%v key=%v, want a new pool with its sealed key", reg.Created, reg.SignaturePrivateKey != nil)
	}
	signer, err := mls.SignerFromPrivate(1, reg.SignaturePrivateKey)
	if err != nil || !bytes.Equal(signer.Public(), reg.SignatureKey) {
		t.Fatalf("opened signature key does not match the pool's public key (err %v)", err)
	}

	// The DS acks every upload: the pool reaches its target, and the status says so.
	eventually(t, 20*time.Second, "pool full", func() bool {
		st := lastStatus()
		return st.AvailableFresh == 10 && st.Health == events.HealthHealthy && st.LastResortRef != ""
	})
	if got := ds.count(); got != 11 {
		t.Fatalf("DS got %d uploads, want 10 regular + 1 last resort", got)
	}

	// Each upload is a valid KeyPackage signed by the pool's key.
	for _, ref := range ds.refs("alice", false) {
		kpi, err := c.Get(ctx(t), "alice", ref)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := mls.DecodeMLSMessage(kpi.KeyPackage)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := kp.Ref()
		if hex.EncodeToString(r) != ref || kpi.State != string(fsm.Available) || !bytes.Equal(kp.LeafNode.SignatureKey, reg.SignatureKey) {
			t.Fatalf("KeyPackage %s: ref %x state %s", ref, r, kpi.State)
		}
		if err := mls.Validate(kp, clock.Now(), mls.DefaultPolicy()); err != nil {
			t.Fatalf("KeyPackage %s does not validate: %v", ref, err)
		}
	}

	// Claims drive it below the low watermark (4); it refills to target.
	regular := ds.refs("alice", false)
	for _, ref := range regular[:7] {
		if err := c.Claimed(ctx(t), "alice", ref); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "refill after claims", func() bool {
		st := lastStatus()
		return st.Counts.Claimed == 7 && st.AvailableFresh == 10
	})
	if got := len(ds.refs("alice", false)); got != 17 {
		t.Fatalf("%d regular uploads after the refill, want 10 + 7", got)
	}

	// Take a claimed KeyPackage: the bundle opens and its init key decrypts what a
	// group member seals to the KeyPackage's init_key.
	ref := regular[0]
	kpi, err := c.Get(ctx(t), "alice", ref)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := mls.DecodeMLSMessage(kpi.KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.Take(ctx(t), "alice", ref, 1)
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
	enc, ct, err := mls.SealTo(1, kp.InitKey, []byte("welcome"), []byte("group secrets"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := mls.Open(1, bundle.InitPriv, enc, []byte("welcome"), ct); err != nil || string(pt) != "group secrets" {
		t.Fatalf("init key does not decrypt: %q %v", pt, err)
	}
	if kpi, err := c.Get(ctx(t), "alice", ref); err != nil || kpi.State != string(fsm.Deleted) {
		t.Fatalf("after take: state %q err %v, want deleted", kpi.State, err)
	}
	if ok, err := w.Store().HasSecret(ref); err != nil || ok {
		t.Fatalf("private keys of a taken KeyPackage still stored (err %v)", err)
	}
	// A second take gets a specific error, not a bundle.
	_, err = c.Take(ctx(t), "alice", ref, 1)
	var ae *natsbus.APIError
	if !errors.As(err, &ae) || ae.Code != pool.CodeInvalidTransition {
		t.Fatalf("second take: %v, want invalid_transition", err)
	}

	// Restart the worker: status, records and outbox resume.
	before := poolRecord(t, w, "alice")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = startWorker(t, ns.URL(), dataDir, clock)
	after := poolRecord(t, w, "alice")
	if after.StatusSeq != before.StatusSeq || after.Counts != before.Counts {
		t.Fatalf("pool changed across restart: %+v → %+v", before.Counts, after.Counts)
	}
	st, err := c.Status(ctx(t), "alice")
	if err != nil || st.Seq != before.StatusSeq || st.AvailableFresh != 10 {
		t.Fatalf("status after restart: %+v %v", st, err)
	}
	eventually(t, 10*time.Second, "outbox empty after restart", func() bool {
		pending := 0
		_ = w.Store().Outbox(func(events.Outbound) error { pending++; return nil })
		return pending == 0
	})

	// Ticks move time: past not_after − margin everything expires (and is withdrawn), new
	// KeyPackages are generated at the new time; past not_after + grace the old ones are
	// deleted and their private keys erased.
	old := ds.refs("alice", false)
	at := clock.Advance(78 * 24 * time.Hour) // 84d lifetime − 7d margin < 78d
	if err := c.ExpiryTick(ctx(t), "", at); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "expiry and refill", func() bool {
		st := lastStatus()
		return st.Counts.Expired > 0 && st.AvailableFresh == 10
	})
	kpi, err = c.Get(ctx(t), "alice", old[len(old)-1])
	if err != nil || kpi.State != string(fsm.Expired) {
		t.Fatalf("old KeyPackage after expiry: %q %v", kpi.State, err)
	}
	// Expired available KeyPackages are withdrawn from the DS.
	eventually(t, 10*time.Second, "withdrawals", func() bool {
		ds.mu.Lock()
		defer ds.mu.Unlock()
		return slices.Contains(ds.withdrawn, old[len(old)-1])
	})
	at = clock.Advance(14 * 24 * time.Hour) // past not_after (84d) + grace (7d)
	if err := c.ExpiryTick(ctx(t), "", at); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "deletion after grace", func() bool {
		kpi, err := c.Get(ctx(t), "alice", old[len(old)-1])
		return err == nil && kpi.State == string(fsm.Deleted)
	})
	if ok, err := w.Store().HasSecret(old[len(old)-1]); err != nil || ok {
		t.Fatalf("private keys of a deleted KeyPackage still stored (err %v)", err)
	}
}

// TestLastResortAlert: claiming the last-resort KeyPackage raises last_resort_used on the
// alerts subject, and a replacement is generated and uploaded.
func TestLastResortAlert(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, true)
	alerts := make(chan events.Alert, 16)
	stop, err := c.SubscribeAlerts("alice", func(a events.Alert) { alerts <- a })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 3}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "pool full", func() bool { p := poolRecord(t, w, "alice"); return p.Fresh == 10 && p.LastResort != "" })
	lr := ds.refs("alice", true)
	if len(lr) != 1 {
		t.Fatalf("%d last-resort uploads", len(lr))
	}
	if err := c.Claimed(ctx(t), "alice", lr[0]); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-alerts:
		if a.Kind != events.AlertLastResortUsed || !strings.Contains(a.Detail, lr[0]) {
			t.Fatalf("alert %+v", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no last_resort_used alert")
	}
	eventually(t, 10*time.Second, "replacement last resort", func() bool {
		p := poolRecord(t, w, "alice")
		return len(ds.refs("alice", true)) == 2 && p.LastResort != lr[0] && p.LastResort != ""
	})
}

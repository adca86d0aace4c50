package kpooltest_test

import (
	"context"
	"testing"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/kpooltest"
	"github.com/kpool/kpool/mls"
)

// A client-custody pool in a kpooltest Env: the test plays the MLS client with
// natsbus.RunClient over a MemKeyStore on the Env's clock, and the pool's state dump
// names its custody and holds only the client's public KeyPackages.
func TestClientCustodyPoolInEnv(t *testing.T) {
	env := kpooltest.Start(t, kpooltest.Options{Deterministic: true})
	ctx := context.Background()
	priv, pub, err := mls.NewSignatureKey(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := mls.SignerFromPrivate(1, priv)
	if err != nil {
		t.Fatal(err)
	}
	keys := natsbus.NewMemKeyStore(1, signer, "carol")
	keys.Now = env.Clock.Now
	if _, err := env.Client.RegisterSealed(ctx, "carol", natsbus.RegisterRequest{Identity: "carol", CipherSuite: 1,
		Policy: events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6)}, Custody: events.CustodyClient, SignatureKey: pub}); err != nil {
		t.Fatal(err)
	}
	stop, err := env.Client.RunClient(ctx, "carol", keys, natsbus.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := env.WaitStatus(ctx, "carol", func(st events.Status) bool { return st.Counts.Created == 3+1 }); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := env.State()
	if err != nil {
		t.Fatal(err)
	}
	ps := st.Pools["carol"]
	held, _ := keys.Refs(ctx)
	if ps.Pool.Custody != events.CustodyClient || len(ps.KeyPackages) != 4 || len(held) != 4 {
		t.Fatalf("custody %q, %d records, client holds %d", ps.Pool.Custody, len(ps.KeyPackages), len(held))
	}
	for _, ref := range held {
		if _, ok := ps.KeyPackages[ref]; !ok {
			t.Fatalf("the client holds %s, which the state does not record", ref)
		}
	}
}

package worker_test

import (
	"slices"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
)

// TestRegisterAgainKeepsPolicy: re-registering a pool without policy fields changes
// nothing (it used to reset the policy to the defaults and fill the pool to 100); a later
// register changes only the fields it gives, low_watermark 0 included, and the answer shows
// the policy in force and what changed.
func TestRegisterAgainKeepsPolicy(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	_, c := connect(t, ns.URL())
	startDS(t, c, true)

	first, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1,
		Policy: events.Policy{Target: new(6), LowWatermark: new(2), HardCap: new(12)}})
	if err != nil || !first.Created {
		t.Fatalf("register: %+v %v", first, err)
	}
	if p := first.Policy; p.Target == nil || *p.Target != 6 || p.Lifetime == nil || time.Duration(*p.Lifetime) != testDefaults().Lifetime || len(first.Changed) != 0 {
		t.Fatalf("answer of the creating register: policy %+v changed %v; want every field in force, nothing changed", p, first.Changed)
	}
	eventually(t, 10*time.Second, "pool full", func() bool { return poolRecord(t, w, "alice").Fresh == 6 })
	before := poolRecord(t, w, "alice").Config

	again, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1})
	if err != nil || again.Created || len(again.Changed) != 0 || *again.Policy.Target != 6 || *again.Policy.HardCap != 12 {
		t.Fatalf("register without policy: %+v %v; want target 6, hard_cap 12, nothing changed", again, err)
	}
	if got := poolRecord(t, w, "alice").Config; got != before {
		t.Fatalf("register without policy changed the config to %+v (was %+v)", got, before)
	}

	low, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{LowWatermark: new(0)}})
	if err != nil || !slices.Equal(low.Changed, []string{"low_watermark"}) || *low.Policy.LowWatermark != 0 || *low.Policy.Target != 6 {
		t.Fatalf("register low_watermark 0: %+v %v; want changed [low_watermark], target still 6", low, err)
	}
	got := poolRecord(t, w, "alice")
	if got.Config.LowWatermark != 0 || got.Config.Target != 6 || got.Config.HardCap != 12 {
		t.Fatalf("config after low_watermark 0: %+v", got.Config)
	}
	if got.Fresh != 6 {
		t.Fatalf("the pool holds %d fresh KeyPackages after policy updates, want its target 6", got.Fresh)
	}
}

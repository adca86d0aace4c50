package worker_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/worker"
)

// TestGenerationFailureIsReported: a pool whose KeyPackages cannot be generated says so
// — an alert, its status (health generation_failing, generation_error) and the answer
// of replenish — and recovers once generation works again.
func TestGenerationFailureIsReported(t *testing.T) {
	ns := startNATS(t)
	gate := &gatedRand{}
	gate.budget.Store(32) // the signature key, then no more entropy
	w := startWorker(t, ns.URL(), t.TempDir(), newClock(), func(c *worker.Config) { c.Rand = gate })
	_, c := connect(t, ns.URL())
	startDS(t, c, true)
	var mu sync.Mutex
	var alerts []events.Alert
	stop, err := c.SubscribeAlerts("alice", func(a events.Alert) { mu.Lock(); alerts = append(alerts, a); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "generation failure in the pool record", func() bool {
		return poolRecord(t, w, "alice").GenerationError != ""
	})
	st, err := c.Replenish(ctx(t), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if st.Health != events.HealthGenerationFailing || !strings.Contains(st.GenerationError, "entropy") {
		t.Fatalf("replenish answer: health %q, generation_error %q", st.Health, st.GenerationError)
	}
	eventually(t, 10*time.Second, "generation_failed alert", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range alerts {
			if a.Kind == events.AlertGenerationFailed {
				return true
			}
		}
		return false
	})
	gate.open.Store(true)
	if _, err := c.Replenish(ctx(t), "alice"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "pool filled and failure cleared", func() bool {
		p := poolRecord(t, w, "alice")
		return p.GenerationError == "" && p.Fresh == 3
	})
	if st, err := c.Status(ctx(t), "alice"); err != nil || st.Health != events.HealthHealthy || st.GenerationError != "" {
		t.Fatalf("status after recovery: %+v %v", st, err)
	}
}

package worker_test

import (
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
)

// TestPoolGaugesAfterRestart: a restarted worker publishes every pool's gauges at once,
// not only after the pool's status next changes (the low-pool alert depends on them).
func TestPoolGaugesAfterRestart(t *testing.T) {
	ns := startNATS(t)
	dir := t.TempDir()
	clock := newClock()
	w := startWorker(t, ns.URL(), dir, clock)
	_, c := connect(t, ns.URL())
	startDS(t, c, true)
	if _, err := c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "pool full", func() bool { return poolRecord(t, w, "alice").Fresh == 3 })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = startWorker(t, ns.URL(), dir, clock)
	if got := counter(t, w, "kpool_pool_available_fresh"); got != 3 {
		t.Fatalf("kpool_pool_available_fresh after restart = %v, want 3", got)
	}
	if got := counter(t, w, "kpool_pool_keypackages"); got < 3 {
		t.Fatalf("kpool_pool_keypackages after restart = %v, want the pool's KeyPackages", got)
	}
}

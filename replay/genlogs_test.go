package replay

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
)

// The golden logs in testdata/replay are recorded by these scenarios (real core, real
// KeyPackages, seeded keys). They are inputs: regenerate them only on purpose, with
// `go test ./replay -run TestGenerateLogs -genlogs`, then `-rewrite` the expectations.
var genLogs = flag.Bool("genlogs", false, "re-record the golden logs in testdata/replay")

const goldenDir = "../testdata/replay"

var scenarios = map[string]func(r *recorder){
	"normal-day":              normalDay,
	"exhaustion-last-resort":  exhaustion,
	"expiry-wave":             expiryWave,
	"duplicates-out-of-order": duplicatesOutOfOrder,
	"bad-lines":               badLines,
}

func TestGenerateLogs(t *testing.T) {
	if !*genLogs {
		t.Skip("pass -genlogs to re-record testdata/replay/*.ndjson")
	}
	for name, sc := range scenarios {
		r := newRecorder(t, "golden:"+name)
		sc(r)
		if err := os.WriteFile(filepath.Join(goldenDir, name+".ndjson"), r.bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A normal day: two pools fill, the DS acknowledges, clients claim through the day,
// owners take (consume) what they were handed, refills start below the low watermark
// and are acknowledged, the scheduler ticks.
func normalDay(r *recorder) {
	r.register("alice", events.Policy{Target: new(6), LowWatermark: new(2), HardCap: new(12)})
	r.register("bob", events.Policy{Target: new(4), LowWatermark: new(1), HardCap: new(8)})
	r.advance(2 * time.Second)
	r.ackAll("alice")
	r.ackAll("bob")
	for hour := range 10 {
		r.advance(time.Hour)
		r.tick()
		ref, _ := r.claim("alice")
		if hour%2 == 0 {
			r.advance(time.Minute)
			r.must(r.ev(events.TypeConsumed, "alice", ref))
		}
		if hour%3 == 0 {
			if ref, ok := r.claim("bob"); ok {
				r.advance(time.Minute)
				r.must(r.ev(events.TypeConsumed, "bob", ref))
			}
		}
		r.advance(30 * time.Second)
		r.ackAll("alice")
		r.ackAll("bob")
	}
	r.advance(time.Hour)
	r.must(r.ev(events.TypeReplenish, "bob", ""))
	r.ackAll("bob")
	r.tick()
}

// Exhaustion: the DS stops acknowledging refills, clients claim every regular KeyPackage,
// the pool is depleted, the last resort is handed out (and stays available, marked used,
// with an alert and a rotation); an upload times out and is retried; then the DS comes
// back and the pool recovers.
func exhaustion(r *recorder) {
	r.register("carol", events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6), UploadTimeout: new(events.Duration(10 * time.Minute))})
	r.advance(time.Second)
	r.ackAll("carol")
	for {
		r.advance(5 * time.Minute)
		if _, ok := r.claim("carol"); !ok {
			break
		}
	}
	lr := r.lastResort["carol"]
	r.advance(time.Minute)
	r.must(r.ev(events.TypeClaimed, "carol", lr)) // the last resort, handed out
	r.advance(time.Minute)
	r.must(r.ev(events.TypeClaimed, "carol", lr)) // and again: it is reusable
	r.advance(15 * time.Minute)
	r.tick() // the stuck uploads time out and are re-requested
	r.advance(time.Minute)
	r.must(events.Event{ID: r.id("upload_rejected"), Type: events.TypeUploadRejected, Time: r.now, Pool: "carol",
		Ref: r.created["carol"][0], Reason: "DS busy", Retry: true})
	r.advance(time.Minute)
	r.ackAll("carol")
	r.advance(time.Minute)
	r.tick()
}

// An expiry wave: every KeyPackage of the pool was minted at once with a 10-day
// lifetime; the refill starts before the wave (fresh counts look two margins ahead), the
// wave expires and withdraws the old ones, and the grace period deletes them.
func expiryWave(r *recorder) {
	day := 24 * time.Hour
	r.register("dave", events.Policy{Target: new(4), LowWatermark: new(2), HardCap: new(12),
		Lifetime: new(events.Duration(10 * day)), MaxLifetime: new(events.Duration(11 * day)),
		ExpiryMargin: new(events.Duration(day)), DeleteGrace: new(events.Duration(day))})
	r.advance(time.Second)
	r.ackAll("dave")
	for range 7 {
		r.advance(day)
		r.tick()
	}
	r.advance(day + time.Hour) // past not_after − 2 margins: refill before the wave
	r.tick()
	r.ackAll("dave")
	r.advance(day) // past not_after − margin: the wave
	r.tick()
	r.ackAll("dave")
	r.advance(2 * day) // past not_after + grace: deleted
	r.tick()
	r.ackAll("dave")
}

// Duplicates and out-of-order events: a redelivered ack and claim (same ids), a claim
// before its ack, an event timed before the core's clock, a take for an unknown ref, an
// event for an unknown pool, an ack naming another pool's KeyPackage.
func duplicatesOutOfOrder(r *recorder) {
	r.register("erin", events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6)})
	r.register("frank", events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)})
	r.advance(time.Second)
	first := r.created["erin"][0]
	claimEarly := r.ev(events.TypeClaimed, "erin", first)
	_ = r.input(claimEarly) // rejected: not yet available
	ack := r.ev(events.TypeUploadAck, "erin", first)
	r.must(ack)
	r.must(ack) // redelivered: duplicate
	r.created["erin"] = r.created["erin"][1:]
	r.available["erin"] = append(r.available["erin"], first)
	r.ackAll("erin")
	r.ackAll("frank")
	r.advance(time.Minute)
	claim := r.ev(events.TypeClaimed, "erin", first)
	r.must(claim)
	r.must(claim) // duplicate
	late := r.ev(events.TypeConsumed, "erin", first)
	late.Time = r.now.Add(-time.Hour) // out of order in time: the clock does not go back
	r.must(late)
	claimEarly.ID = r.id("claimed") // the same claim, re-sent with a new id: invalid now
	_ = r.input(claimEarly)
	r.advance(time.Minute)
	_ = r.input(r.ev(events.TypeConsumed, "erin", strings.Repeat("0f", 32))) // unknown ref
	_ = r.input(r.ev(events.TypeUploadAck, "nobody", strings.Repeat("0f", 32)))
	_ = r.input(r.ev(events.TypeUploadAck, "erin", r.available["frank"][0])) // wrong pool
	r.advance(time.Minute)
	r.ackAll("erin")
	r.tick()
}

// A log with bad lines: replay reports each one and goes on with the next line.
func badLines(r *recorder) {
	r.register("gina", events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)})
	r.raw(`# comments and blank lines are allowed and ignored`)
	r.raw(``)
	r.raw(`this is not json`)
	r.raw(`{"seq":1,"subject":"kpool.events.tick","event":{"id":"t-old","type":"expiry_tick","time":"2026-03-01T09:00:00Z"}}`)
	r.raw(`{"seq":1000,"subject":"kpool.events.gina.teleported","event":{"id":"x1","type":"teleported","time":"2026-03-01T09:00:00Z","pool":"gina"}}`)
	r.raw(`{"seq":1001,"subject":"kpool.events.other.replenish","event":{"id":"x2","type":"replenish","time":"2026-03-01T09:00:00Z","pool":"gina"}}`)
	r.raw(`{"seq":1002,"subject":"kpool.events.gina.upload_ack","event":{"id":"x3","type":"upload_ack","time":"2026-03-01T09:00:00Z","pool":"gina"}}`)
	r.raw(`{"seq":1003,"subject":"kpool.events.gina.replenish","event":{"id":"x4","type":"replenish","time":"2026-03-01T09:00:00Z","pool":"gina","colour":"red"}}`)
	r.raw(`{"seq":1004,"subject":"kpool.events.gina.replenish"`)
	r.seq = 1004
	r.advance(time.Second)
	r.ackAll("gina")
	r.raw(`{"seq":1,"subject":"kpool.events.tick","event":{"id":"t-old2","type":"expiry_tick","time":"2026-03-01T09:00:00Z"}}`)
	r.advance(time.Minute)
	r.claim("gina")
	r.tick()
}

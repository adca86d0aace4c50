package kpooltest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/kpooltest"
	"github.com/nats-io/nats.go"
)

// Start a worker, register a pool, play the delivery service (acknowledge every upload
// request) and wait until the pool is healthy. In a test, kpooltest.Start(t, ...) does
// the same as New and closes the Env when the test ends.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env, err := kpooltest.New(ctx, kpooltest.Options{Deterministic: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer env.Close()

	// The delivery service: acknowledge every KeyPackage kpool asks to publish.
	uploads, err := env.Conn.Subscribe(env.Worker.Subjects().Outbound(events.KindUpload, "*"), func(m *nats.Msg) {
		var u events.Upload
		if json.Unmarshal(m.Data, &u) == nil {
			env.Client.UploadAck(ctx, u.Pool, u.Ref)
		}
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer uploads.Unsubscribe()

	if _, err := env.Client.RegisterSealed(ctx, "alice", natsbus.RegisterRequest{
		Identity: "alice@example.org", CipherSuite: 1, Policy: events.Policy{Target: new(5), LowWatermark: new(2), HardCap: new(10)},
	}); err != nil {
		fmt.Println(err)
		return
	}
	st, err := env.WaitStatus(ctx, "alice", func(s events.Status) bool {
		// Target 5 plus the last resort: healthy alone can be reached mid-fill.
		return s.Health == events.HealthHealthy && s.Counts.Available == 6
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(st.Health, "available:", st.Counts.Available, "last resort set:", st.LastResortRef != "")
	// Output: healthy available: 6 last resort set: true
}

// Replay a recorded NDJSON log into a deterministic worker over NATS and compare the
// worker's state with the state `worker replay` computes from the same log.
func ExampleEnv_ReplayFile() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env, err := kpooltest.New(ctx, kpooltest.Options{Deterministic: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer env.Close()

	res, err := env.ReplayFile(ctx, "../testdata/replay/exhaustion-last-resort.ndjson", kpooltest.ReplayOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("published %d events, registered %d pool, matched %d generated KeyPackages\n", res.Published, res.Registered, res.Generated)

	st, err := env.Client.Status(ctx, "carol")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("carol:", st.Health, "available", st.Counts.Available, "claimed", st.Counts.Claimed, "last resort used:", st.LastResortUsed)

	stored, _ := env.State()
	fmt.Println("pool ids:", len(stored.Pools), "input seq:", stored.Meta.Seq, "clock:", env.Clock.Now().Format(time.RFC3339))
	// Output:
	// published 14 events, registered 1 pool, matched 6 generated KeyPackages
	// carol: healthy available 3 claimed 3 last resort used: true
	// pool ids: 1 input seq: 21 clock: 2026-03-01T09:40:01Z
}

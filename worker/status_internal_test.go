package worker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go"
)

// TestRecordStatusMatchesPublished: the status the API builds from a pool record
// (pool.StatusOf) equals the one the core published, field for field.
func TestRecordStatusMatchesPublished(t *testing.T) {
	w, err := Start(context.Background(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	nc, err := nats.Connect(w.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, _ := natsbus.NewClient(nc)
	if _, err := c.Register(context.Background(), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{Target: new(5), LowWatermark: new(2), HardCap: new(10)}}, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, _, _ := w.store.Pool("alice")
		st, found, err := c.LastStatus(context.Background(), "alice")
		if err == nil && found && p.Requested == 0 && !p.LastResortRequested && st.Seq == p.StatusSeq {
			meta, _ := w.store.Meta()
			got := pool.StatusOf(p, meta.Time)
			got.Time = st.Time // the record keeps no time of its last status change
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(st)
			if string(a) != string(b) {
				t.Fatalf("record status\n%s\npublished\n%s", a, b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not settle: %+v %v %v", st, found, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

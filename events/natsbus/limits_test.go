package natsbus_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/nats-io/nats.go/jetstream"
)

// TestStreamLimits: the inbound stream refuses a pool's publish past its per-subject
// budget (other pools go on) and any publish past its byte limit, and never drops an
// input it holds; the default limits are set on a new stream.
func TestStreamLimits(t *testing.T) {
	nc, js, _ := bus(t) // kpool's streams with the default limits
	ctx := context.Background()
	st, _ := js.Stream(ctx, natsbus.StreamNames("kpool").Events)
	cfg := st.CachedInfo().Config
	if cfg.MaxBytes != natsbus.DefaultStreamMaxBytes || cfg.MaxMsgsPerSubject != natsbus.DefaultEventsMaxPerSubject || cfg.Discard != jetstream.DiscardNew || !cfg.DiscardNewPerSubject {
		t.Fatalf("default events stream limits: max_bytes %d, per subject %d, discard %v/%v", cfg.MaxBytes, cfg.MaxMsgsPerSubject, cfg.Discard, cfg.DiscardNewPerSubject)
	}
	out, _ := js.Stream(ctx, natsbus.StreamNames("kpool").Outbound)
	if got := out.CachedInfo().Config; got.MaxBytes != natsbus.DefaultStreamMaxBytes || got.Discard != jetstream.DiscardOld {
		t.Fatalf("default outbound stream limits: max_bytes %d, discard %v", got.MaxBytes, got.Discard)
	}

	s := events.Subjects{Prefix: "lim"}
	if err := natsbus.EnsureStreams(ctx, js, s, natsbus.StreamOptions{EventsMaxPerSubject: 3, EventsMaxBytes: 4096}); err != nil {
		t.Fatal(err)
	}
	c, err := natsbus.NewClient(nc, natsbus.WithPrefix("lim"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.ReplenishEvent(ctx, "alice"); err != nil {
			t.Fatalf("publish %d within alice's budget: %v", i+1, err)
		}
	}
	err = c.ReplenishEvent(ctx, "alice")
	if err == nil || !strings.Contains(err.Error(), "maximum messages per subject exceeded") {
		t.Fatalf("4th replenish for alice: %v, want the per-subject limit", err)
	}
	if err := c.ReplenishEvent(ctx, "bob"); err != nil {
		t.Fatalf("bob after alice's budget ran out: %v", err)
	}
	// fill the stream's bytes with distinct pools
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		full = c.ReplenishEvent(ctx, "pool"+strings.Repeat("x", i%40)+string(rune('a'+i%26)))
	}
	var apiErr *jetstream.APIError
	if full == nil || !errors.As(full, &apiErr) || !strings.Contains(full.Error(), "maximum bytes exceeded") {
		t.Fatalf("publishing past max_bytes: %v", full)
	}
	ev, _ := js.Stream(ctx, natsbus.StreamNames("lim").Events)
	info, _ := ev.Info(ctx)
	if info.State.FirstSeq != 1 || info.State.Bytes > 4096 {
		t.Fatalf("stream state %+v: a full stream must keep its first inputs and stay within max_bytes", info.State)
	}
}

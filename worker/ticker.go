package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go/jetstream"
)

// tickLoop publishes expiry_tick events carrying the wall-clock time into the events
// stream, like any external scheduler would: the edge reads the clock, the core only sees
// the tick, and the journal holds every tick so replays are exact.
func (w *Worker) tickLoop() {
	defer w.loops.Done()
	t := time.NewTicker(w.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
			if err := w.PublishTick(w.ctx); err != nil {
				w.log.Warn("expiry tick not published", "err", err)
			}
		}
	}
}

// PublishTick publishes one expiry_tick for every pool at the worker's clock.
func (w *Worker) PublishTick(ctx context.Context) error {
	now := w.cfg.Clock().UTC()
	ev := events.Event{ID: fmt.Sprintf("tick-%s-%d", StreamSafe(w.cfg.Prefix), now.UnixNano()), Type: events.TypeExpiryTick, Time: now}
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = w.js.Publish(ctx, w.subj.Event("", events.TypeExpiryTick), data, jetstream.WithMsgID(ev.MsgID()))
	if err == nil {
		w.metrics.ticks.Inc()
	}
	return err
}

package worker

import (
	"context"

	"github.com/kpool/kpool/events"
)

// WithStepHook runs hook before every step of the worker's writer, with the worker's
// context; an error fails that input the way a failing store or view would.
func WithStepHook(hook func(context.Context, events.Event) error) func(*Config) {
	return func(c *Config) { c.stepHook = hook }
}

// Kill stops the worker as a crashed host would: its NATS connection closes first, so
// nothing more it does reaches the cluster — no lease released, no outbox flushed.
func (w *Worker) Kill() {
	w.nc.Close()
	if w.cluster != nil {
		for _, p := range w.cluster.ownedParts() {
			w.cluster.drop(p, false)
		}
	}
	w.shutdown()
}

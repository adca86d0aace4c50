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

package pool

import (
	"errors"
	"time"

	"github.com/kpool/kpool/events"
)

// DefaultConfig is the pool policy unless the worker or the pool overrides it.
func DefaultConfig() Config {
	return Config{
		Target:             100,
		LowWatermark:       20,
		HardCap:            200,
		Lifetime:           84 * 24 * time.Hour,
		NotBeforeBackdate:  time.Hour,
		MaxLifetime:        84*24*time.Hour + time.Hour,
		ExpiryMargin:       7 * 24 * time.Hour,
		DeleteGrace:        7 * 24 * time.Hour,
		UploadTimeout:      5 * time.Minute,
		MaxUploadAttempts:  5,
		TombstoneRetention: 30 * 24 * time.Hour,
	}
}

// Core applies inputs. It holds only the worker's default configuration; all state is
// read through a View.
type Core struct {
	Defaults Config
}

// ErrNotImplemented is temporary while the core is being written.
var ErrNotImplemented = errors.New("pool: not implemented")

// Step applies one input to the state seen through v and returns what changed. An error
// means the input was rejected and nothing changed; it says what and why.
func (c *Core) Step(v View, in events.Event) (Ready, error) {
	return Ready{}, ErrNotImplemented
}

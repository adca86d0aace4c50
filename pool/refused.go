package pool

import (
	"errors"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// RefusedTransition builds the transition-log record of an input Step refused as an
// invalid transition (From = To = the KeyPackage's state, Error = why), for the edge
// to publish next to the dead letter. ok is false for any other error.
func RefusedTransition(in events.Event, err error, at time.Time) (events.Transition, bool) {
	var te *fsm.TransitionError
	if !errors.As(err, &te) {
		return events.Transition{}, false
	}
	return events.Transition{Pool: in.Pool, Ref: te.Ref, From: string(te.State), To: string(te.State),
		Event: string(te.Event), EventID: in.ID, Time: at.UTC(), Error: err.Error()}, true
}

package fsm

import (
	"context"
	"errors"
	"fmt"

	looplab "github.com/looplab/fsm"
)

// ErrInvalidTransition is matched by every TransitionError.
var ErrInvalidTransition = errors.New("invalid transition")

// TransitionError says an event is not valid for a KeyPackage in its current state.
type TransitionError struct {
	Ref   string
	State State
	Event Event
	Kind  Kind
}

func (e *TransitionError) Error() string {
	what := "KeyPackage"
	if e.Kind == LastResort {
		what = "last-resort KeyPackage"
	}
	if e.State == Deleted {
		return fmt.Sprintf("%s %s is deleted (tombstone): event %s is not accepted", what, e.Ref, e.Event)
	}
	return fmt.Sprintf("%s %s is %s: event %s is not valid in that state", what, e.Ref, e.State, e.Event)
}

// Unwrap lets errors.Is(err, ErrInvalidTransition) match.
func (e *TransitionError) Unwrap() error { return ErrInvalidTransition }

// Fire restores a machine at state, fires ev and returns the new state. The machine is
// dropped afterwards: nothing is kept per KeyPackage. kind picks the rows that apply
// (Regular or LastResort).
func Fire(ref string, state State, ev Event, kind Kind) (State, error) {
	var descs []looplab.EventDesc
	for _, t := range Table {
		if t.Event != ev || (t.Kind != Any && t.Kind != kind) {
			continue
		}
		descs = append(descs, looplab.EventDesc{Name: string(t.Event), Src: strs(t.From), Dst: string(t.To)})
	}
	bad := &TransitionError{Ref: ref, State: state, Event: ev, Kind: kind}
	if len(descs) == 0 {
		return state, bad
	}
	m := looplab.NewFSM(string(state), descs, nil)
	// Background: a caller's cancelled context must never leave a machine half-way (we
	// have no callbacks, so nothing else can cancel or go async).
	err := m.Event(context.Background(), string(ev))
	var noop looplab.NoTransitionError
	switch {
	case err == nil:
	case errors.As(err, &noop) && noop.Err == nil:
		// a declared self-loop (last resort claimed/consumed): the state stays
	default:
		// InvalidEventError, UnknownEventError and anything else: not valid here
		return state, bad
	}
	return State(m.Current()), nil
}

// Can reports whether ev is valid in state for kind, without side effects.
func Can(state State, ev Event, kind Kind) bool {
	_, err := Fire("", state, ev, kind)
	return err == nil
}

func strs(ss []State) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

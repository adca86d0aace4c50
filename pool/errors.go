package pool

import (
	"errors"
	"fmt"
)

// Rejection codes, stable for dead letters and API errors.
const (
	CodeUnknownPool       = "unknown_pool"
	CodeUnknownRef        = "unknown_ref"
	CodeWrongPool         = "wrong_pool"
	CodeInvalidTransition = "invalid_transition"
	CodeInvalidConfig     = "invalid_config"
	CodeConflict          = "conflict" // e.g. re-registering a pool with another identity
	CodeOverCap           = "over_cap"
	CodeInvalidInput      = "invalid_input"
	CodeIDReused          = "id_reused" // an event id already applied in the pool to a different event
	CodeCustody           = "custody"   // an input for the other custody kind (e.g. submitted to a kpool pool)
	CodeNotAsked          = "not_asked" // a client submitted a last-resort KeyPackage nobody asked for
)

// ErrRejected is matched by every RejectError.
var ErrRejected = errors.New("input rejected")

// RejectError says which input was rejected and why. Nothing changed.
type RejectError struct {
	Code    string
	EventID string
	Pool    string
	Ref     string
	Reason  string
	Err     error // underlying typed error, e.g. *fsm.TransitionError
}

func (e *RejectError) Error() string {
	s := fmt.Sprintf("event %q rejected (%s)", e.EventID, e.Code)
	if e.Pool != "" {
		s += " pool " + e.Pool
	}
	if e.Ref != "" {
		s += " ref " + e.Ref
	}
	return s + ": " + e.Reason
}

// Unwrap exposes both ErrRejected and the underlying error.
func (e *RejectError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrRejected, e.Err}
	}
	return []error{ErrRejected}
}

package events

import (
	"errors"
	"fmt"
)

// Sentinel errors; typed errors below wrap them so callers can use errors.Is.
var (
	ErrMalformed    = errors.New("malformed event")
	ErrTooLarge     = errors.New("event too large")
	ErrUnknownType  = errors.New("unknown event type")
	ErrInvalidField = errors.New("invalid field")
	ErrSubject      = errors.New("subject does not match event")
)

// FieldError says which field was rejected and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }

// Unwrap lets errors.Is(err, ErrInvalidField) match.
func (e *FieldError) Unwrap() error { return ErrInvalidField }

// Code maps an error from this package to the stable code used in dead letters.
func Code(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrUnknownType):
		return "unknown_type"
	case errors.Is(err, ErrSubject):
		return "subject_mismatch"
	case errors.Is(err, ErrInvalidField):
		return "invalid_field"
	}
	return "rejected"
}

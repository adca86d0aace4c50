package events

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the subject prefix unless the worker is configured otherwise.
const DefaultPrefix = "kpool"

// Subjects builds and parses kpool's subjects under one prefix.
type Subjects struct{ Prefix string }

// Event is the subject for an inbound event: <prefix>.events.<pool>.<type>, and
// <prefix>.events.tick for pool-less expiry ticks.
func (s Subjects) Event(pool string, t Type) string {
	if t == TypeExpiryTick && pool == "" {
		return s.Prefix + ".events.tick"
	}
	return fmt.Sprintf("%s.events.%s.%s", s.Prefix, pool, t)
}

// Events is the wildcard the inbound stream captures.
func (s Subjects) Events() string { return s.Prefix + ".events.>" }

// Outbound is the subject for an outbound message: <prefix>.<kind>.<pool>, and
// <prefix>.client.<pool>.<generate|delete|rejected> for the client-custody kinds, so that
// a client subscribes to everything for its pool with <prefix>.client.<pool>.>.
func (s Subjects) Outbound(k Kind, pool string) string {
	if rest, ok := strings.CutPrefix(string(k), "client."); ok {
		return s.Client(pool, rest)
	}
	return fmt.Sprintf("%s.%s.%s", s.Prefix, k, pool)
}

// Client is the subject of a client-custody message: <prefix>.client.<pool>.<what>.
func (s Subjects) Client(pool, what string) string {
	return fmt.Sprintf("%s.client.%s.%s", s.Prefix, pool, what)
}

// DeadLetter is where rejected inputs are reported.
func (s Subjects) DeadLetter() string { return s.Prefix + ".deadletter" }

// API is the prefix of the micro service endpoints.
func (s Subjects) API() string { return s.Prefix + ".api" }

// Input is the subject on which the worker publishes one of its own inputs (API calls,
// generated KeyPackages) into the inbound stream, so that they share the one order of
// every input. Only the worker may publish here (see docs/security.md).
func (s Subjects) Input(pool string, t Type) string {
	return fmt.Sprintf("%s.inputs.%s.%s", s.Prefix, pool, t)
}

// Inputs matches every internal input subject.
func (s Subjects) Inputs() string { return s.Prefix + ".inputs.>" }

// IsInput reports whether a subject is an internal input subject.
func (s Subjects) IsInput(subject string) bool {
	return strings.HasPrefix(subject, s.Prefix+".inputs.")
}

// CheckInputSubject verifies that an internal input's pool and type match its subject.
func (s Subjects) CheckInputSubject(subject string, e Event) error {
	if want := s.Input(e.Pool, e.Type); subject != want {
		return fmt.Errorf("%w: %s input of pool %q arrived on %q, want %q", ErrSubject, e.Type, e.Pool, subject, want)
	}
	return nil
}

// ParseEvent splits an inbound subject into pool and type. Ticks have an empty pool.
func (s Subjects) ParseEvent(subject string) (pool string, t Type, err error) {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".events.")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not an event subject (%s.events.<pool>.<type>)", ErrSubject, subject, s.Prefix)
	}
	if rest == "tick" {
		return "", TypeExpiryTick, nil
	}
	pool, typ, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(typ, ".") {
		return "", "", fmt.Errorf("%w: %q is not %s.events.<pool>.<type>", ErrSubject, subject, s.Prefix)
	}
	if err := ValidPoolID(pool); err != nil {
		return "", "", &FieldError{Field: "subject", Reason: "the pool token of " + strconv.QuoteToASCII(truncate(subject, 120)) + " is not a pool id: use 1-64 characters from A-Z a-z 0-9 _ -"}
	}
	return pool, Type(typ), nil
}

// CheckSubject verifies that an event's pool and type match the subject it arrived on.
func (s Subjects) CheckSubject(subject string, e Event) error {
	pool, t, err := s.ParseEvent(subject)
	if err != nil {
		return err
	}
	if t != e.Type {
		return fmt.Errorf("%w: type %q arrived on subject %q (type %q)", ErrSubject, e.Type, subject, t)
	}
	if pool != e.Pool {
		return fmt.Errorf("%w: pool %q arrived on subject %q (pool %q)", ErrSubject, e.Pool, subject, pool)
	}
	return nil
}

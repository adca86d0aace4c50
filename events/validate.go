package events

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxEventSize bounds an inbound payload; larger messages are rejected unread. It leaves
// room for the largest KeyPackage kpool makes: a post-quantum suite-85/86 KeyPackage is
// about 15 KB, 20 KB in an event's base64 (docs/events.md, "Size limits").
const MaxEventSize = 32 << 10

// KnownCipherSuite reports whether kpool supports the suite: RFC 9420's 1–7 and the
// post-quantum 77–88 (package mls has the algorithms; events stays free of them).
func KnownCipherSuite(s uint16) bool { return s >= 1 && s <= 7 || s >= 77 && s <= 88 }

// MaxIDLength bounds event ids (they are stored for deduplication).
const MaxIDLength = 128

var poolIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidPoolID reports whether id is a NATS-safe pool id: [A-Za-z0-9_-]{1,64}.
func ValidPoolID(id string) error {
	if !poolIDPattern.MatchString(id) {
		return &FieldError{Field: "pool", Reason: fmt.Sprintf("%q is not a pool id: use 1-64 characters from A-Z a-z 0-9 _ -", truncate(id, 80))}
	}
	return nil
}

// Decode parses and validates one inbound event payload strictly (UnmarshalStrict):
// unknown fields, case variants of known ones, duplicate fields, null values and fields
// that belong to another event type are refused, so typos do not pass silently.
func Decode(data []byte) (Event, error) {
	var e Event
	if len(data) > MaxEventSize {
		return e, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxEventSize)
	}
	present, err := unmarshalStrict(data, &e)
	if err != nil {
		return Event{}, err
	}
	if err := checkTypeFields(e.Type, present); err != nil {
		return Event{}, err
	}
	if err := Validate(e); err != nil {
		return Event{}, err
	}
	return e, nil
}

// typeFields lists the fields each type takes beyond id, type, time and pool.
var typeFields = map[Type][]string{
	TypeUploadAck:        {"ref"},
	TypeClaimed:          {"ref"},
	TypeConsumed:         {"ref"},
	TypeUploadRejected:   {"ref", "reason", "retry"},
	TypeExpiryTick:       nil,
	TypeReplenish:        nil,
	TypeGenerated:        {"generated"},
	TypePoolRegistered:   {"register"},
	TypeGenerationFailed: {"reason"},
	TypeSubmitted:        {"key_package", "request_id", "generated"},
	TypeDeleted:          {"refs"},
	TypeInventory:        {"refs"},
}

// checkTypeFields refuses a field of another event type (a "ref" on a tick, say), which
// would otherwise be decoded, ignored and journaled.
func checkTypeFields(t Type, present map[string]bool) error {
	allowed, known := typeFields[t]
	if !known {
		return nil // Validate reports the type
	}
	for name := range present {
		switch name {
		case "id", "type", "time", "pool":
			continue
		}
		if !slices.Contains(allowed, name) {
			return &FieldError{Field: name, Reason: fmt.Sprintf("not a field of %s events", t)}
		}
	}
	return nil
}

// setFields names the type-specific fields of e that are not zero.
func setFields(e Event) map[string]bool {
	set := map[string]bool{}
	for name, on := range map[string]bool{"ref": e.Ref != "", "reason": e.Reason != "", "retry": e.Retry,
		"generated": e.Generated != nil, "register": e.Register != nil,
		"key_package": e.KeyPackage != nil, "request_id": e.RequestID != "", "refs": e.Refs != nil} {
		if on {
			set[name] = true
		}
	}
	return set
}

// Validate checks an event's fields for its type.
func Validate(e Event) error {
	if e.ID == "" {
		return &FieldError{Field: "id", Reason: "missing"}
	}
	if len(e.ID) > MaxIDLength {
		return &FieldError{Field: "id", Reason: fmt.Sprintf("longer than %d bytes", MaxIDLength)}
	}
	if e.Time.IsZero() {
		return &FieldError{Field: "time", Reason: "missing (RFC 3339 timestamp required)"}
	}
	if err := checkTypeFields(e.Type, setFields(e)); err != nil {
		return err
	}
	needRef := false
	switch e.Type {
	case TypeUploadAck, TypeClaimed, TypeConsumed:
		needRef = true
	case TypeUploadRejected:
		needRef = true
		if e.Reason == "" {
			return &FieldError{Field: "reason", Reason: "missing (upload_rejected needs the delivery service's reason)"}
		}
	case TypeExpiryTick:
		if e.Pool != "" {
			if err := ValidPoolID(e.Pool); err != nil {
				return err
			}
		}
		return nil
	case TypeReplenish:
	case TypeGenerationFailed:
		if e.Reason == "" {
			return &FieldError{Field: "reason", Reason: "missing (generation_failed says why)"}
		}
	case TypeSubmitted:
		if len(e.KeyPackage) == 0 && e.Generated == nil {
			return &FieldError{Field: "key_package", Reason: "missing (base64 of the MLSMessage or KeyPackage)"}
		}
		if len(e.RequestID) > MaxIDLength {
			return &FieldError{Field: "request_id", Reason: fmt.Sprintf("longer than %d bytes", MaxIDLength)}
		}
		if e.Generated != nil {
			if err := validGenerated(e.Generated); err != nil {
				return err
			}
		}
	case TypeDeleted, TypeInventory:
		if e.Refs == nil {
			return &FieldError{Field: "refs", Reason: "missing (a list of hex KeyPackageRefs; [] for none)"}
		}
		seen := make(map[string]bool, len(e.Refs))
		for i, r := range e.Refs {
			if err := validRef(r); err != nil {
				return &FieldError{Field: fmt.Sprintf("refs[%d]", i), Reason: err.(*FieldError).Reason}
			}
			if seen[r] {
				return &FieldError{Field: fmt.Sprintf("refs[%d]", i), Reason: "listed twice"}
			}
			seen[r] = true
		}
	case TypeGenerated:
		if e.Generated == nil {
			return &FieldError{Field: "generated", Reason: "missing"}
		}
		if err := validGenerated(e.Generated); err != nil {
			return err
		}
	case TypePoolRegistered:
		r := e.Register
		if r == nil {
			return &FieldError{Field: "register", Reason: "missing"}
		}
		if r.Identity == "" {
			return &FieldError{Field: "register.identity", Reason: "missing"}
		}
		if !KnownCipherSuite(r.CipherSuite) {
			return &FieldError{Field: "register.cipher_suite", Reason: fmt.Sprintf("%d is not a supported cipher suite (1-7, 77-88)", r.CipherSuite)}
		}
		if len(r.SignatureKey) == 0 {
			return &FieldError{Field: "register.signature_key", Reason: "missing"}
		}
		if r.Custody != "" && r.Custody != CustodyKpool && r.Custody != CustodyClient {
			return &FieldError{Field: "register.custody", Reason: fmt.Sprintf("%q is not a custody: use \"kpool\" (kpool holds the private keys) or \"client\" (the MLS client does)", truncate(r.Custody, 40))}
		}
	case "":
		return &FieldError{Field: "type", Reason: "missing"}
	default:
		return fmt.Errorf("%w: %q", ErrUnknownType, truncate(string(e.Type), 64))
	}
	if err := ValidPoolID(e.Pool); err != nil {
		return err
	}
	if needRef {
		return validRef(e.Ref)
	}
	return nil
}

func validGenerated(g *Generated) error {
	if err := validRef(g.Ref); err != nil {
		return err
	}
	if len(g.KeyPackage) == 0 {
		return &FieldError{Field: "generated.key_package", Reason: "missing"}
	}
	if g.NotAfter <= g.NotBefore {
		return &FieldError{Field: "generated.not_after", Reason: "not after not_before"}
	}
	return nil
}

func validRef(ref string) error {
	b, err := hex.DecodeString(ref)
	if err != nil || strings.ToLower(ref) != ref {
		return &FieldError{Field: "ref", Reason: "must be lowercase hex"}
	}
	switch len(b) {
	case 32, 48, 64: // SHA-256, SHA-384, SHA-512 KeyPackageRefs
		return nil
	}
	return &FieldError{Field: "ref", Reason: fmt.Sprintf("%d bytes; a KeyPackageRef has 32, 48 or 64", len(b))}
}

// MaxDuration bounds every duration kpool reads: ten years, far beyond any KeyPackage
// lifetime or retention, and far below time.Duration's 292-year range, so no sum of two
// policy durations can overflow.
const MaxDuration = 3650 * 24 * time.Hour

// ParseDuration accepts Go durations plus a "d" (24h) unit: "84d", "1d12h", "90m", up to
// MaxDuration ("3650d"). Anything larger is refused, never wrapped around.
func ParseDuration(s string) (time.Duration, error) {
	// one message for bad syntax and overflow: time.ParseDuration cannot tell them apart
	bad := &FieldError{Field: "duration", Reason: fmt.Sprintf("%q is not a duration of at most 3650d, such as \"84d\", \"36h\" or \"90s\"", truncate(s, 40))}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 || s[:i] != strconv.Itoa(n) {
			return 0, bad
		}
		if n > int(MaxDuration/(24*time.Hour)) {
			return 0, bad
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 || v > MaxDuration-days {
		return 0, bad
	}
	return days + v, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

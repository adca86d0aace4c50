package events

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxEventSize bounds an inbound payload; larger messages are rejected unread.
const MaxEventSize = 16 << 10

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

// Decode parses and validates one inbound event payload. Unknown fields are rejected so
// typos do not pass silently.
func Decode(data []byte) (Event, error) {
	var e Event
	if len(data) > MaxEventSize {
		return e, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxEventSize)
	}
	// encoding/json turns invalid UTF-8 into U+FFFD, so two different ids could collide.
	if !utf8.Valid(data) {
		return e, fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return Event{}, fmt.Errorf("%w: trailing data after the JSON object", ErrMalformed)
	}
	if err := Validate(e); err != nil {
		return Event{}, err
	}
	return e, nil
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
	case TypeGenerated:
		g := e.Generated
		if g == nil {
			return &FieldError{Field: "generated", Reason: "missing"}
		}
		if err := validRef(g.Ref); err != nil {
			return err
		}
		if len(g.KeyPackage) == 0 {
			return &FieldError{Field: "generated.key_package", Reason: "missing"}
		}
		if g.NotAfter <= g.NotBefore {
			return &FieldError{Field: "generated.not_after", Reason: "not after not_before"}
		}
	case TypePoolRegistered:
		r := e.Register
		if r == nil {
			return &FieldError{Field: "register", Reason: "missing"}
		}
		if r.Identity == "" {
			return &FieldError{Field: "register.identity", Reason: "missing"}
		}
		if r.CipherSuite < 1 || r.CipherSuite > 7 {
			return &FieldError{Field: "register.cipher_suite", Reason: fmt.Sprintf("%d is not an RFC 9420 cipher suite (1-7)", r.CipherSuite)}
		}
		if len(r.SignatureKey) == 0 {
			return &FieldError{Field: "register.signature_key", Reason: "missing"}
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

// ParseDuration accepts Go durations plus a "d" (24h) unit: "84d", "1d12h", "90m".
func ParseDuration(s string) (time.Duration, error) {
	bad := &FieldError{Field: "duration", Reason: fmt.Sprintf("%q is not a duration such as \"84d\", \"36h\" or \"90s\"", truncate(s, 40))}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 {
			return 0, bad
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
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

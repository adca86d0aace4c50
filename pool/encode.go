package pool

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/kpool/kpool/events"
)

// Outbox bodies are encoded by hand: encoding/json's reflection was about a quarter of
// a Step's cost, and every Step emits at least a transition and a status. Each append*
// writes exactly what json.Marshal writes for the same value — same field order, names,
// omitempty, string escaping, base64, RFC 3339 times — and encode_test.go checks that
// against json.Marshal on random values of every field. Whatever the fast path cannot
// write byte for byte (a time json.Marshal refuses) falls back to json.Marshal itself.

// encodeBody returns the JSON of an outbox body.
func encodeBody(body any) ([]byte, error) {
	var (
		b   []byte
		err error
	)
	// Each buffer is sized for the keys, the strings, times and numbers of typical
	// width, so that it is allocated once (a body needing escapes may grow it).
	switch v := body.(type) {
	case events.Transition:
		n := 128 + timeLen + len(v.Pool) + len(v.Ref) + len(v.From) + len(v.To) + len(v.Event) + len(v.EventID) + len(v.Error)
		b, err = appendTransition(make([]byte, 0, n), &v)
	case events.Status:
		n := 384 + 2*timeLen + len(v.Pool) + len(v.Identity) + len(v.Health) + len(v.LastResortRef)
		b, err = appendStatus(make([]byte, 0, n), &v)
	case events.Alert:
		n := 64 + timeLen + len(v.Pool) + len(v.Kind) + len(v.Detail)
		b, err = appendAlert(make([]byte, 0, n), &v)
	case events.Upload:
		n := 128 + len(v.Pool) + len(v.Ref) + base64.StdEncoding.EncodedLen(len(v.KeyPackage))
		b, err = appendUpload(make([]byte, 0, n), &v)
	case events.Withdraw:
		n := 48 + len(v.Pool) + len(v.Ref) + len(v.Reason)
		b, err = appendWithdraw(make([]byte, 0, n), &v)
	default:
		return json.Marshal(body)
	}
	if err != nil {
		return json.Marshal(body) // the exact error (or bytes) encoding/json gives
	}
	return b, nil
}

func appendTransition(b []byte, v *events.Transition) ([]byte, error) {
	b = appendStringField(b, `{"pool":`, v.Pool)
	b = appendStringField(b, `,"ref":`, v.Ref)
	b = appendStringField(b, `,"from":`, v.From)
	b = appendStringField(b, `,"to":`, v.To)
	b = appendStringField(b, `,"event":`, v.Event)
	b = appendStringField(b, `,"event_id":`, v.EventID)
	b, err := appendTime(append(b, `,"time":`...), v.Time)
	if v.Error != "" {
		b = appendStringField(b, `,"error":`, v.Error)
	}
	return append(b, '}'), err
}

func appendStatus(b []byte, v *events.Status) ([]byte, error) {
	b = appendStringField(b, `{"pool":`, v.Pool)
	b = appendStringField(b, `,"identity":`, v.Identity)
	b = strconv.AppendUint(append(b, `,"cipher_suite":`...), uint64(v.CipherSuite), 10)
	b = strconv.AppendUint(append(b, `,"seq":`...), v.Seq, 10)
	b, err := appendTime(append(b, `,"time":`...), v.Time)
	b = appendStringField(b, `,"health":`, v.Health)
	b = appendInt(b, `,"counts":{"created":`, v.Counts.Created)
	b = appendInt(b, `,"available":`, v.Counts.Available)
	b = appendInt(b, `,"claimed":`, v.Counts.Claimed)
	b = appendInt(b, `,"expired":`, v.Counts.Expired)
	b = appendInt(b, `,"deleted":`, v.Counts.Deleted)
	b = appendInt(b, `},"available_fresh":`, v.AvailableFresh)
	b = appendInt(b, `,"target":`, v.Target)
	b = appendInt(b, `,"low_watermark":`, v.LowWatermark)
	b = appendInt(b, `,"hard_cap":`, v.HardCap)
	b = appendStringField(b, `,"last_resort_ref":`, v.LastResortRef)
	b = strconv.AppendBool(append(b, `,"last_resort_used":`...), v.LastResortUsed)
	b = append(b, `,"next_expiry":`...)
	if v.NextExpiry == nil {
		b = append(b, "null"...)
	} else {
		var err2 error
		if b, err2 = appendTime(b, *v.NextExpiry); err == nil {
			err = err2
		}
	}
	if v.GenerationError != "" {
		b = appendStringField(b, `,"generation_error":`, v.GenerationError)
	}
	if v.Custody != "" {
		b = appendStringField(b, `,"custody":`, v.Custody)
	}
	if v.DeletePending != 0 {
		b = appendInt(b, `,"delete_pending":`, v.DeletePending)
	}
	return append(b, '}'), err
}

func appendAlert(b []byte, v *events.Alert) ([]byte, error) {
	b = appendStringField(b, `{"pool":`, v.Pool)
	b = appendStringField(b, `,"kind":`, v.Kind)
	b = appendStringField(b, `,"detail":`, v.Detail)
	b, err := appendTime(append(b, `,"time":`...), v.Time)
	return append(b, '}'), err
}

func appendUpload(b []byte, v *events.Upload) ([]byte, error) {
	b = appendStringField(b, `{"pool":`, v.Pool)
	b = appendStringField(b, `,"ref":`, v.Ref)
	b = append(b, `,"key_package":`...)
	if v.KeyPackage == nil {
		b = append(b, "null"...)
	} else {
		b = append(base64.StdEncoding.AppendEncode(append(b, '"'), v.KeyPackage), '"')
	}
	b = strconv.AppendInt(append(b, `,"not_after":`...), v.NotAfter, 10)
	b = strconv.AppendBool(append(b, `,"last_resort":`...), v.LastResort)
	b = appendInt(b, `,"attempt":`, v.Attempt)
	return append(b, '}'), nil
}

func appendWithdraw(b []byte, v *events.Withdraw) ([]byte, error) {
	b = appendStringField(b, `{"pool":`, v.Pool)
	b = appendStringField(b, `,"ref":`, v.Ref)
	if v.Reason != "" {
		b = appendStringField(b, `,"reason":`, v.Reason)
	}
	return append(b, '}'), nil
}

func appendInt(b []byte, key string, n int) []byte {
	return strconv.AppendInt(append(b, key...), int64(n), 10)
}

func appendStringField(b []byte, key, s string) []byte {
	return appendString(append(b, key...), s)
}

// appendString quotes s as encoding/json does. Printable ASCII and valid UTF-8 (refs,
// ids, pool names, reasons such as "not_after − expiry_margin") are copied as they are;
// a string with anything encoding/json escapes or replaces (quotes, backslashes,
// control characters, HTML-sensitive <, > and &, U+2028, U+2029, invalid UTF-8) goes
// through json.Marshal, which never fails on a string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return appendMarshaled(b, s)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			return appendMarshaled(b, s)
		}
		i += size
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendMarshaled(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// timeLen is the longest quoted RFC 3339 time json.Marshal writes.
const timeLen = len(`"2006-01-02T15:04:05.999999999-07:00"`)

// appendTime writes t as time.Time.MarshalJSON does (RFC 3339 with nanoseconds),
// without its allocation. The error is MarshalJSON's for a time it refuses.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	return append(b, '"'), err
}

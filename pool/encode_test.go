package pool

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
)

// strs are the strings the random values draw from: plain ones (the fast path) and every
// kind json.Marshal escapes or replaces.
var strs = []string{"", "p1", "0f3a9c", "created", "e-17", "pool/with spaces", `quote"d`, `back\slash`,
	"<script>&amp;", "a&b", "x>y", "x<y", "tab\there", "nl\n\r", "\x00\x1f\x7f", "del\x7f", "not_after − expiry_margin", "trunc \xe2\x88", "héllo", "日本", "bad utf8 \xff\xfe", "\u2028\u2029", "only \u2029", "only \u2028", "emoji 🙂"}

// fill sets every field of the struct v points to to a random value. A field of a kind
// it does not know fails the test, so a field added to an outbound type cannot slip
// past the comparison with json.Marshal.
func fill(t *testing.T, rng *rand.Rand, v reflect.Value) {
	t.Helper()
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch {
		case f.Type() == reflect.TypeFor[time.Time]():
			f.Set(reflect.ValueOf(randTime(rng)))
		case f.Type() == reflect.TypeFor[*time.Time]():
			if rng.IntN(3) > 0 {
				tm := randTime(rng)
				f.Set(reflect.ValueOf(&tm))
			} else {
				f.SetZero()
			}
		case f.Type() == reflect.TypeFor[[]byte]():
			switch rng.IntN(3) {
			case 0:
				f.SetZero()
			case 1:
				f.SetBytes([]byte{})
			default:
				b := make([]byte, rng.IntN(400))
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
				f.SetBytes(b)
			}
		case f.Kind() == reflect.String:
			if rng.IntN(4) == 0 { // any bytes at all
				b := make([]byte, rng.IntN(12))
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
				f.SetString(string(b))
			} else {
				f.SetString(strs[rng.IntN(len(strs))])
			}
		case f.Kind() == reflect.Bool:
			f.SetBool(rng.IntN(2) == 0)
		case f.CanInt():
			f.SetInt(rng.Int64N(1<<40) - 1<<39)
			if f.OverflowInt(f.Int()) {
				f.SetInt(int64(int16(f.Int())))
			}
		case f.CanUint():
			f.SetUint(rng.Uint64() >> (64 - f.Type().Bits()))
		case f.Kind() == reflect.Struct:
			fill(t, rng, f)
		default:
			t.Fatalf("fill: field %s.%s of type %s is not covered; extend fill and encode.go", v.Type(), name, f.Type())
		}
	}
}

// randTime is a time in any of several zones, with or without nanoseconds, sometimes
// outside the years json.Marshal accepts (the encoder must then fall back).
func randTime(rng *rand.Rand) time.Time {
	tm := time.Unix(rng.Int64N(4e9), 0)
	if rng.IntN(2) == 0 {
		tm = tm.Add(time.Duration(rng.IntN(1e9)))
	}
	switch rng.IntN(6) {
	case 0:
		tm = tm.In(time.FixedZone("X", 5*3600+30*60))
	case 1:
		tm = time.Time{}
	case 2:
		tm = tm.AddDate(9000, 0, 0) // year > 9999: refused
	default:
		tm = tm.UTC()
	}
	return tm
}

// TestEncodeBodyMatchesJSON compares the hand-written encoders with json.Marshal on
// random values of every outbound body type: same bytes, or the same error.
func TestEncodeBodyMatchesJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 7))
	for _, typ := range []reflect.Type{reflect.TypeFor[events.Transition](), reflect.TypeFor[events.Status](),
		reflect.TypeFor[events.Alert](), reflect.TypeFor[events.Upload](), reflect.TypeFor[events.Withdraw]()} {
		for range 3000 {
			v := reflect.New(typ).Elem()
			fill(t, rng, v)
			body := v.Interface()
			want, wantErr := json.Marshal(body)
			got, gotErr := encodeBody(body)
			if (wantErr == nil) != (gotErr == nil) || (wantErr != nil && wantErr.Error() != gotErr.Error()) {
				t.Fatalf("%s %+v: error %v, json.Marshal %v", typ, body, gotErr, wantErr)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s %+v:\n got %s\nwant %s", typ, body, got, want)
			}
		}
	}
}

// The zero value of each type (empty strings, nil pointer and slice, zero time).
func TestEncodeBodyZeroValues(t *testing.T) {
	for _, body := range []any{events.Transition{}, events.Status{}, events.Alert{}, events.Upload{}, events.Withdraw{}} {
		want, _ := json.Marshal(body)
		got, err := encodeBody(body)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%T: got %s (%v), want %s", body, got, err, want)
		}
	}
}

// Each body type must take the fast path, or the allocations it exists to save come back.
func TestEncodeBodyFastPath(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, body := range []any{
		events.Transition{Pool: "p1", Ref: "ab", From: "created", To: "available", Event: "upload_ack", EventID: "e1", Time: now},
		events.Status{Pool: "p1", Identity: "alice", Time: now, NextExpiry: &now},
		events.Alert{Pool: "p1", Kind: "low", Detail: "3 fresh KeyPackages", Time: now},
		events.Upload{Pool: "p1", Ref: "ab", KeyPackage: []byte("kp")},
		events.Withdraw{Pool: "p1", Ref: "ab", Reason: "expired"},
	} {
		if n := testing.AllocsPerRun(50, func() { encodeBody(body) }); n > 2 {
			t.Errorf("%T: %.0f allocations, want at most 2 (the buffer, the interface)", body, n)
		}
	}
}

// The buffer is sized once for typical bodies: one allocation, no growth.
func TestEncodeBodyOneAllocation(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC)
	ref := "0f3a9c0f3a9c0f3a9c0f3a9c0f3a9c0f3a9c0f3a9c0f3a9c0f3a9c0f3a9c0f3a"
	for _, body := range []any{
		events.Transition{Pool: "pool-0001", Ref: ref, From: "created", To: "available", Event: "upload_ack", EventID: "gen-" + ref, Time: now},
		events.Status{Pool: "pool-0001", Identity: "alice@example.org", CipherSuite: 1, Seq: 1 << 40, Time: now, Health: "healthy",
			Counts:         events.Counts{Created: 100000, Available: 100000, Claimed: 100000, Expired: 100000, Deleted: 1 << 40},
			AvailableFresh: 100000, Target: 100000, LowWatermark: 100000, HardCap: 1000000, LastResortRef: ref, NextExpiry: &now},
		events.Alert{Pool: "pool-0001", Kind: "claim_storm", Detail: "12 claims within 5m with 3 fresh KeyPackages: the pool may empty before a refill lands", Time: now},
		events.Upload{Pool: "pool-0001", Ref: ref, KeyPackage: make([]byte, 300), NotAfter: 1 << 40, LastResort: true, Attempt: 5},
		events.Withdraw{Pool: "pool-0001", Ref: ref, Reason: "held past not_after − expiry_margin until replacement " + ref + " was acknowledged"},
	} {
		if n := testing.AllocsPerRun(50, func() { encodeBody(body) }); n != 1 {
			t.Errorf("%T: %.0f allocations, want 1 (the buffer)", body, n)
		}
	}
}

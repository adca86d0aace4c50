package events

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestDecodeRefuses: every way an inbound payload can say something other than what kpool
// reads is refused with its code, and the field named where there is one.
func TestDecodeRefuses(t *testing.T) {
	ack := `"id":"a1","type":"upload_ack","time":"2026-01-02T03:04:05Z","pool":"p1","ref":"` + testRef + `"`
	tick := `"id":"t1","type":"expiry_tick","time":"2026-01-02T03:04:05Z"`
	reg := `"id":"r1","type":"pool_registered","time":"2026-01-02T03:04:05Z","pool":"p1","register":{"identity":"a","cipher_suite":1,"signature_key":"AQID"`
	cases := []struct {
		name, data, code, want string
	}{
		{"JSON null", `null`, "malformed", "not a JSON object"},
		{"JSON array", `[{` + ack + `}]`, "malformed", "not a JSON object"},
		{"string", `"x"`, "malformed", "not a JSON object"},
		{"empty", ``, "malformed", "not a JSON object"},
		{"truncated", `{` + ack, "malformed", "end of input"},
		{"trailing data", `{` + ack + `} {}`, "malformed", "trailing data"},
		{"invalid UTF-8", `{` + strings.Replace(ack, `"a1"`, "\"a\xff\"", 1) + `}`, "malformed", "UTF-8"},
		{"upper-case ID", `{` + strings.Replace(ack, `"id"`, `"ID"`, 1) + `}`, "malformed", `case-sensitive: "id"`},
		{"upper-case TYPE", `{` + strings.Replace(ack, `"type"`, `"TYPE"`, 1) + `}`, "malformed", `case-sensitive: "type"`},
		{"mixed-case Ref", `{` + strings.Replace(ack, `"ref"`, `"Ref"`, 1) + `}`, "malformed", `case-sensitive: "ref"`},
		{"case variant beside the field", `{` + ack + `,"ID":"other"}`, "malformed", `"ID"`},
		{"duplicate id", `{` + ack + `,"id":"a2"}`, "malformed", `"id" appears twice`},
		{"duplicate type", `{` + ack + `,"type":"claimed"}`, "malformed", `"type" appears twice`},
		{"duplicate nested", `{` + reg + `,"identity":"b"}}`, "malformed", `"register.identity" appears twice`},
		{"unknown field", `{` + ack + `,"colour":"red"}`, "malformed", `unknown field "colour"`},
		{"unknown nested field", `{` + reg + `,"colour":"red"}}`, "malformed", `unknown field "register.colour"`},
		{"nested case variant", `{` + reg + `,"Policy":{}}}`, "malformed", `case-sensitive: "policy"`},
		{"ref on a tick", `{` + tick + `,"ref":"` + testRef + `"}`, "invalid_field", "ref: not a field of expiry_tick"},
		{"empty ref on a tick", `{` + tick + `,"ref":""}`, "invalid_field", "ref: not a field of expiry_tick"},
		{"reason on an ack", `{` + ack + `,"reason":"x"}`, "invalid_field", "reason: not a field of upload_ack"},
		{"retry on a claim", `{"id":"c","type":"claimed","time":"2026-01-02T03:04:05Z","pool":"p1","ref":"` + testRef + `","retry":false}`, "invalid_field", "retry: not a field of claimed"},
		{"register on a replenish", `{"id":"r","type":"replenish","time":"2026-01-02T03:04:05Z","pool":"p1","register":{}}`, "invalid_field", "register: not a field of replenish"},
		{"null id", `{` + strings.Replace(ack, `"a1"`, `null`, 1) + `}`, "invalid_field", "invalid id: null"},
		{"null nested", `{` + reg + `,"policy":null}}`, "invalid_field", "invalid register.policy: null"},
		{"number for a string", `{` + strings.Replace(ack, `"a1"`, `12`, 1) + `}`, "invalid_field", "invalid id"},
		{"overflowing days", `{` + reg + `,"policy":{"lifetime":"213504d"}}}`, "invalid_field", "invalid register.policy.lifetime"},
		{"overflowing hours", `{` + reg + `,"policy":{"delete_grace":"9999999999h"}}}`, "invalid_field", "invalid register.policy.delete_grace"},
		{"days plus hours past the bound", `{` + reg + `,"policy":{"lifetime":"3650d1h"}}}`, "invalid_field", "at most 3650d"},
		{"negative duration", `{` + reg + `,"policy":{"lifetime":"-1h"}}}`, "invalid_field", "invalid register.policy.lifetime"},
		{"duration as number", `{` + reg + `,"policy":{"lifetime":86400}}}`, "invalid_field", "register.policy.lifetime"},
		{"deep nesting", `{` + ack + `,"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "malformed", ""},
		{"too large", `{"id":"` + strings.Repeat("x", MaxEventSize) + `"}`, "too_large", ""},
		{"id too long", `{` + strings.Replace(ack, `"a1"`, `"`+strings.Repeat("i", MaxIDLength+1)+`"`, 1) + `}`, "invalid_field", "invalid id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.data))
			if err == nil {
				t.Fatalf("accepted %q", tc.data)
			}
			if got := Code(err); got != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: %v (code %s); want code %s and %q in the message", err, got, tc.code, tc.want)
			}
		})
	}
}

// TestDecodeAccepts: the strict reading still takes every well-formed event of every type.
func TestDecodeAccepts(t *testing.T) {
	for _, rec := range testRecords() {
		b, err := json.Marshal(rec.Event)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%s): %v", b, err)
		}
		if !reflect.DeepEqual(got, rec.Event) {
			t.Fatalf("Decode(%s) = %+v, want %+v", b, got, rec.Event)
		}
	}
	rej := `{"id":"x","type":"upload_rejected","time":"2026-01-02T03:04:05Z","pool":"p1","ref":"` + testRef + `","reason":"full","retry":true}`
	if e, err := Decode([]byte(rej)); err != nil || !e.Retry || e.Reason != "full" {
		t.Fatalf("upload_rejected: %+v %v", e, err)
	}
	low := `{"id":"x","type":"pool_registered","time":"2026-01-02T03:04:05Z","pool":"p1","register":{"identity":"a","cipher_suite":1,"signature_key":"AQID","policy":{"low_watermark":0,"lifetime":"3650d"}}}`
	e, err := Decode([]byte(low))
	if err != nil {
		t.Fatal(err)
	}
	if p := e.Register.Policy; p.LowWatermark == nil || *p.LowWatermark != 0 || p.Target != nil || time.Duration(*p.Lifetime) != MaxDuration {
		t.Fatalf("policy %+v: want low_watermark given as 0, target not given, lifetime 3650d", p)
	}
}

func TestValidateRefusesFieldsOfOtherTypes(t *testing.T) {
	e := Event{ID: "t", Type: TypeExpiryTick, Time: testTime, Ref: testRef}
	if err := Validate(e); !errors.Is(err, ErrInvalidField) || !strings.Contains(err.Error(), "not a field of expiry_tick") {
		t.Fatalf("Validate(tick with ref): %v", err)
	}
	e = Event{ID: "c", Type: TypeClaimed, Time: testTime, Pool: "p1", Ref: testRef, Register: &Register{}}
	if err := Validate(e); !errors.Is(err, ErrInvalidField) || !strings.Contains(err.Error(), "register") {
		t.Fatalf("Validate(claimed with register): %v", err)
	}
}

func TestParseDurationBounds(t *testing.T) {
	for s, want := range map[string]time.Duration{"84d": 84 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90s": 90 * time.Second, "3650d": MaxDuration, "87600h": MaxDuration, "0s": 0} {
		if got, err := ParseDuration(s); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"213504d", "3651d", "3650d1ns", "87601h", "9223372036854775807ns1h", "99999999999999999999d", "-1d", "+1d", "1d-1h", "d", "", "1x"} {
		if got, err := ParseDuration(s); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", s, got)
		}
	}
}

func TestSubjectPoolTokenMustBeAPoolID(t *testing.T) {
	s := Subjects{Prefix: DefaultPrefix}
	e := Event{ID: "a", Type: TypeUploadAck, Time: testTime, Pool: "p1", Ref: testRef}
	for _, subject := range []string{"kpool.events.\xff.upload_ack", "kpool.events.p\u00e9.upload_ack", "kpool.events..upload_ack"} {
		err := s.CheckSubject(subject, e)
		if Code(err) != "invalid_field" || !strings.Contains(err.Error(), "pool token") {
			t.Errorf("CheckSubject(%q): %v (code %s), want invalid_field naming the pool token", subject, err, Code(err))
		}
	}
}

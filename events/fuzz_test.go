package events

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecode: the inbound event decoder never panics, and what it accepts is a valid
// event that survives a round trip through its own encoding unchanged.
func FuzzDecode(f *testing.F) {
	for _, rec := range testRecords() {
		b, _ := json.Marshal(rec.Event)
		f.Add(b)
	}
	for _, s := range []string{
		`null`, `{}`, `[]`, `{"id":"a","ID":"b"}`, `{"id":"a","id":"a"}`,
		`{"id":"t","type":"expiry_tick","time":"2026-01-02T03:04:05Z","ref":""}`,
		`{"id":"r","type":"pool_registered","time":"2026-01-02T03:04:05Z","pool":"p","register":{"identity":"a","cipher_suite":1,"signature_key":"AQ==","policy":{"lifetime":"213504d","low_watermark":0}}}`,
		`{"id":"x","type":"upload_rejected","time":"2026-01-02T03:04:05Z","pool":"p","ref":"` + strings.Repeat("ab", 32) + `","reason":"r","retry":true}`,
		"{\"id\":\"\xff\"}", `{"id":"a","type":"claimed","time":"2026-01-02T03:04:05Z","pool":"p","ref":"` + strings.Repeat("AB", 32) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decode(data)
		if err != nil {
			if Code(err) == "rejected" {
				t.Fatalf("Decode(%q): error without a code: %v", data, err)
			}
			return
		}
		if err := Validate(e); err != nil {
			t.Fatalf("Decode accepted %q, Validate refuses it: %v", data, err)
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(b)
		if err != nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip of %q through %s: %+v %v", data, b, again, err)
		}
	})
}

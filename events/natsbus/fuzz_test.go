package natsbus_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
)

// FuzzDecodeRequest: every API request decoder never panics, refuses with a code the
// worker answers (bad_request or invalid_field), and what it accepts survives a round
// trip through its encoding unchanged. The first byte picks the endpoint.
func FuzzDecodeRequest(f *testing.F) {
	for i, s := range []string{
		`{"identity":"alice","cipher_suite":1,"policy":{"target":5,"low_watermark":0,"lifetime":"28d"},"recipient_key":"AQID","id":"r1"}`,
		`{"id":"rep-1"}`,
		`{"ref":"ab"}`,
		`{"ref":"ab","recipient_key":"AQID","cipher_suite":1,"id":"t1"}`,
		``, `null`, `{"ID":"x"}`, `{"id":"a","id":"b"}`, `{"policy":{"lifetime":"213504d"}}`,
	} {
		f.Add(byte(i), []byte(s))
	}
	f.Fuzz(func(t *testing.T, which byte, data []byte) {
		newReq := []func() any{
			func() any { return &natsbus.RegisterRequest{} },
			func() any { return &natsbus.ReplenishRequest{} },
			func() any { return &natsbus.GetRequest{} },
			func() any { return &natsbus.TakeRequest{} },
		}[int(which)%4]
		req := newReq()
		err := natsbus.DecodeRequest(data, req)
		if err != nil {
			var fe *events.FieldError
			if !errors.Is(err, events.ErrMalformed) && !errors.Is(err, events.ErrTooLarge) && !errors.As(err, &fe) {
				t.Fatalf("DecodeRequest(%T, %q): an error the worker cannot answer with a code: %v", req, data, err)
			}
			return
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again := newReq()
		if err := natsbus.DecodeRequest(b, again); err != nil {
			t.Fatalf("round trip of %q: its encoding %s is refused: %v", data, b, err)
		}
		if b2, _ := json.Marshal(again); string(b2) != string(b) {
			t.Fatalf("round trip of %q: %s, then %s", data, b, b2)
		}
	})
}

package natsbus

import (
	"bytes"
	"fmt"

	"github.com/kpool/kpool/events"
)

// DecodeRequest reads an API request body into req (a *RegisterRequest, *ReplenishRequest,
// *GetRequest or *TakeRequest) as strictly as events are read (events.UnmarshalStrict) and
// checks what can be checked without the store. An empty body is the zero request.
// Errors wrap events.ErrTooLarge or events.ErrMalformed (answered as bad_request), or are
// an *events.FieldError (invalid_field).
func DecodeRequest(data []byte, req any) error {
	if len(data) > events.MaxEventSize {
		return fmt.Errorf("%w: request of %d bytes, the limit is %d", events.ErrTooLarge, len(data), events.MaxEventSize)
	}
	if len(bytes.TrimSpace(data)) > 0 {
		if err := events.UnmarshalStrict(data, req); err != nil {
			return err
		}
	}
	switch r := req.(type) {
	case *RegisterRequest:
		return checkID(r.ID)
	case *ReplenishRequest:
		return checkID(r.ID)
	case *TakeRequest:
		return checkID(r.ID)
	case *GetRequest:
		return nil
	}
	return fmt.Errorf("natsbus: DecodeRequest of %T: not an API request", req)
}

// checkID bounds an optional idempotency id as event ids are bounded.
func checkID(id string) error {
	if len(id) > events.MaxIDLength {
		return &events.FieldError{Field: "id", Reason: fmt.Sprintf("longer than %d bytes", events.MaxIDLength)}
	}
	return nil
}

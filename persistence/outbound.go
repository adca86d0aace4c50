package persistence

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kpool/kpool/events"
)

// Outbox values are binary, not JSON: the body is already JSON and would be base64'd
// (a third larger, and slower) inside a JSON envelope. Layout: version byte 1, then
// ID, Kind, Pool and Body, each as uvarint length + bytes.
const outboundV1 = 1

func encodeOutbound(o events.Outbound) []byte {
	n := 1 + 4*binary.MaxVarintLen32 + len(o.ID) + len(o.Kind) + len(o.Pool) + len(o.Body)
	b := append(make([]byte, 0, n), outboundV1)
	for _, f := range [][]byte{[]byte(o.ID), []byte(o.Kind), []byte(o.Pool), o.Body} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

var errOutbound = errors.New("malformed outbox entry")

func decodeOutbound(b []byte) (events.Outbound, error) {
	if len(b) == 0 || b[0] != outboundV1 {
		return events.Outbound{}, fmt.Errorf("%w: unknown version", errOutbound)
	}
	b = b[1:]
	var f [4][]byte
	for i := range f {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return events.Outbound{}, fmt.Errorf("%w: field %d", errOutbound, i)
		}
		f[i], b = b[k:k+int(n)], b[k+int(n):]
	}
	if len(b) != 0 {
		return events.Outbound{}, fmt.Errorf("%w: trailing bytes", errOutbound)
	}
	return events.Outbound{ID: string(f[0]), Kind: events.Kind(f[1]), Pool: string(f[2]), Body: append([]byte(nil), f[3]...)}, nil
}

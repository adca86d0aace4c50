package mls

// TLS presentation language codec with RFC 9420 §2.1.2 variable-length vector headers.
// The reader works on one buffer owned by the decoder and hands out subslices, so a
// decode costs one copy of the input and no per-field allocations for opaque values.

// appendVarint appends the minimal RFC 9420 §2.1.2 encoding of n. MLS vectors are limited
// to 2^30-1 bytes; nothing in a KeyPackage comes near that (decoded values cannot exceed it).
func appendVarint(b []byte, n int) []byte {
	switch {
	case n < 1<<6:
		return append(b, byte(n))
	case n < 1<<14:
		return append(b, byte(n>>8)|0x40, byte(n))
	default:
		return append(b, byte(n>>24)|0x80, byte(n>>16), byte(n>>8), byte(n))
	}
}

func varintLen(n int) int {
	switch {
	case n < 1<<6:
		return 1
	case n < 1<<14:
		return 2
	default:
		return 4
	}
}

func appendOpaque(b, v []byte) []byte {
	return append(appendVarint(b, len(v)), v...)
}

func appendU16(b []byte, v uint16) []byte { return append(b, byte(v>>8), byte(v)) }

func appendU64(b []byte, v uint64) []byte {
	return append(b, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
		byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendU16List[T ~uint16](b []byte, l []T) []byte {
	b = appendVarint(b, 2*len(l))
	for _, v := range l {
		b = appendU16(b, uint16(v))
	}
	return b
}

// reader decodes from buf; the first error sticks and every later read returns zero values.
type reader struct {
	buf   []byte
	off   int
	err   error
	field string // what is being read, for error messages
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = &DecodeError{Field: r.field, Offset: r.off, Err: err}
	}
}

func (r *reader) remaining() int { return len(r.buf) - r.off }

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > r.remaining() {
		r.fail(ErrTruncated)
		return nil
	}
	v := r.buf[r.off : r.off+n : r.off+n]
	r.off += n
	return v
}

func (r *reader) u8() uint8 {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u16() uint16 {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return uint16(b[0])<<8 | uint16(b[1])
}

func (r *reader) u64() uint64 {
	b := r.bytes(8)
	if b == nil {
		return 0
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// varint reads a vector length header, rejecting the reserved prefix and non-minimal forms.
func (r *reader) varint() int {
	if r.err != nil {
		return 0
	}
	n, size, err := ParseVarint(r.buf[r.off:])
	if err != nil {
		r.fail(err)
		return 0
	}
	r.off += size
	return n
}

// ParseVarint decodes one RFC 9420 §2.1.2 vector-length header from the start of b and
// returns the length and the number of header bytes.
func ParseVarint(b []byte) (n, size int, err error) {
	if len(b) == 0 {
		return 0, 0, ErrTruncated
	}
	switch b[0] >> 6 {
	case 0:
		return int(b[0]), 1, nil
	case 1:
		if len(b) < 2 {
			return 0, 0, ErrTruncated
		}
		n = int(b[0]&0x3f)<<8 | int(b[1])
		if n < 1<<6 {
			return 0, 0, ErrNonMinimalLength
		}
		return n, 2, nil
	case 2:
		if len(b) < 4 {
			return 0, 0, ErrTruncated
		}
		n = int(b[0]&0x3f)<<24 | int(b[1])<<16 | int(b[2])<<8 | int(b[3])
		if n < 1<<14 {
			return 0, 0, ErrNonMinimalLength
		}
		return n, 4, nil
	default:
		return 0, 0, ErrReservedLengthPrefix
	}
}

// opaque reads opaque data<V>.
func (r *reader) opaque() []byte {
	n := r.varint()
	return r.bytes(n)
}

// list reads a vector<V> of variable-size elements, calling elem until the body is consumed.
// The element reader shares buf (cut at the vector's end), so offsets stay absolute and an
// element that runs past the end of its vector is reported as truncated.
func (r *reader) list(elem func(s *reader)) {
	n := r.varint()
	if r.err != nil {
		return
	}
	if n > r.remaining() {
		r.fail(ErrTruncated)
		return
	}
	end := r.off + n
	s := &reader{buf: r.buf[:end], off: r.off, field: r.field}
	for s.err == nil && s.off < end {
		elem(s)
	}
	if s.err != nil {
		r.err = s.err
		return
	}
	r.off = end
}

func readU16List[T ~uint16](r *reader) []T {
	n := r.varint()
	if r.err != nil {
		return nil
	}
	if n%2 != 0 {
		r.fail(ErrOddLength)
		return nil
	}
	b := r.bytes(n)
	if b == nil {
		return nil
	}
	l := make([]T, n/2)
	for i := range l {
		l[i] = T(uint16(b[2*i])<<8 | uint16(b[2*i+1]))
	}
	return l
}

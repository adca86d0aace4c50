package mls

import (
	"math/big"

	"github.com/cloudflare/circl/ecc/goldilocks"
)

// EdDSA public keys are points; Ed25519/Ed448 verification rejects undecodable ones, so a
// KeyPackage with such a key can never validate. These checks only run after a signature
// failed, to report ErrInvalidSignatureKey instead of a signature error at no cost to the
// success path.

var (
	ed25519P = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	ed25519D = func() *big.Int { // d = -121665/121666 mod p
		d := new(big.Int).ModInverse(big.NewInt(121666), ed25519P)
		d.Mul(d, big.NewInt(-121665))
		return d.Mod(d, ed25519P)
	}()
	ed25519Half = new(big.Int).Rsh(new(big.Int).Sub(ed25519P, big.NewInt(1)), 1)
)

// ed25519PointValid reports whether pub decodes to a curve point per RFC 8032 §5.1.3.
func ed25519PointValid(pub []byte) bool {
	if len(pub) != 32 {
		return false
	}
	var be [32]byte
	for i, c := range pub {
		be[31-i] = c
	}
	sign := be[0] >> 7
	be[0] &= 0x7f
	y := new(big.Int).SetBytes(be[:])
	if y.Cmp(ed25519P) >= 0 {
		return false
	}
	y2 := new(big.Int).Mul(y, y)
	u := new(big.Int).Sub(y2, big.NewInt(1))
	v := new(big.Int).Mul(ed25519D, y2)
	v.Add(v, big.NewInt(1))
	v.ModInverse(v.Mod(v, ed25519P), ed25519P)
	x2 := u.Mul(u, v)
	x2.Mod(x2, ed25519P)
	if x2.Sign() == 0 {
		return sign == 0
	}
	return new(big.Int).Exp(x2, ed25519Half, ed25519P).Cmp(big.NewInt(1)) == 0
}

func ed448PointValid(pub []byte) bool {
	_, err := goldilocks.FromBytes(pub)
	return err == nil && len(pub) == 57
}

// pointInvalid reports whether an EdDSA signature key is not a curve point.
func (v verifier) pointInvalid() bool {
	switch v.p.sig {
	case sigEd25519:
		return !ed25519PointValid(v.raw)
	case sigEd448:
		return !ed448PointValid(v.raw)
	}
	return false // ECDSA keys were fully checked when parsed
}

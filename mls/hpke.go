package mls

import (
	"crypto/ecdh"
	"crypto/hpke"
	"fmt"
	"io"

	"github.com/cloudflare/circl/dh/x448"
	circlhpke "github.com/cloudflare/circl/hpke"
)

// HPKE for the RFC 9420 suites: crypto/hpke for X25519 and the NIST curves, circl for X448
// (crypto/hpke has no DHKEM(X448)). The post-quantum KEMs are in pq.go.

// newHPKEKey makes an HPKE key pair from bytes read from rand, so a seeded reader gives the
// same keys. priv is RFC 9180 SerializePrivateKey (X25519/X448 clamped), pub
// SerializePublicKey.
func newHPKEKey(p *suiteParams, rand io.Reader) (priv, pub []byte, err error) {
	if p.kem.pq() {
		return newPQKey(p, rand)
	}
	priv = make([]byte, p.privLen)
	switch p.kem {
	case kemX448:
		if err := readFull(rand, priv); err != nil {
			return nil, nil, err
		}
		clampX448(priv)
		var sk, pk x448.Key
		copy(sk[:], priv)
		x448.KeyGen(&pk, &sk)
		return priv, pk[:], nil
	case kemX25519:
		if err := readFull(rand, priv); err != nil {
			return nil, nil, err
		}
		priv[0] &= 248
		priv[31] = priv[31]&127 | 64
		k, err := p.ecdh.NewPrivateKey(priv)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
		}
		return priv, k.PublicKey().Bytes(), nil
	default:
		var k *ecdh.PrivateKey
		err := drawScalar(rand, priv, func(s []byte) (err error) { k, err = p.ecdh.NewPrivateKey(s); return err })
		if err != nil {
			return nil, nil, err
		}
		return priv, k.PublicKey().Bytes(), nil
	}
}

func clampX448(k []byte) {
	k[0] &= 252
	k[55] |= 128
}

// hpkePublicFromPrivate returns the public key of a serialized HPKE private key.
func hpkePublicFromPrivate(p *suiteParams, priv []byte) ([]byte, error) {
	priv, err := normalizeHPKEPriv(p, priv)
	if err != nil {
		return nil, err
	}
	if p.kem.pq() {
		return pqPublicFromSeed(p, priv)
	}
	if p.kem == kemX448 {
		var sk, pk x448.Key
		copy(sk[:], priv)
		x448.KeyGen(&pk, &sk)
		return pk[:], nil
	}
	k, err := p.ecdh.NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("mls: %w: HPKE scalar out of range", ErrInvalidPrivateKey)
	}
	return k.PublicKey().Bytes(), nil
}

// checkHPKEPublic checks size and, for NIST curves, that the point is on the curve.
func checkHPKEPublic(p *suiteParams, pub []byte) error {
	if len(pub) != p.pubLen {
		return fmt.Errorf("%d bytes, want %d", len(pub), p.pubLen)
	}
	switch p.kem {
	case kemX25519, kemX448:
		return nil // every u-coordinate of the right length is accepted (RFC 7748)
	}
	if p.kem.pq() {
		return checkPQPublic(p, pub)
	}
	if _, err := p.ecdh.NewPublicKey(pub); err != nil {
		return fmt.Errorf("not an uncompressed point on the curve")
	}
	return nil
}

// NewHPKEKey makes an HPKE key pair for the suite's KEM from rand (nil: crypto/rand), e.g.
// a recipient key for a sealed take. Encodings as in a PrivateBundle.
func NewHPKEKey(suite CipherSuite, rand io.Reader) (priv, pub []byte, err error) {
	p, err := params(suite)
	if err != nil {
		return nil, nil, err
	}
	return newHPKEKey(p, orDefault(rand))
}

// PublicFromPrivate returns the HPKE public key of a serialized HPKE private key, e.g. to
// check a PrivateBundle against its KeyPackage.
func PublicFromPrivate(suite CipherSuite, priv []byte) ([]byte, error) {
	p, err := params(suite)
	if err != nil {
		return nil, err
	}
	return hpkePublicFromPrivate(p, priv)
}

// SealTo encrypts plaintext to an HPKE public key of the suite in base mode with empty aad.
// rand is used by the X448 and ML-KEM-512 suites only; crypto/hpke draws its ephemeral
// key from the system's secure source.
func SealTo(suite CipherSuite, recipientPub, info, plaintext []byte, rand io.Reader) (enc, ct []byte, err error) {
	p, err := params(suite)
	if err != nil {
		return nil, nil, err
	}
	if err := checkHPKEPublic(p, recipientPub); err != nil {
		return nil, nil, fmt.Errorf("mls: HPKE recipient key: %s", err)
	}
	if p.kem == kemMLKEM512 {
		return sealMLKEM512(p, recipientPub, info, nil, plaintext, rand)
	}
	if p.kem == kemX448 {
		s := circlSuite(p)
		pk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPublicKey(recipientPub)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: HPKE recipient key: %v", err)
		}
		snd, err := s.NewSender(pk, info)
		if err != nil {
			return nil, nil, fmt.Errorf("mls: HPKE sender: %v", err)
		}
		enc, sealer, err := snd.Setup(orDefault(rand))
		if err != nil {
			return nil, nil, fmt.Errorf("mls: HPKE setup: %v", err)
		}
		ct, err := sealer.Seal(plaintext, nil)
		return enc, ct, err
	}
	pk, err := stdKEM(p).NewPublicKey(recipientPub)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: HPKE recipient key: %v", err)
	}
	kdf, aead := stdHPKE(p)
	enc, s, err := hpke.NewSender(pk, kdf, aead, info)
	if err != nil {
		return nil, nil, fmt.Errorf("mls: HPKE sender: %v", err)
	}
	ct, err = s.Seal(nil, plaintext)
	return enc, ct, err
}

// Open decrypts what SealTo produced, using a serialized HPKE private key. Failures return
// ErrDecrypt without detail, so nothing about the key leaks.
func Open(suite CipherSuite, priv, enc, info, ct []byte) ([]byte, error) {
	p, err := params(suite)
	if err != nil {
		return nil, err
	}
	if priv, err = normalizeHPKEPriv(p, priv); err != nil {
		return nil, err
	}
	if p.kem == kemMLKEM512 {
		return openMLKEM512(p, priv, enc, info, nil, ct)
	}
	if p.kem == kemX448 {
		sk, err := circlhpke.KEM_X448_HKDF_SHA512.Scheme().UnmarshalBinaryPrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
		}
		r, err := circlSuite(p).NewReceiver(sk, info)
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrDecrypt)
		}
		o, err := r.Setup(enc)
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrDecrypt)
		}
		pt, err := o.Open(ct, nil)
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrDecrypt)
		}
		return pt, nil
	}
	sk, err := stdKEM(p).NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
	}
	kdf, aead := stdHPKE(p)
	r, err := hpke.NewRecipient(enc, sk, kdf, aead, info)
	if err != nil {
		return nil, fmt.Errorf("mls: %w", ErrDecrypt)
	}
	pt, err := r.Open(nil, ct)
	if err != nil {
		return nil, fmt.Errorf("mls: %w", ErrDecrypt)
	}
	return pt, nil
}

func stdHPKE(p *suiteParams) (hpke.KDF, hpke.AEAD) {
	kdf, _ := hpke.NewKDF(p.kdfID)    // ids come from the fixed table above
	aead, _ := hpke.NewAEAD(p.aeadID) // ditto
	return kdf, aead
}

func circlSuite(p *suiteParams) circlhpke.Suite {
	return circlhpke.NewSuite(circlhpke.KEM(p.kemID), circlhpke.KDF(p.kdfID), circlhpke.AEAD(p.aeadID))
}

// encryptContext builds EncryptContext{opaque label<V> = "MLS 1.0 " + label; opaque context<V>}.
func encryptContext(label string, context []byte) []byte { return signContent(label, context) }

// EncryptWithLabel implements RFC 9420 §5.1.3 (e.g. label "Welcome" with the
// encrypted_group_info as context, to the new member's init_key).
func EncryptWithLabel(suite CipherSuite, pub []byte, label string, context, plaintext []byte, rand io.Reader) (kemOutput, ciphertext []byte, err error) {
	return SealTo(suite, pub, encryptContext(label, context), plaintext, rand)
}

// DecryptWithLabel implements RFC 9420 §5.1.3 with a serialized HPKE private key.
func DecryptWithLabel(suite CipherSuite, priv []byte, label string, context, kemOutput, ciphertext []byte) ([]byte, error) {
	return Open(suite, priv, kemOutput, encryptContext(label, context), ciphertext)
}

// normalizeHPKEPriv restores leading zeros a NIST-curve scalar may have lost and checks
// the length; the error names sizes only.
func normalizeHPKEPriv(p *suiteParams, priv []byte) ([]byte, error) {
	if p.ecdh != nil && p.kem != kemX25519 {
		priv = padScalar(priv, p.privLen)
	}
	if len(priv) != p.privLen {
		return nil, fmt.Errorf("mls: %w: HPKE private key must be %d bytes, got %d", ErrInvalidPrivateKey, p.privLen, len(priv))
	}
	return priv, nil
}

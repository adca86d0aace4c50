package mls

import (
	"crypto"
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"io"

	"github.com/cloudflare/circl/kem/mlkem/mlkem512"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// The post-quantum KEMs (draft-ietf-hpke-pq): ML-KEM-768, ML-KEM-1024 and X-Wing come from
// crypto/hpke; ML-KEM-512 from circl with the HPKE key schedule of hpkeschedule.go, since
// crypto/hpke has no ML-KEM-512. Every private key is the KEM's seed (ML-KEM d‖z, 64 bytes;
// X-Wing 32 bytes), as draft-ietf-hpke-pq serializes it; public keys are the encapsulation
// keys (X-Wing: ML-KEM-768 key ‖ X25519 point).

func (k kemKind) pq() bool { return k >= kemMLKEM512 }

// pqSuite builds the table entry of a post-quantum suite (HPKE KDF HKDF-SHA512 for all).
func pqSuite(name string, kem kemKind, aeadID uint16, h crypto.Hash, sig sigKind) *suiteParams {
	p := &suiteParams{name: name, kem: kem, kdfID: 3, aeadID: aeadID, hash: h, sig: sig}
	switch kem {
	case kemMLKEM512:
		p.kemID, p.pubLen, p.privLen = 0x0040, mlkem512.PublicKeySize, mlkem512.KeySeedSize
	case kemMLKEM768:
		p.kemID, p.pubLen, p.privLen = 0x0041, 1184, 64
	case kemMLKEM1024:
		p.kemID, p.pubLen, p.privLen = 0x0042, 1568, 64
	case kemXWing:
		p.kemID, p.pubLen, p.privLen = 0x647a, 1216, 32
	}
	switch h {
	case crypto.SHA256:
		p.newHash, p.hashSize = sha256.New, 32
	case crypto.SHA384:
		p.newHash, p.hashSize = sha512.New384, 48
	default:
		p.newHash, p.hashSize = sha512.New, 64
	}
	if sig == sigMLDSA87 {
		p.sigPub, p.sigPriv = mldsa87.PublicKeySize, mldsa87.SeedSize
	} else {
		p.sigPub, p.sigPriv = 32, 32
	}
	return p
}

// stdKEM is the crypto/hpke KEM of a suite; nil for X448 and ML-KEM-512.
func stdKEM(p *suiteParams) hpke.KEM {
	switch p.kem {
	case kemMLKEM768:
		return hpke.MLKEM768()
	case kemMLKEM1024:
		return hpke.MLKEM1024()
	case kemXWing:
		return hpke.MLKEM768X25519()
	case kemX448, kemMLKEM512:
		return nil
	}
	return hpke.DHKEM(p.ecdh)
}

// newPQKey reads a seed from rand and derives the public key from it.
func newPQKey(p *suiteParams, rand io.Reader) (priv, pub []byte, err error) {
	seed := make([]byte, p.privLen)
	if err := readFull(rand, seed); err != nil {
		return nil, nil, err
	}
	pub, err = pqPublicFromSeed(p, seed)
	if err != nil {
		return nil, nil, err
	}
	return seed, pub, nil
}

// pqPublicFromSeed expects a seed of the right length (normalizeHPKEPriv checked it).
// ML-KEM-768/1024 go to crypto/mlkem directly: crypto/hpke's private key copies the
// encapsulation key twice on the way (tens of KB per key, see docs/benchmarks.md).
func pqPublicFromSeed(p *suiteParams, seed []byte) ([]byte, error) {
	switch p.kem {
	case kemMLKEM512:
		pk, _ := mlkem512.NewKeyFromSeed(seed)
		pub := make([]byte, mlkem512.PublicKeySize)
		pk.Pack(pub)
		return pub, nil
	case kemMLKEM768:
		dk, err := mlkem.NewDecapsulationKey768(seed)
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
		}
		return dk.EncapsulationKey().Bytes(), nil
	case kemMLKEM1024:
		dk, err := mlkem.NewDecapsulationKey1024(seed)
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
		}
		return dk.EncapsulationKey().Bytes(), nil
	}
	k, err := stdKEM(p).NewPrivateKey(seed)
	if err != nil {
		return nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
	}
	return k.PublicKey().Bytes(), nil
}

// checkPQPublic checks the size and the FIPS 203 encapsulation-key check (every
// coefficient reduced modulo q).
func checkPQPublic(p *suiteParams, pub []byte) error {
	if len(pub) != p.pubLen {
		return fmt.Errorf("%d bytes, want %d", len(pub), p.pubLen)
	}
	if p.kem == kemMLKEM512 {
		var pk mlkem512.PublicKey
		if pk.Unpack(pub) != nil {
			return fmt.Errorf("not an ML-KEM-512 encapsulation key (coefficient out of range)")
		}
		return nil
	}
	if _, err := stdKEM(p).NewPublicKey(pub); err != nil {
		return fmt.Errorf("not an encapsulation key of KEM 0x%04x (coefficient out of range)", p.kemID)
	}
	return nil
}

// sealMLKEM512 is SealTo for ML-KEM-512. encSeed is the ML-KEM encapsulation randomness
// (32 bytes read from rand); tests pass the draft's vectors through it.
func sealMLKEM512(p *suiteParams, pub, info, aad, plaintext []byte, rand io.Reader) (enc, ct []byte, err error) {
	var pk mlkem512.PublicKey
	if pk.Unpack(pub) != nil {
		return nil, nil, fmt.Errorf("mls: HPKE recipient key: not an ML-KEM-512 encapsulation key")
	}
	var m [mlkem512.EncapsulationSeedSize]byte
	if err := readFull(orDefault(rand), m[:]); err != nil {
		return nil, nil, err
	}
	enc = make([]byte, mlkem512.CiphertextSize)
	var shared [mlkem512.SharedKeySize]byte
	pk.EncapsulateTo(enc, shared[:], m[:])
	s, err := newHPKESchedule(p.kemID, p.kdfID, p.aeadID, shared[:], info)
	if err != nil {
		return nil, nil, err
	}
	return enc, s.aead.Seal(nil, s.nonce, plaintext, aad), nil
}

// openMLKEM512 is Open for ML-KEM-512; every failure is ErrDecrypt.
func openMLKEM512(p *suiteParams, seed, enc, info, aad, ct []byte) ([]byte, error) {
	if len(enc) != mlkem512.CiphertextSize {
		return nil, fmt.Errorf("mls: %w", ErrDecrypt)
	}
	_, sk := mlkem512.NewKeyFromSeed(seed)
	var shared [mlkem512.SharedKeySize]byte
	sk.DecapsulateTo(shared[:], enc)
	s, err := newHPKESchedule(p.kemID, p.kdfID, p.aeadID, shared[:], info)
	if err != nil {
		return nil, fmt.Errorf("mls: %w", ErrDecrypt)
	}
	pt, err := s.aead.Open(nil, s.nonce, ct, aad)
	if err != nil {
		return nil, fmt.Errorf("mls: %w", ErrDecrypt)
	}
	return pt, nil
}

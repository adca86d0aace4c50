package mls

import (
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem512"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// Bare baselines of the PQ suites for bench_test.go, straight on the libraries: a KEM key
// pair from a fresh seed with its public key encoded; the FIPS 203 check of a public key;
// ML-DSA-87 public key decoding and two verifications.

func barePQKey(b *testing.B, p *suiteParams) {
	seed := make([]byte, p.privLen)
	if _, err := rand.Read(seed); err != nil {
		b.Fatal(err)
	}
	switch p.kem {
	case kemMLKEM512:
		pk, _ := mlkem512.NewKeyFromSeed(seed)
		var buf [mlkem512.PublicKeySize]byte
		pk.Pack(buf[:])
	case kemMLKEM768:
		k, err := mlkem.NewDecapsulationKey768(seed)
		if err != nil {
			b.Fatal(err)
		}
		_ = k.EncapsulationKey().Bytes()
	case kemMLKEM1024:
		k, err := mlkem.NewDecapsulationKey1024(seed)
		if err != nil {
			b.Fatal(err)
		}
		_ = k.EncapsulationKey().Bytes()
	case kemXWing:
		k, err := hpke.MLKEM768X25519().NewPrivateKey(seed)
		if err != nil {
			b.Fatal(err)
		}
		_ = k.PublicKey().Bytes()
	}
}

func barePQPublic(p *suiteParams, pub []byte) bool {
	var err error
	switch p.kem {
	case kemMLKEM512:
		var pk mlkem512.PublicKey
		err = pk.Unpack(pub)
	case kemMLKEM768:
		_, err = mlkem.NewEncapsulationKey768(pub)
	case kemMLKEM1024:
		_, err = mlkem.NewEncapsulationKey1024(pub)
	case kemXWing:
		_, err = hpke.MLKEM768X25519().NewPublicKey(pub)
	}
	return err == nil
}

func bareMLDSAVerify(pub, m1, m2, s1, s2 []byte) bool {
	var pk mldsa87.PublicKey
	if pk.UnmarshalBinary(pub) != nil {
		return false
	}
	return mldsa87.Verify(&pk, m1, nil, s1) && mldsa87.Verify(&pk, m2, nil, s2)
}

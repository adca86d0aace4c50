package mls

import (
	"fmt"
	"io"

	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// ML-DSA-87 (FIPS 204) for suites 85–88, as ts-mls signs with it: pure ML-DSA with an empty
// context string over the SignContent bytes. The private key is the 32-byte seed ξ, the
// public key the 2 592-byte encoding, a signature 4 627 bytes. Signing is hedged (FIPS 204's
// default, fresh randomness per signature), so these KeyPackages differ in their
// signatures only, like the ECDSA suites'.

func newMLDSAKey(rand io.Reader) (seed, pub []byte, err error) {
	var s [mldsa87.SeedSize]byte
	if err := readFull(rand, s[:]); err != nil {
		return nil, nil, err
	}
	pk, _ := mldsa87.NewKeyFromSeed(&s)
	return s[:], pk.Bytes(), nil
}

func newMLDSASigner(seed []byte) *mldsaSigner {
	var s [mldsa87.SeedSize]byte
	copy(s[:], seed)
	pk, sk := mldsa87.NewKeyFromSeed(&s)
	clear(s[:])
	return &mldsaSigner{sk: sk, pub: pk.Bytes()}
}

type mldsaSigner struct {
	sk  *mldsa87.PrivateKey
	pub []byte
}

func (s *mldsaSigner) Public() []byte { return s.pub }
func (s *mldsaSigner) Sign(msg []byte) ([]byte, error) {
	sig := make([]byte, mldsa87.SignatureSize)
	if err := mldsa87.SignTo(s.sk, msg, nil, true, sig); err != nil {
		return nil, fmt.Errorf("mls: ML-DSA-87: %w", err)
	}
	return sig, nil
}
func (s *mldsaSigner) String() string             { return "mls.Signer{ML-DSA-87, private key redacted}" }
func (s *mldsaSigner) GoString() string           { return s.String() }
func (s *mldsaSigner) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

func parseMLDSAPublic(pub []byte) (*mldsa87.PublicKey, error) {
	if len(pub) != mldsa87.PublicKeySize {
		return nil, fmt.Errorf("ML-DSA-87 key of %d bytes", len(pub))
	}
	pk := new(mldsa87.PublicKey)
	if err := pk.UnmarshalBinary(pub); err != nil {
		return nil, fmt.Errorf("not an ML-DSA-87 public key")
	}
	return pk, nil
}

func verifyMLDSA(pk *mldsa87.PublicKey, msg, sig []byte) bool {
	return mldsa87.Verify(pk, msg, nil, sig)
}

// maxSigSize bounds a signature of the suite, to size buffers.
func maxSigSize(p *suiteParams) int {
	if p.sig == sigMLDSA87 {
		return mldsa87.SignatureSize
	}
	return 139 // DER P-521 signature upper bound
}

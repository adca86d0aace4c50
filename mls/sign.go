package mls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"

	"github.com/cloudflare/circl/sign/ed448"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// Signer signs MLS SignContent bytes with a suite's signature scheme. Public returns the
// raw public key as it appears in a LeafNode (Ed25519/Ed448 raw, ECDSA uncompressed SEC1).
// For ECDSA suites Sign hashes msg with the suite hash and returns a DER signature.
type Signer interface {
	Public() []byte
	Sign(msg []byte) ([]byte, error)
}

// NewSignatureKey makes a signature key pair for the suite from bytes read from rand
// (nil: crypto/rand). priv is serialized as in the interop vectors: the EdDSA seed or the
// ECDSA big-endian scalar. The same rand bytes give the same key.
func NewSignatureKey(suite CipherSuite, rand io.Reader) (priv, pub []byte, err error) {
	p, err := params(suite)
	if err != nil {
		return nil, nil, err
	}
	rand = orDefault(rand)
	switch p.sig {
	case sigEd25519:
		seed := make([]byte, ed25519.SeedSize)
		if err := readFull(rand, seed); err != nil {
			return nil, nil, err
		}
		k := ed25519.NewKeyFromSeed(seed)
		return seed, []byte(k.Public().(ed25519.PublicKey)), nil
	case sigEd448:
		seed := make([]byte, ed448.SeedSize)
		if err := readFull(rand, seed); err != nil {
			return nil, nil, err
		}
		k := ed448.NewKeyFromSeed(seed)
		return seed, []byte(k.Public().(ed448.PublicKey)), nil
	case sigMLDSA87:
		return newMLDSAKey(rand)
	default:
		k, scalar, err := randomECDSA(p, rand)
		if err != nil {
			return nil, nil, err
		}
		pub, err := k.PublicKey.Bytes()
		if err != nil {
			return nil, nil, fmt.Errorf("mls: ECDSA public key: %w", ErrInvalidPrivateKey)
		}
		return scalar, pub, nil
	}
}

// randomECDSA reads the scalar from rand with drawScalar.
func randomECDSA(p *suiteParams, rand io.Reader) (*ecdsa.PrivateKey, []byte, error) {
	scalar := make([]byte, p.sigPriv)
	var k *ecdsa.PrivateKey
	err := drawScalar(rand, scalar, func(s []byte) (err error) { k, err = ecdsa.ParseRawPrivateKey(p.ecdsa, s); return err })
	if err != nil {
		return nil, nil, err
	}
	return k, scalar, nil
}

// drawScalar fills scalar from rand until parse accepts it (rejection sampling of a NIST
// curve scalar, so a seeded reader gives the same key). The 66-byte P-521 scalar keeps only
// 521 bits, so the rejection rate stays near one half rather than 1-2^-7.
func drawScalar(rand io.Reader, scalar []byte, parse func([]byte) error) error {
	for range 64 {
		if err := readFull(rand, scalar); err != nil {
			return err
		}
		if len(scalar) == 66 {
			scalar[0] &= 0x01
		}
		if parse(scalar) == nil {
			return nil
		}
	}
	return fmt.Errorf("mls: %w: no valid scalar in 64 draws", ErrRandom)
}

// SignerFromPrivate loads a private key serialized as NewSignatureKey returns it.
func SignerFromPrivate(suite CipherSuite, priv []byte) (Signer, error) {
	p, err := params(suite)
	if err != nil {
		return nil, err
	}
	if p.ecdsa != nil {
		priv = padScalar(priv, p.sigPriv)
	}
	if len(priv) != p.sigPriv {
		return nil, fmt.Errorf("mls: %w: %s signature key must be %d bytes, got %d", ErrInvalidPrivateKey, suite, p.sigPriv, len(priv))
	}
	switch p.sig {
	case sigEd25519:
		k := ed25519.NewKeyFromSeed(priv)
		return &edSigner{ed: k, pub: bytes.Clone(k[32:])}, nil
	case sigEd448:
		k := ed448.NewKeyFromSeed(priv)
		return &ed448Signer{k: k, pub: []byte(k.Public().(ed448.PublicKey))}, nil
	case sigMLDSA87:
		return newMLDSASigner(priv), nil
	default:
		k, err := ecdsa.ParseRawPrivateKey(p.ecdsa, priv)
		if err != nil {
			return nil, fmt.Errorf("mls: %w: %s scalar out of range", ErrInvalidPrivateKey, suite)
		}
		pub, err := k.PublicKey.Bytes()
		if err != nil {
			return nil, fmt.Errorf("mls: %w", ErrInvalidPrivateKey)
		}
		return &ecdsaSigner{k: k, pub: pub, p: p}, nil
	}
}

// The concrete signers keep the private key unexported and redact it when printed.

type edSigner struct {
	ed  ed25519.PrivateKey
	pub []byte
}

func (s *edSigner) Public() []byte                  { return s.pub }
func (s *edSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.ed, msg), nil }
func (s *edSigner) String() string                  { return "mls.Signer{Ed25519, private key redacted}" }
func (s *edSigner) GoString() string                { return s.String() }
func (s *edSigner) Format(f fmt.State, _ rune)      { io.WriteString(f, s.String()) }

type ed448Signer struct {
	k   ed448.PrivateKey
	pub []byte
}

func (s *ed448Signer) Public() []byte                  { return s.pub }
func (s *ed448Signer) Sign(msg []byte) ([]byte, error) { return ed448.Sign(s.k, msg, ""), nil }
func (s *ed448Signer) String() string                  { return "mls.Signer{Ed448, private key redacted}" }
func (s *ed448Signer) GoString() string                { return s.String() }
func (s *ed448Signer) Format(f fmt.State, _ rune)      { io.WriteString(f, s.String()) }

type ecdsaSigner struct {
	k   *ecdsa.PrivateKey
	pub []byte
	p   *suiteParams
}

func (s *ecdsaSigner) Public() []byte { return s.pub }
func (s *ecdsaSigner) Sign(msg []byte) ([]byte, error) {
	h := s.p.newHash()
	h.Write(msg)
	var buf [64]byte
	return ecdsa.SignASN1(rand.Reader, s.k, h.Sum(buf[:0]))
}
func (s *ecdsaSigner) String() string             { return "mls.Signer{ECDSA, private key redacted}" }
func (s *ecdsaSigner) GoString() string           { return s.String() }
func (s *ecdsaSigner) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// verifier is a parsed signature public key, so a KeyPackage's two signatures share one parse.
type verifier struct {
	p     *suiteParams
	raw   []byte
	ecdsa *ecdsa.PublicKey
	mldsa *mldsa87.PublicKey
}

// parseSignatureKey checks the key's size and, for ECDSA, that it is a point on the curve;
// compressed and uncompressed SEC1 points are accepted.
func parseSignatureKey(p *suiteParams, pub []byte) (verifier, error) {
	v := verifier{p: p, raw: pub}
	switch p.sig {
	case sigEd25519:
		if len(pub) != ed25519.PublicKeySize {
			return v, fmt.Errorf("Ed25519 key of %d bytes", len(pub))
		}
	case sigEd448:
		if len(pub) != ed448.PublicKeySize {
			return v, fmt.Errorf("Ed448 key of %d bytes", len(pub))
		}
	case sigMLDSA87:
		k, err := parseMLDSAPublic(pub)
		if err != nil {
			return v, err
		}
		v.mldsa = k
	default:
		k, err := parseECDSAPublic(p.ecdsa, pub)
		if err != nil {
			return v, err
		}
		v.ecdsa = k
	}
	return v, nil
}

func parseECDSAPublic(c elliptic.Curve, pub []byte) (*ecdsa.PublicKey, error) {
	byteLen := (c.Params().BitSize + 7) / 8
	switch {
	case len(pub) == 1+2*byteLen && pub[0] == 4:
		k, err := ecdsa.ParseUncompressedPublicKey(c, pub)
		if err != nil {
			return nil, fmt.Errorf("uncompressed point not on %s", c.Params().Name)
		}
		return k, nil
	case len(pub) == 1+byteLen && (pub[0] == 2 || pub[0] == 3):
		// The standard library decompresses only to coordinates; the key is then built from
		// the uncompressed encoding (PublicKey.X and .Y are deprecated).
		x, y := elliptic.UnmarshalCompressed(c, pub)
		if x == nil {
			return nil, fmt.Errorf("compressed point not on %s", c.Params().Name)
		}
		full := make([]byte, 1+2*byteLen)
		full[0] = 4
		x.FillBytes(full[1 : 1+byteLen])
		y.FillBytes(full[1+byteLen:])
		return ecdsa.ParseUncompressedPublicKey(c, full)
	}
	return nil, fmt.Errorf("%s key of %d bytes with prefix 0x%02x", c.Params().Name, len(pub), firstByte(pub))
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

func (v verifier) verify(msg, sig []byte) bool {
	switch v.p.sig {
	case sigEd25519:
		return ed25519.Verify(v.raw, msg, sig)
	case sigEd448:
		return ed448.Verify(v.raw, msg, sig, "")
	case sigMLDSA87:
		return verifyMLDSA(v.mldsa, msg, sig)
	default:
		h := v.p.newHash()
		h.Write(msg)
		var buf [64]byte
		return ecdsa.VerifyASN1(v.ecdsa, h.Sum(buf[:0]), sig)
	}
}

// signContent builds SignContent{opaque label<V> = "MLS 1.0 " + label; opaque content<V>}.
func signContent(label string, content []byte) []byte {
	const prefix = "MLS 1.0 "
	n := len(prefix) + len(label)
	b := make([]byte, 0, varintLen(n)+n+varintLen(len(content))+len(content))
	b = appendVarint(b, n)
	b = append(b, prefix...)
	b = append(b, label...)
	return appendOpaque(b, content)
}

// SignWithLabel implements RFC 9420 §5.1.2 SignWithLabel.
func SignWithLabel(s Signer, label string, content []byte) ([]byte, error) {
	return s.Sign(signContent(label, content))
}

// VerifyWithLabel implements RFC 9420 §5.1.2 VerifyWithLabel. pub is the raw signature
// public key; ECDSA keys may be compressed or uncompressed.
func VerifyWithLabel(suite CipherSuite, pub []byte, label string, content, sig []byte) error {
	p, err := params(suite)
	if err != nil {
		return err
	}
	v, err := parseSignatureKey(p, pub)
	if err != nil {
		return fmt.Errorf("mls: %w: %v", ErrInvalidSignatureKey, err)
	}
	if !v.verify(signContent(label, content), sig) {
		if v.pointInvalid() {
			return fmt.Errorf("mls: %w: not a curve point", ErrInvalidSignatureKey)
		}
		return fmt.Errorf("mls: %w (label %q)", ErrSignature, label)
	}
	return nil
}

func orDefault(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

func readFull(r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("mls: %w: %v", ErrRandom, err)
	}
	return nil
}

// padScalar left-pads a big-endian scalar to size bytes: some implementations (e.g. the
// P-521 interop vectors) drop leading zero bytes.
func padScalar(b []byte, size int) []byte {
	if len(b) >= size || len(b) == 0 {
		return b
	}
	out := make([]byte, size)
	copy(out[size-len(b):], b)
	return out
}

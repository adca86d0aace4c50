package mls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/cloudflare/circl/sign/ed448"
)

// Bounds of an x509 credential: the chain travels in every KeyPackage of a pool, and a
// KeyPackage must fit in one kpool event (16 KiB, base64 in JSON).
const (
	MaxX509ChainSize   = 6 << 10 // DER bytes of all certificates together
	MaxX509ChainLength = 8
)

var oidEd448 = asn1.ObjectIdentifier{1, 3, 101, 113}

// SignaturePublicKey returns a raw MLS signature key of suite as a crypto.PublicKey
// (ed25519.PublicKey, *ecdsa.PublicKey, circl's ed448.PublicKey or mldsa87.PublicKey): the key a
// certificate authority certifies for an x509 credential.
func SignaturePublicKey(suite CipherSuite, raw []byte) (crypto.PublicKey, error) {
	p, err := params(suite)
	if err != nil {
		return nil, err
	}
	v, err := parseSignatureKey(p, raw)
	if err != nil {
		return nil, fmt.Errorf("mls: %w: %v", ErrInvalidSignatureKey, err)
	}
	switch p.sig {
	case sigEd25519:
		return ed25519.PublicKey(bytes.Clone(raw)), nil
	case sigEd448:
		return ed448.PublicKey(bytes.Clone(raw)), nil
	case sigMLDSA87:
		return v.mldsa, nil
	}
	return v.ecdsa, nil
}

// ParseCertificates reads one or more certificates, PEM ("CERTIFICATE" blocks) or a
// single DER certificate, in the order given.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("mls: %w: not a PEM or DER certificate: %v", ErrX509, err)
		}
		return []*x509.Certificate{c}, nil
	}
	var out []*x509.Certificate
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("mls: %w: PEM block %d is %q, not CERTIFICATE", ErrX509, n, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("mls: %w: PEM block %d: %v", ErrX509, n, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("mls: %w: no CERTIFICATE block", ErrX509)
	}
	return out, nil
}

// CheckX509Chain checks an x509 credential's chain (DER, leaf first) for a LeafNode of
// suite with signature key signatureKey: the chain is well formed (1 to
// MaxX509ChainLength certificates within MaxX509ChainSize bytes, each parses, each is
// issued and signed by the next, which is a CA) and the leaf certificate's public key is
// signatureKey. Whether the chain is trusted is the application's business; with
// anchors, the chain must also end at or under one of them and every certificate,
// anchor included, must be within its validity period at at. The error wraps ErrX509.
func CheckX509Chain(suite CipherSuite, signatureKey []byte, chain [][]byte, anchors []*x509.Certificate, at time.Time) error {
	p, err := params(suite)
	if err != nil {
		return err
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("mls: %w: %s", ErrX509, fmt.Sprintf(format, a...))
	}
	if p.sig == sigMLDSA87 {
		return bad("x509 credentials are not supported for ML-DSA-87 signature keys (suites 85–88)")
	}
	size := 0
	for _, c := range chain {
		size += len(c)
	}
	switch {
	case len(chain) == 0:
		return bad("empty certificate chain")
	case len(chain) > MaxX509ChainLength:
		return bad("%d certificates; at most %d", len(chain), MaxX509ChainLength)
	case size > MaxX509ChainSize:
		return bad("chain of %d bytes; at most %d", size, MaxX509ChainSize)
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return bad("certificate %d does not parse: %v", i, err)
		}
	}
	v, err := parseSignatureKey(p, signatureKey)
	if err != nil {
		return bad("signature key: %v", err)
	}
	if !certHoldsKey(p, certs[0], v) {
		return bad("the leaf certificate's public key (%s) is not the signature key", keyAlgorithm(certs[0]))
	}
	for i := 0; i+1 < len(certs); i++ {
		if err := checkIssued(certs[i], certs[i+1]); err != nil {
			return bad("certificate %d is not issued by certificate %d: %v", i, i+1, err)
		}
	}
	if len(anchors) == 0 {
		return nil
	}
	for i, c := range certs {
		if at.Before(c.NotBefore) || at.After(c.NotAfter) {
			return bad("certificate %d is valid from %s to %s, not at %s", i, c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
		}
	}
	last := certs[len(certs)-1]
	var reasons []string
	for _, a := range anchors {
		if bytes.Equal(a.Raw, last.Raw) {
			return nil
		}
		err := checkIssued(last, a)
		if err == nil && (at.Before(a.NotBefore) || at.After(a.NotAfter)) {
			err = fmt.Errorf("the anchor is not valid at %s", at.UTC().Format(time.RFC3339))
		}
		if err == nil {
			return nil
		}
		reasons = append(reasons, fmt.Sprintf("%q: %v", a.Subject.String(), err))
	}
	return bad("the chain does not end at or under a trust anchor (%s)", joinReasons(reasons))
}

func joinReasons(r []string) string {
	if len(r) > 3 {
		r = append(r[:3], fmt.Sprintf("and %d more", len(r)-3))
	}
	s := ""
	for i, x := range r {
		if i > 0 {
			s += "; "
		}
		s += x
	}
	return s
}

func certHoldsKey(p *suiteParams, c *x509.Certificate, v verifier) bool {
	switch p.sig {
	case sigEd25519:
		k, ok := c.PublicKey.(ed25519.PublicKey)
		return ok && bytes.Equal(k, v.raw)
	case sigEd448:
		k, ok := ed448Key(c)
		return ok && bytes.Equal(k, v.raw)
	}
	k, ok := c.PublicKey.(*ecdsa.PublicKey)
	return ok && k.Curve == v.ecdsa.Curve && k.Equal(v.ecdsa)
}

func keyAlgorithm(c *x509.Certificate) string {
	if _, ok := ed448Key(c); ok {
		return "Ed448"
	}
	return c.PublicKeyAlgorithm.String()
}

// ed448Key extracts an Ed448 subject key, which crypto/x509 parses as unknown.
func ed448Key(c *x509.Certificate) (ed448.PublicKey, bool) {
	var spki struct {
		Alg pkix.AlgorithmIdentifier
		Key asn1.BitString
	}
	rest, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki)
	if err != nil || len(rest) != 0 || !spki.Alg.Algorithm.Equal(oidEd448) || len(spki.Key.Bytes) != ed448.PublicKeySize {
		return nil, false
	}
	return ed448.PublicKey(spki.Key.Bytes), true
}

// checkIssued checks that parent issued child: names chain up, the parent may sign
// certificates, and the signature verifies (Ed448 by hand, crypto/x509 does not know it).
func checkIssued(child, parent *x509.Certificate) error {
	if !bytes.Equal(child.RawIssuer, parent.RawSubject) {
		return fmt.Errorf("issuer %q is not the subject %q", child.Issuer.String(), parent.Subject.String())
	}
	err := child.CheckSignatureFrom(parent)
	if !errors.Is(err, x509.ErrUnsupportedAlgorithm) {
		return err
	}
	key, ok := ed448Key(parent)
	if !ok {
		return err
	}
	if !parent.BasicConstraintsValid || !parent.IsCA || (parent.KeyUsage != 0 && parent.KeyUsage&x509.KeyUsageCertSign == 0) {
		return errors.New("the issuer is not a CA allowed to sign certificates")
	}
	var cert struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}
	if _, perr := asn1.Unmarshal(child.Raw, &cert); perr != nil || !cert.Alg.Algorithm.Equal(oidEd448) {
		return err // an Ed448 issuer that did not sign with Ed448
	}
	if !ed448.Verify(key, child.RawTBSCertificate, cert.Sig.Bytes, "") {
		return errors.New("Ed448 signature does not verify")
	}
	return nil
}

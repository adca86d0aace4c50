// Package testcert makes X.509 certificate chains for kpool's tests with crypto/x509:
// a root CA, an intermediate CA and a leaf certificate for an MLS signature key. Ed448
// keys, which crypto/x509 cannot write, are put in by re-encoding the certificate.
package testcert

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/cloudflare/circl/sign/ed448"
)

// Chain is a leaf certificate and its issuers.
type Chain struct {
	DER  [][]byte          // the credential's chain: leaf, then intermediate
	Leaf *x509.Certificate // parsed DER[0]
	Root *x509.Certificate // the trust anchor (not in DER)
}

// Options shape a chain. The zero value: Ed25519 CAs, valid from an hour ago for a year.
type Options struct {
	NotBefore, NotAfter time.Time
	Ed448CA             bool // the root and intermediate sign with Ed448
}

var (
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidEd448   = asn1.ObjectIdentifier{1, 3, 101, 113}
)

// New certifies leafKey (ed25519.PublicKey, *ecdsa.PublicKey or circl ed448.PublicKey)
// under a fresh root and intermediate.
func New(t testing.TB, leafKey any, o Options) Chain {
	t.Helper()
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = o.NotBefore.Add(365 * 24 * time.Hour)
	}
	newCA := func() (pub, priv any) {
		if o.Ed448CA {
			p, k, err := ed448.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return p, k
		}
		p, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return p, k
	}
	tmpl := func(serial int64, cn string, ca bool) *x509.Certificate {
		c := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: o.NotBefore, NotAfter: o.NotAfter, BasicConstraintsValid: true, IsCA: ca,
			SubjectKeyId: []byte(cn), KeyUsage: x509.KeyUsageDigitalSignature,
		}
		if ca {
			c.KeyUsage |= x509.KeyUsageCertSign
		}
		return c
	}
	rootPub, rootPriv := newCA()
	rootT := tmpl(1, "kpool test root", true)
	root := parse(t, Issue(t, rootT, rootPub, rootT, rootPriv))
	interPub, interPriv := newCA()
	inter := Issue(t, tmpl(2, "kpool test intermediate", true), interPub, root, rootPriv)
	leaf := Issue(t, tmpl(3, "kpool test leaf", false), leafKey, parse(t, inter), interPriv)
	return Chain{DER: [][]byte{leaf, inter}, Leaf: parse(t, leaf), Root: root}
}

func parse(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Issue signs a certificate for pub from template with parentKey (ed25519 or circl ed448
// private key, or any crypto.Signer crypto/x509 accepts), parent being the issuer's
// certificate (template itself for a self-signed one).
func Issue(t testing.TB, template *x509.Certificate, pub any, parent *x509.Certificate, parentKey any) []byte {
	t.Helper()
	subj448, is448 := pub.(ed448.PublicKey)
	parent448, par448 := parentKey.(ed448.PrivateKey)
	if !is448 && !par448 {
		der, err := x509.CreateCertificate(rand.Reader, template, parent, pub, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	// Write it with Ed25519 stand-ins, then put the Ed448 parts in and sign again.
	standInPub, standIn, _ := ed25519.GenerateKey(rand.Reader)
	certPub, signParent, signKey := pub, parent, parentKey
	if is448 {
		certPub = standInPub
	}
	if par448 {
		p := *parent
		p.PublicKey = standInPub
		signParent, signKey = &p, standIn
	}
	der, err := x509.CreateCertificate(rand.Reader, template, signParent, certPub, signKey)
	if err != nil {
		t.Fatal(err)
	}
	var cert struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &cert); err != nil {
		t.Fatal(err)
	}
	var elems [][]byte // version, serial, signature, issuer, validity, subject, spki, extensions
	for rest := cert.TBS.Bytes; len(rest) > 0; {
		var v asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &v); err != nil {
			t.Fatal(err)
		}
		elems = append(elems, v.FullBytes)
	}
	alg := pkix.AlgorithmIdentifier{Algorithm: oidEd25519}
	if par448 {
		alg.Algorithm = oidEd448
		elems[2] = mustMarshal(t, alg)
	}
	if is448 {
		elems[6] = mustMarshal(t, struct {
			Alg pkix.AlgorithmIdentifier
			Key asn1.BitString
		}{pkix.AlgorithmIdentifier{Algorithm: oidEd448}, asn1.BitString{Bytes: subj448, BitLength: 8 * len(subj448)}})
	}
	var body []byte
	for _, e := range elems {
		body = append(body, e...)
	}
	tbs := mustMarshal(t, asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
	var sig []byte
	if par448 {
		sig = ed448.Sign(parent448, tbs, "")
	} else {
		sig = ed25519.Sign(parentKey.(ed25519.PrivateKey), tbs)
	}
	return mustMarshal(t, struct {
		TBS asn1.RawValue
		Alg pkix.AlgorithmIdentifier
		Sig asn1.BitString
	}{asn1.RawValue{FullBytes: tbs}, alg, asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package mls

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/internal/testcert"
)

func certFor(t *testing.T, suite CipherSuite, pub []byte, o testcert.Options) testcert.Chain {
	t.Helper()
	k, err := SignaturePublicKey(suite, pub)
	if err != nil {
		t.Fatal(err)
	}
	if o.NotBefore.IsZero() {
		o.NotBefore, o.NotAfter = testNow.Add(-24*time.Hour), testNow.Add(365*24*time.Hour)
	}
	return testcert.New(t, k, o)
}

// Every suite: an x509 credential is carried as given and validates, with and without
// the chain's root as trust anchor; another anchor refuses it.
func TestX509CredentialEverySuite(t *testing.T) {
	for _, suite := range AllSuites {
		if suites[suite].sig == sigMLDSA87 {
			continue // refused: TestX509RefusedForMLDSA
		}
		t.Run(suite.String(), func(t *testing.T) {
			signer := newSigner(t, suite, "x509")
			chain := certFor(t, suite, signer.Public(), testcert.Options{Ed448CA: suite == 4})
			kp, _, err := Generate(suite, signer, nil, GenerateOptions{Now: testNow, Credential: &Credential{Type: CredentialX509, Certificates: chain.DER},
				Capabilities: Capabilities{Credentials: []CredentialType{CredentialBasic, CredentialX509}}})
			if err != nil {
				t.Fatal(err)
			}
			if kp.LeafNode.Credential.Type != CredentialX509 || !slices.EqualFunc(kp.LeafNode.Credential.Certificates, chain.DER, bytes.Equal) {
				t.Fatalf("credential %d with %d certificates, want the x509 chain", kp.LeafNode.Credential.Type, len(kp.LeafNode.Credential.Certificates))
			}
			if got := kp.LeafNode.Capabilities.Credentials; !slices.Equal(got, []CredentialType{CredentialBasic, CredentialX509}) {
				t.Errorf("credentials %v, want [1 2]", got)
			}
			got := checkRoundTrip(t, MarshalMLSMessage(kp), true, testNow, DefaultPolicy())
			if !slices.EqualFunc(got.LeafNode.Credential.Certificates, chain.DER, bytes.Equal) {
				t.Error("chain changed in a round trip")
			}
			anchored := DefaultPolicy()
			anchored.TrustAnchors = []*x509.Certificate{chain.Root}
			if err := Validate(kp, testNow, anchored); err != nil {
				t.Errorf("with its root as anchor: %v", err)
			}
			other := certFor(t, suite, signer.Public(), testcert.Options{})
			anchored.TrustAnchors = []*x509.Certificate{other.Root}
			expectInvalid(t, "foreign anchor", kp, testNow, anchored, ErrX509Credential)
		})
	}
}

// A KeyPackage of someone else's key under a valid certificate is refused, by Generate
// and by Validate (RFC 9420 §5.3: the leaf certificate certifies the signature key).
func TestX509CredentialKeyMismatch(t *testing.T) {
	signer, mallory := newSigner(t, 2, "alice"), newSigner(t, 2, "mallory")
	chain := certFor(t, 2, signer.Public(), testcert.Options{})
	_, _, err := Generate(2, mallory, nil, GenerateOptions{Now: testNow, Credential: &Credential{Type: CredentialX509, Certificates: chain.DER}})
	if !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), "the leaf certificate's public key (ECDSA) is not the signature key") {
		t.Errorf("Generate with another key's certificate: %v", err)
	}
	kp, _, err := Generate(2, signer, nil, GenerateOptions{Now: testNow, Credential: &Credential{Type: CredentialX509, Certificates: chain.DER}})
	if err != nil {
		t.Fatal(err)
	}
	kp.LeafNode.SignatureKey = mallory.Public()
	resign(t, kp, mallory)
	expectInvalid(t, "certificate of another key", kp, testNow, DefaultPolicy(), ErrX509Credential)
}

func TestX509ChainRefusals(t *testing.T) {
	signer := newSigner(t, 1, "x509")
	pub := signer.Public()
	good := certFor(t, 1, pub, testcert.Options{})
	// A leaf issued by a certificate that is not a CA.
	caPub, caPriv, _ := ed25519.GenerateKey(rand.Reader)
	notCA := &x509.Certificate{SerialNumber: good.Leaf.SerialNumber, Subject: good.Leaf.Issuer, NotBefore: good.Leaf.NotBefore, NotAfter: good.Leaf.NotAfter, BasicConstraintsValid: true}
	notCADER := testcert.Issue(t, notCA, caPub, notCA, caPriv)
	leafUnderNotCA := testcert.Issue(t, good.Leaf, ed25519.PublicKey(pub), mustParse(t, notCADER), caPriv)
	big := slices.Clone(good.DER)
	for len(big) < 4 {
		big = append(big, bytes.Repeat([]byte{0}, MaxX509ChainSize/2))
	}
	for _, c := range []struct {
		name  string
		chain [][]byte
		want  string
	}{
		{"empty", nil, "empty certificate chain"},
		{"garbage", [][]byte{[]byte("not a certificate")}, "certificate 0 does not parse"},
		{"reversed", [][]byte{good.DER[1], good.DER[0]}, "the leaf certificate's public key (Ed25519) is not the signature key"},
		{"wrong issuer", [][]byte{good.DER[0], good.Root.Raw}, `certificate 0 is not issued by certificate 1: issuer "CN=kpool test intermediate" is not the subject "CN=kpool test root"`},
		{"issuer not a CA", [][]byte{leafUnderNotCA, notCADER}, "certificate 0 is not issued by certificate 1: x509: invalid signature: parent certificate cannot sign this kind of certificate"},
		{"too long", slices.Repeat([][]byte{good.DER[0]}, MaxX509ChainLength+1), "9 certificates; at most 8"},
		{"too big", big, "bytes; at most 6144"},
	} {
		err := CheckX509Chain(1, pub, c.chain, nil, testNow)
		if !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
		_, _, gerr := Generate(1, signer, nil, GenerateOptions{Now: testNow, Credential: &Credential{Type: CredentialX509, Certificates: c.chain}})
		if gerr == nil || gerr.Error() != err.Error() {
			t.Errorf("%s: Generate error %v, want %v", c.name, gerr, err)
		}
	}
	// With an anchor, every certificate must be valid at the time of the check.
	anchors := []*x509.Certificate{good.Root}
	if err := CheckX509Chain(1, pub, good.DER, anchors, testNow); err != nil {
		t.Fatal(err)
	}
	after := good.Leaf.NotAfter.Add(time.Second)
	if err := CheckX509Chain(1, pub, good.DER, anchors, after); !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), "certificate 0 is valid from") {
		t.Errorf("expired certificate with anchors: %v", err)
	}
	if err := CheckX509Chain(1, pub, good.DER, nil, after); err != nil {
		t.Errorf("expired certificate without anchors (trust is the application's business): %v", err)
	}
	// The anchor itself may end the chain.
	if err := CheckX509Chain(1, pub, append(slices.Clone(good.DER), good.Root.Raw), anchors, testNow); err != nil {
		t.Errorf("chain ending at its anchor: %v", err)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseCertificates(t *testing.T) {
	chain := certFor(t, 1, newSigner(t, 1, "p").Public(), testcert.Options{})
	got, err := ParseCertificates(chain.Root.Raw)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].Raw, chain.Root.Raw) {
		t.Fatalf("DER: %v", err)
	}
	pemBytes := append(pemEncode(chain.Root.Raw), pemEncode(chain.DER[1])...)
	got, err = ParseCertificates(pemBytes)
	if err != nil || len(got) != 2 || !bytes.Equal(got[1].Raw, chain.DER[1]) {
		t.Fatalf("PEM: %d certificates, %v", len(got), err)
	}
	for in, want := range map[string]string{
		"junk":                         "not a PEM or DER certificate",
		"-----BEGIN NOTHING":           "no CERTIFICATE block",
		string(pemKey(chain.Root.Raw)): `PEM block 1 is "PRIVATE KEY", not CERTIFICATE`,
	} {
		if _, err := ParseCertificates([]byte(in)); !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), want) {
			t.Errorf("%.20q: error %v, want %q", in, err, want)
		}
	}
}

func pemEncode(der []byte) []byte { return pemBlock("CERTIFICATE", der) }
func pemKey(der []byte) []byte    { return pemBlock("PRIVATE KEY", der) }

func pemBlock(typ string, der []byte) []byte {
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: typ, Bytes: der})
	return b.Bytes()
}

// crypto/x509 cannot check an Ed448 issuer's signature; kpool does.
func TestX509Ed448Issuer(t *testing.T) {
	pub := newSigner(t, 4, "x").Public()
	chain := certFor(t, 4, pub, testcert.Options{Ed448CA: true})
	anchors := []*x509.Certificate{chain.Root}
	if err := CheckX509Chain(4, pub, chain.DER, anchors, testNow); err != nil {
		t.Fatal(err)
	}
	forged := slices.Clone(chain.DER)
	forged[0] = bytes.Clone(forged[0])
	forged[0][len(forged[0])-1] ^= 1 // the last byte of the signature
	if err := CheckX509Chain(4, pub, forged, nil, testNow); !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), "Ed448 signature does not verify") {
		t.Errorf("forged Ed448 signature: %v", err)
	}
	forged[1] = bytes.Clone(forged[1])
	forged[1][len(forged[1])-1] ^= 1
	if err := CheckX509Chain(4, pub, [][]byte{chain.DER[0], forged[1]}, anchors, testNow); !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), "does not end at or under a trust anchor") {
		t.Errorf("intermediate with a forged Ed448 signature: %v", err)
	}
}

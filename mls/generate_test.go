package mls

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// seeded is a deterministic byte stream (SHA-256 in counter mode) for reproducible keys.
type seeded struct {
	seed [32]byte
	ctr  uint64
	buf  []byte
}

func newSeeded(s string) *seeded { return &seeded{seed: sha256.Sum256([]byte(s))} }

func (r *seeded) Read(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if len(r.buf) == 0 {
			var in [40]byte
			copy(in[:], r.seed[:])
			for i := range 8 {
				in[32+i] = byte(r.ctr >> (8 * i))
			}
			r.ctr++
			sum := sha256.Sum256(in[:])
			r.buf = sum[:]
		}
		c := copy(p, r.buf)
		p, r.buf = p[c:], r.buf[c:]
	}
	return n, nil
}

var testNow = time.Unix(1_800_000_000, 0)

func newSigner(t testing.TB, suite CipherSuite, seed string) Signer {
	t.Helper()
	priv, pub, err := NewSignatureKey(suite, newSeeded(seed))
	if err != nil {
		t.Fatal(err)
	}
	s, err := SignerFromPrivate(suite, priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Public(), pub) {
		t.Fatalf("SignerFromPrivate public %x, NewSignatureKey public %x", s.Public(), pub)
	}
	return s
}

func generate(t testing.TB, suite CipherSuite, opts GenerateOptions) (*KeyPackage, *PrivateBundle) {
	t.Helper()
	if opts.Now.IsZero() {
		opts.Now = testNow
	}
	kp, pb, err := Generate(suite, newSigner(t, suite, fmt.Sprint("signer", suite)), []byte("alice@example.org"), opts)
	if err != nil {
		t.Fatalf("Generate(%s): %v", suite, err)
	}
	return kp, pb
}

func TestGenerateAllSuites(t *testing.T) {
	for _, suite := range AllSuites {
		t.Run(suite.String(), func(t *testing.T) {
			for _, lastResort := range []bool{false, true} {
				kp, pb := generate(t, suite, GenerateOptions{LastResort: lastResort, Grease: lastResort})
				msg := MarshalMLSMessage(kp)
				got := checkRoundTrip(t, msg, true, testNow, DefaultPolicy())
				checkRoundTrip(t, kp.Marshal(), false, testNow, DefaultPolicy())
				if got.IsLastResort() != lastResort {
					t.Errorf("IsLastResort = %v, want %v", got.IsLastResort(), lastResort)
				}
				lt := got.LeafNode.Lifetime
				if lt.NotBefore != uint64(testNow.Unix()-3600) || lt.NotAfter != uint64(testNow.Unix()+84*86400) {
					t.Errorf("lifetime %+v, want now-1h..now+84d", lt)
				}
				if string(got.LeafNode.Credential.Identity) != "alice@example.org" {
					t.Errorf("identity %q", got.LeafNode.Credential.Identity)
				}
				if err := pb.Check(got); err != nil {
					t.Errorf("bundle does not match: %v", err)
				}
				if sp := suites[suite]; sp.ecdsa != nil && (len(got.LeafNode.SignatureKey) != sp.sigPub || got.LeafNode.SignatureKey[0] != 4) {
					t.Errorf("ECDSA signature key not uncompressed: %x", got.LeafNode.SignatureKey)
				}
			}
		})
	}
}

func TestGenerateDeterministic(t *testing.T) {
	for _, suite := range AllSuites {
		a, pa := generate(t, suite, GenerateOptions{Rand: newSeeded("kp")})
		b, pb := generate(t, suite, GenerateOptions{Rand: newSeeded("kp")})
		if !bytes.Equal(a.InitKey, b.InitKey) || !bytes.Equal(a.LeafNode.EncryptionKey, b.LeafNode.EncryptionKey) ||
			!bytes.Equal(pa.InitPriv, pb.InitPriv) || !bytes.Equal(pa.EncryptionPriv, pb.EncryptionPriv) {
			t.Errorf("%s: keys differ for the same seed", suite)
		}
		if suite.IsEdDSA() && !bytes.Equal(a.Marshal(), b.Marshal()) {
			t.Errorf("%s: EdDSA KeyPackages differ for the same seed", suite)
		}
		c, _ := generate(t, suite, GenerateOptions{Rand: newSeeded("other")})
		if bytes.Equal(a.InitKey, c.InitKey) {
			t.Errorf("%s: different seeds gave the same init key", suite)
		}
	}
}

// A Welcome-style message sealed to the init key opens with the bundle's private key.
func TestBundleOpensWelcome(t *testing.T) {
	for _, suite := range AllSuites {
		kp, pb := generate(t, suite, GenerateOptions{})
		groupInfo := []byte("encrypted group info")
		secrets := []byte("group secrets for the new member")
		kem, ct, err := EncryptWithLabel(suite, kp.InitKey, "Welcome", groupInfo, secrets, nil)
		if err != nil {
			t.Fatalf("%s: %v", suite, err)
		}
		enc, _ := pb.MarshalBinary()
		var restored PrivateBundle
		if err := restored.UnmarshalBinary(enc); err != nil {
			t.Fatal(err)
		}
		pt, err := DecryptWithLabel(suite, restored.InitPriv, "Welcome", groupInfo, kem, ct)
		if err != nil || !bytes.Equal(pt, secrets) {
			t.Errorf("%s: open with init key: %q, %v", suite, pt, err)
		}
		if _, err := DecryptWithLabel(suite, restored.EncryptionPriv, "Welcome", groupInfo, kem, ct); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: wrong key: error %v, want ErrDecrypt", suite, err)
		}
		// SealTo/Open with an arbitrary info, as the worker seals bundles to a client key.
		e, c, err := SealTo(suite, kp.LeafNode.EncryptionKey, []byte("info"), enc, nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := Open(suite, pb.EncryptionPriv, e, []byte("info"), c); err != nil || !bytes.Equal(pt, enc) {
			t.Errorf("%s: SealTo/Open: %v", suite, err)
		}
	}
}

func TestPrivateBundleRedacted(t *testing.T) {
	_, pb := generate(t, 1, GenerateOptions{})
	secretHex := fmt.Sprintf("%x", pb.InitPriv)
	for _, s := range []string{
		fmt.Sprint(pb), fmt.Sprintf("%v %+v %#v %s %x %q", pb, pb, pb, pb, pb, pb),
		fmt.Sprintf("%v %+v %#v %x", *pb, *pb, *pb, *pb),
		fmt.Sprintf("%v", struct{ B *PrivateBundle }{pb}),
	} {
		if strings.Contains(s, secretHex) || strings.Contains(s, string(pb.InitPriv)) || !strings.Contains(s, "REDACTED") {
			t.Errorf("bundle printed as %q", s)
		}
	}
	signer := newSigner(t, 1, "x")
	if s := fmt.Sprintf("%v %+v %#v %x", signer, signer, signer, signer); !strings.Contains(s, "redacted") {
		t.Errorf("signer printed as %q", s)
	}
}

func TestPrivateBundleEncoding(t *testing.T) {
	_, pb := generate(t, 5, GenerateOptions{})
	enc, err := pb.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got PrivateBundle
	if err := got.UnmarshalBinary(enc); err != nil || !bytes.Equal(got.InitPriv, pb.InitPriv) || !bytes.Equal(got.EncryptionPriv, pb.EncryptionPriv) {
		t.Fatalf("round trip: %v", err)
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{2}, enc[1:]...),
		"truncated": enc[:len(enc)-1],
		"trailing":  append(bytes.Clone(enc), 0),
	} {
		var b PrivateBundle
		err := b.UnmarshalBinary(bad)
		if !errors.Is(err, ErrBadBundle) || b.InitPriv != nil || b.EncryptionPriv != nil {
			t.Errorf("%s: error %v, bundle changed: %v", name, err, b.InitPriv != nil)
		}
		if err != nil && strings.Contains(err.Error(), fmt.Sprintf("%x", pb.InitPriv[:8])) {
			t.Errorf("%s: key material in error", name)
		}
	}
}

func TestGenerateOptions(t *testing.T) {
	kp, _ := generate(t, 3, GenerateOptions{NotBefore: 100, NotAfter: 200, Capabilities: Capabilities{
		CipherSuites: []CipherSuite{1, 3}, Extensions: []ExtensionType{0xff00}, Proposals: []ProposalType{8}}})
	if kp.LeafNode.Lifetime != (Lifetime{100, 200}) {
		t.Errorf("lifetime %+v", kp.LeafNode.Lifetime)
	}
	c := kp.LeafNode.Capabilities
	if fmt.Sprint(c.CipherSuites) != "[MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519]" ||
		fmt.Sprint(c.Extensions, c.Proposals, c.Credentials, c.Versions) != "[65280] [8] [1] [1]" {
		t.Errorf("capabilities %+v", c)
	}
	if err := Validate(kp, time.Unix(150, 0), DefaultPolicy()); err != nil {
		t.Error(err)
	}

	_, _, err := Generate(1, newSigner(t, 1, "s"), nil, GenerateOptions{NotBefore: 300, NotAfter: 200})
	if !errors.Is(err, ErrLifetime) {
		t.Errorf("not_after < not_before: error %v, want ErrLifetime", err)
	}
	_, _, err = Generate(2, newSigner(t, 1, "s"), nil, GenerateOptions{Now: testNow})
	if !errors.Is(err, ErrSignerMismatch) {
		t.Errorf("Ed25519 signer for P-256 suite: error %v, want ErrSignerMismatch", err)
	}
	_, _, err = Generate(9, newSigner(t, 1, "s"), nil, GenerateOptions{Now: testNow})
	if !errors.Is(err, ErrUnknownCipherSuite) {
		t.Errorf("suite 9: error %v, want ErrUnknownCipherSuite", err)
	}
	_, _, err = Generate(1, newSigner(t, 1, "s"), nil, GenerateOptions{Now: testNow, Rand: zeroReader{}})
	if !errors.Is(err, ErrRandom) {
		t.Errorf("constant random source: error %v, want ErrRandom", err)
	}
	_, _, err = Generate(1, newSigner(t, 1, "s"), nil, GenerateOptions{Now: testNow, Rand: io.LimitReader(newSeeded("x"), 40)})
	if !errors.Is(err, ErrRandom) {
		t.Errorf("short random source: error %v, want ErrRandom", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

package mls

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// hexBytes decodes the vectors' lowercase hex strings.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

func loadVectors(t testing.TB, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func TestVectorDeserialization(t *testing.T) {
	var vs []struct {
		Header hexBytes `json:"vlbytes_header"`
		Length int      `json:"length"`
	}
	loadVectors(t, "deserialization.json", &vs)
	if len(vs) != 14 {
		t.Fatalf("%d entries, want 14", len(vs))
	}
	for _, v := range vs {
		n, size, err := ParseVarint(v.Header)
		if err != nil || n != v.Length || size != len(v.Header) {
			t.Errorf("ParseVarint(%x) = %d, %d, %v; want %d, %d", v.Header, n, size, err, v.Length, len(v.Header))
		}
		if got := appendVarint(nil, v.Length); !bytes.Equal(got, v.Header) {
			t.Errorf("appendVarint(%d) = %x, want %x", v.Length, got, v.Header)
		}
	}
}

func TestVarintRejects(t *testing.T) {
	for _, c := range []struct {
		in   string
		want error
	}{
		{"c0", ErrReservedLengthPrefix},
		{"ffffffffffffffff", ErrReservedLengthPrefix},
		{"4000", ErrNonMinimalLength},
		{"403f", ErrNonMinimalLength},
		{"80000000", ErrNonMinimalLength},
		{"80003fff", ErrNonMinimalLength},
		{"40", ErrTruncated},
		{"800000", ErrTruncated},
		{"", ErrTruncated},
	} {
		in, _ := hex.DecodeString(c.in)
		if _, _, err := ParseVarint(in); !errors.Is(err, c.want) {
			t.Errorf("ParseVarint(%s) error %v, want %v", c.in, err, c.want)
		}
	}
}

type cryptoBasics struct {
	Suite   CipherSuite `json:"cipher_suite"`
	RefHash struct {
		Label string   `json:"label"`
		Value hexBytes `json:"value"`
		Out   hexBytes `json:"out"`
	} `json:"ref_hash"`
	Sign struct {
		Priv      hexBytes `json:"priv"`
		Pub       hexBytes `json:"pub"`
		Content   hexBytes `json:"content"`
		Label     string   `json:"label"`
		Signature hexBytes `json:"signature"`
	} `json:"sign_with_label"`
	Encrypt struct {
		Priv       hexBytes `json:"priv"`
		Pub        hexBytes `json:"pub"`
		Label      string   `json:"label"`
		Context    hexBytes `json:"context"`
		Plaintext  hexBytes `json:"plaintext"`
		KEMOutput  hexBytes `json:"kem_output"`
		Ciphertext hexBytes `json:"ciphertext"`
	} `json:"encrypt_with_label"`
}

func TestVectorCryptoBasics(t *testing.T) {
	var vs []cryptoBasics
	loadVectors(t, "crypto-basics.json", &vs)
	if len(vs) != 7 {
		t.Fatalf("%d entries, want 7", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Suite.String(), func(t *testing.T) {
			got, err := RefHash(v.Suite, v.RefHash.Label, v.RefHash.Value)
			if err != nil || !bytes.Equal(got, v.RefHash.Out) {
				t.Errorf("RefHash = %x, %v; want %x", got, err, v.RefHash.Out)
			}

			s := v.Sign
			if err := VerifyWithLabel(v.Suite, s.Pub, s.Label, s.Content, s.Signature); err != nil {
				t.Errorf("VerifyWithLabel: %v", err)
			}
			signer, err := SignerFromPrivate(v.Suite, s.Priv)
			if err != nil {
				t.Fatalf("SignerFromPrivate: %v", err)
			}
			if !bytes.Equal(signer.Public(), s.Pub) {
				t.Errorf("public key from private = %x, want %x", signer.Public(), s.Pub)
			}
			sig, err := SignWithLabel(signer, s.Label, s.Content)
			if err != nil {
				t.Fatal(err)
			}
			if v.Suite.IsEdDSA() && !bytes.Equal(sig, s.Signature) {
				t.Errorf("EdDSA SignWithLabel = %x, want %x", sig, s.Signature)
			}
			if err := VerifyWithLabel(v.Suite, s.Pub, s.Label, s.Content, sig); err != nil {
				t.Errorf("own signature: %v", err)
			}
			if err := VerifyWithLabel(v.Suite, s.Pub, s.Label+"x", s.Content, s.Signature); !errors.Is(err, ErrSignature) {
				t.Errorf("wrong label: error %v, want ErrSignature", err)
			}

			e := v.Encrypt
			pt, err := DecryptWithLabel(v.Suite, e.Priv, e.Label, e.Context, e.KEMOutput, e.Ciphertext)
			if err != nil || !bytes.Equal(pt, e.Plaintext) {
				t.Errorf("DecryptWithLabel = %x, %v; want %x", pt, err, e.Plaintext)
			}
			if pub, err := PublicFromPrivate(v.Suite, e.Priv); err != nil || !bytes.Equal(pub, e.Pub) {
				t.Errorf("PublicFromPrivate = %x, %v; want %x", pub, err, e.Pub)
			}
		})
	}
}

// checkRoundTrip decodes an encoding, re-encodes it and validates the result at at.
func checkRoundTrip(t *testing.T, kpBytes []byte, message bool, at time.Time, p Policy) *KeyPackage {
	t.Helper()
	var kp *KeyPackage
	var err error
	if message {
		kp, err = DecodeMLSMessage(kpBytes)
	} else {
		kp, err = DecodeKeyPackage(kpBytes)
	}
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	var again []byte
	if message {
		again = MarshalMLSMessage(kp)
	} else {
		again = kp.Marshal()
	}
	if !bytes.Equal(again, kpBytes) {
		t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, kpBytes)
	}
	if any, err := DecodeAny(kpBytes); err != nil || !bytes.Equal(any.Marshal(), kp.Marshal()) {
		t.Fatalf("DecodeAny: %v", err)
	}
	if err := Validate(kp, at, p); err != nil {
		t.Fatalf("validate: %v", err)
	}
	return kp
}

func TestVectorMessagesKeyPackages(t *testing.T) {
	var vs []struct {
		Index int      `json:"index"`
		KP    hexBytes `json:"mls_key_package"`
		Add   hexBytes `json:"add_proposal"`
	}
	loadVectors(t, "messages-keypackages.json", &vs)
	if len(vs) != 300 {
		t.Fatalf("%d entries, want 300", len(vs))
	}
	for _, v := range vs {
		kp := checkRoundTrip(t, v.KP, true, time.Unix(1680000000, 0), DefaultPolicy())
		add := checkRoundTrip(t, v.Add, false, time.Unix(1680000000, 0), DefaultPolicy())
		// Outside the window both fail with the lifetime error.
		if err := Validate(kp, time.Unix(1700000000, 0), DefaultPolicy()); !errors.Is(err, ErrLifetime) {
			t.Errorf("entry %d: expired KeyPackage: error %v, want ErrLifetime", v.Index, err)
		}
		if err := Validate(add, time.Unix(1600000000, 0), DefaultPolicy()); !errors.Is(err, ErrLifetime) {
			t.Errorf("entry %d: not-yet-valid KeyPackage: error %v, want ErrLifetime", v.Index, err)
		}
	}
}

func TestVectorWelcome(t *testing.T) {
	var vs []struct {
		Suite     CipherSuite `json:"cipher_suite"`
		InitPriv  hexBytes    `json:"init_priv"`
		SignerPub hexBytes    `json:"signer_pub"`
		KP        hexBytes    `json:"key_package"`
		Welcome   hexBytes    `json:"welcome"`
	}
	loadVectors(t, "welcome.json", &vs)
	if len(vs) != 7 {
		t.Fatalf("%d entries, want 7", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Suite.String(), func(t *testing.T) {
			kp, err := DecodeMLSMessage(v.KP)
			if err != nil {
				t.Fatal(err)
			}
			p := Policy{} // lifetime 0..2^64-1: no maximum
			if !contains(kp.LeafNode.Capabilities.CipherSuites, v.Suite) {
				// The suite-7 vector omits its own suite from capabilities: strict
				// validation must say exactly that, the lenient policy accepts it.
				if err := Validate(kp, time.Now(), p); !errors.Is(err, ErrSuiteNotInCapabilities) {
					t.Fatalf("error %v, want ErrSuiteNotInCapabilities", err)
				}
				p.AllowSuiteNotInCapabilities = true
			}
			kp = checkRoundTrip(t, v.KP, true, time.Now(), p)
			if kp.CipherSuite != v.Suite {
				t.Errorf("suite %d, want %d", kp.CipherSuite, v.Suite)
			}
			if err := Validate(kp, time.Now(), DefaultPolicy()); !errors.Is(err, ErrLifetimeTooLong) && !errors.Is(err, ErrSuiteNotInCapabilities) {
				t.Errorf("default policy: error %v, want ErrLifetimeTooLong", err)
			}
			// signer_pub is the Welcome's GroupInfo signer (the adder), not this client.
			if bytes.Equal(kp.LeafNode.SignatureKey, v.SignerPub) {
				t.Errorf("signature key equals the adder's signer_pub")
			}
			if pub, err := PublicFromPrivate(v.Suite, v.InitPriv); err != nil || !bytes.Equal(pub, kp.InitKey) {
				t.Errorf("init_priv gives %x, %v; init_key is %x", pub, err, kp.InitKey)
			}

			// The Welcome's only EncryptedGroupSecrets names this KeyPackage and opens with
			// init_priv (RFC 9420 §12.4.3.1).
			w := parseWelcome(t, v.Welcome)
			ref, err := kp.Ref()
			if err != nil || !bytes.Equal(ref, w.newMember) {
				t.Errorf("Ref = %x, %v; Welcome names %x", ref, err, w.newMember)
			}
			gs, err := DecryptWithLabel(v.Suite, v.InitPriv, "Welcome", w.encryptedGroupInfo, w.kemOutput, w.ciphertext)
			if err != nil || len(gs) == 0 {
				t.Fatalf("GroupSecrets did not open: %v", err)
			}
		})
	}
}

type welcomeMsg struct {
	newMember, kemOutput, ciphertext, encryptedGroupInfo []byte
}

// parseWelcome reads MLSMessage{mls10, mls_welcome, Welcome} with one secret; test-only.
func parseWelcome(t *testing.T, b []byte) welcomeMsg {
	t.Helper()
	r := &reader{buf: b}
	if r.u16() != 1 || r.u16() != 3 {
		t.Fatal("not an MLSMessage(Welcome)")
	}
	r.u16() // cipher_suite
	var w welcomeMsg
	n := 0
	r.list(func(s *reader) {
		w.newMember = s.opaque()
		w.kemOutput = s.opaque()
		w.ciphertext = s.opaque()
		n++
	})
	w.encryptedGroupInfo = r.opaque()
	if r.err != nil || r.remaining() != 0 || n != 1 {
		t.Fatalf("Welcome: %v, %d trailing bytes, %d secrets", r.err, r.remaining(), n)
	}
	return w
}

func TestVectorPassiveClientWelcomeKeys(t *testing.T) {
	var vs []struct {
		Suite   CipherSuite `json:"cipher_suite"`
		KP      hexBytes    `json:"key_package"`
		SigPriv hexBytes    `json:"signature_priv"`
		EncPriv hexBytes    `json:"encryption_priv"`
		Init    hexBytes    `json:"init_priv"`
	}
	loadVectors(t, "passive-client-welcome-keys.json", &vs)
	if len(vs) != 56 {
		t.Fatalf("%d entries, want 56", len(vs))
	}
	for i, v := range vs {
		kp, err := DecodeMLSMessage(v.KP)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		p := Policy{AllowSuiteNotInCapabilities: !contains(kp.LeafNode.Capabilities.CipherSuites, kp.CipherSuite)}
		at := time.Unix(int64(kp.LeafNode.Lifetime.NotBefore)+1, 0) // valid strictly after not_before
		checkRoundTrip(t, v.KP, true, at, p)
		signer, err := SignerFromPrivate(v.Suite, v.SigPriv)
		if err != nil || !bytes.Equal(signer.Public(), kp.LeafNode.SignatureKey) {
			t.Errorf("entry %d: signature_priv does not give signature_key (%v)", i, err)
		}
		b := PrivateBundle{InitPriv: v.Init, EncryptionPriv: v.EncPriv}
		if err := b.Check(kp); err != nil {
			t.Errorf("entry %d: %v", i, err)
		}
	}
}

func TestVectorKeyPackageRefs(t *testing.T) {
	var vs []struct {
		Source string      `json:"source"`
		Suite  CipherSuite `json:"cipher_suite"`
		KP     hexBytes    `json:"key_package"`
		Ref    hexBytes    `json:"ref"`
	}
	loadVectors(t, "keypackage-refs.json", &vs)
	if len(vs) != 63 {
		t.Fatalf("%d entries, want 63", len(vs))
	}
	seen := map[CipherSuite]int{}
	for _, v := range vs {
		kp, err := DecodeAny(v.KP)
		if err != nil {
			t.Fatalf("%s: %v", v.Source, err)
		}
		ref, err := kp.Ref()
		if err != nil || !bytes.Equal(ref, v.Ref) {
			t.Errorf("%s: Ref = %x, %v; want %x", v.Source, ref, err, v.Ref)
		}
		seen[kp.CipherSuite]++
	}
	if len(seen) != 7 {
		t.Errorf("suites covered: %v", seen)
	}
}

package mls

import (
	"bytes"
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"testing"

	"github.com/kpool/kpool/internal/testcert"
)

// pqSizes are the sizes docs/mls.md promises per PQ suite: HPKE public key, HPKE private
// key (seed), signature public key, signature, KeyPackageRef, sealed-bundle enc.
var pqSizes = map[CipherSuite][6]int{
	77: {800, 64, 32, 64, 32, 768}, 78: {800, 64, 32, 64, 32, 768},
	79: {1184, 64, 32, 64, 48, 1088}, 80: {1184, 64, 32, 64, 48, 1088},
	81: {1568, 64, 32, 64, 64, 1568}, 82: {1568, 64, 32, 64, 64, 1568},
	83: {1216, 32, 32, 64, 64, 1120}, 84: {1216, 32, 32, 64, 64, 1120},
	85: {1568, 64, 2592, 4627, 64, 1568}, 86: {1568, 64, 2592, 4627, 64, 1568},
	87: {1216, 32, 2592, 4627, 64, 1120}, 88: {1216, 32, 2592, 4627, 64, 1120},
}

func TestPQSuiteTable(t *testing.T) {
	want := map[CipherSuite][3]uint16{ // KEM, KDF, AEAD as ts-mls 1.x uses them
		77: {0x40, 3, 2}, 78: {0x40, 3, 3}, 79: {0x41, 3, 2}, 80: {0x41, 3, 3},
		81: {0x42, 3, 2}, 82: {0x42, 3, 3}, 83: {0x647a, 3, 2}, 84: {0x647a, 3, 3},
		85: {0x42, 3, 2}, 86: {0x42, 3, 3}, 87: {0x647a, 3, 2}, 88: {0x647a, 3, 3},
	}
	if len(PQSuites) != 12 || len(AllSuites) != 19 {
		t.Fatalf("PQSuites %v, AllSuites %v", PQSuites, AllSuites)
	}
	for _, s := range PQSuites {
		kem, kdf, aead, err := HPKESuite(s)
		if err != nil || [3]uint16{kem, kdf, aead} != want[s] {
			t.Errorf("%d: HPKE %#x/%d/%d %v, want %#x", s, kem, kdf, aead, err, want[s])
		}
		if !s.Valid() || !strings.HasPrefix(s.String(), "MLS_") {
			t.Errorf("%d: Valid %v, name %q", s, s.Valid(), s)
		}
		if wantEd := s <= 84; s.IsEdDSA() != wantEd {
			t.Errorf("%d: IsEdDSA %v", s, s.IsEdDSA())
		}
	}
	for _, s := range []CipherSuite{8, 76, 89, 0xf007} {
		if s.Valid() {
			t.Errorf("%d is valid", s)
		}
		if _, _, _, err := HPKESuite(s); !errors.Is(err, ErrUnknownCipherSuite) {
			t.Errorf("%d: %v", s, err)
		}
	}
}

func TestPQSizes(t *testing.T) {
	for _, s := range PQSuites {
		t.Run(s.String(), func(t *testing.T) {
			t.Parallel()
			want := pqSizes[s]
			kp, pb := generate(t, s, GenerateOptions{LastResort: true})
			ref, _ := kp.Ref()
			enc, _, err := SealTo(s, kp.InitKey, nil, []byte("x"), nil)
			if err != nil {
				t.Fatal(err)
			}
			got := [6]int{len(kp.InitKey), len(pb.InitPriv), len(kp.LeafNode.SignatureKey), len(kp.Signature), len(ref), len(enc)}
			if got != want || len(kp.LeafNode.EncryptionKey) != want[0] || len(pb.EncryptionPriv) != want[1] || len(kp.LeafNode.Signature) != want[3] {
				t.Errorf("sizes %v, want %v", got, want)
			}
		})
	}
}

// Known answers from seeded generation: SHA-256 of the init, encryption and signature
// public keys, and of the whole KeyPackage for the Ed25519 suites (deterministic) or of the
// LeafNodeTBS for the ML-DSA suites (hedged signatures). A change here changes keys or
// encodings that other implementations read.
func TestPQKnownAnswers(t *testing.T) {
	for _, s := range PQSuites {
		t.Run(s.String(), func(t *testing.T) {
			t.Parallel()
			kp, pb := generate(t, s, GenerateOptions{Rand: newSeeded("kat"), LastResort: true})
			leafTBS, _ := kp.signedParts()
			whole := kp.Marshal()
			if !s.IsEdDSA() {
				whole = leafTBS
			}
			got := fmt.Sprintf("%.16x %.16x %.16x %.16x", sha256.Sum256(kp.InitKey), sha256.Sum256(kp.LeafNode.EncryptionKey),
				sha256.Sum256(kp.LeafNode.SignatureKey), sha256.Sum256(whole))
			if got != pqKnownAnswers[s] {
				t.Errorf("got  %s\nwant %s", got, pqKnownAnswers[s])
			}
			// The bundle's seeds are the first bytes of the stream, as documented.
			r := newSeeded("kat")
			seed := make([]byte, len(pb.InitPriv))
			r.Read(seed)
			if !bytes.Equal(seed, pb.InitPriv) {
				t.Errorf("init seed is not the first %d bytes of rand", len(seed))
			}
		})
	}
}

var pqKnownAnswers = map[CipherSuite]string{
	77: "fa626c93aadea11f85e698b2c0d560fb 31e83e463f0fe549335edd2c1c630998 fc849dc88908f2e650ac5d0f3a774e14 61f62bef94f145f188ab63b9db99e9d7",
	78: "fa626c93aadea11f85e698b2c0d560fb 31e83e463f0fe549335edd2c1c630998 74a285801bcc44949f1e0895fb87cba6 82750cea91ecc1f528b18028f0e57f59",
	79: "c12749260b44448dddbf53fca73707ef 8e3f94b83e62c7b939f626acccb9c557 abe60200775e733b931abba61723abb1 9666045570011b13da0612c9eab28134",
	80: "c12749260b44448dddbf53fca73707ef 8e3f94b83e62c7b939f626acccb9c557 6eb0735a481d7dc36a67e5913103a55e d18c1af7d9d46336a0cc1c54aae2654c",
	81: "5ac1e381dc3584bb1596ef68fe49b113 e275d1e620abe785e2985947150b407a 4028871e8f5e616890521d21fd49b039 d664e71d084ec5cb0b160fd6516c17a5",
	82: "5ac1e381dc3584bb1596ef68fe49b113 e275d1e620abe785e2985947150b407a a837e9a0b7d96d1fc238678008d99fad 31d43418c071f76ffe8018b1e3897b3d",
	83: "43bdac86f726cb9b6b66cd3b6c84c59b 05f7c5423e4d8cf3c575e91439bb6f7b e9e4af78e14a065f361943ad4504e249 9db104a12882c57bd4a85e4f8649a0ac",
	84: "43bdac86f726cb9b6b66cd3b6c84c59b 05f7c5423e4d8cf3c575e91439bb6f7b 015e8d9a20a3cf974f46407d49c154c8 eb399bd6e9e75a740098dfee94d7ec3f",
	85: "5ac1e381dc3584bb1596ef68fe49b113 e275d1e620abe785e2985947150b407a 1b0f5d17dbc5d69d9242c73d094ff572 fcd3b1762a1b1147fe5ca45ce312cde9",
	86: "5ac1e381dc3584bb1596ef68fe49b113 e275d1e620abe785e2985947150b407a c4f9ad50136b66ef5c7f717a8ae9b273 e45d0bd484c84abd6f1bb33009634889",
	87: "43bdac86f726cb9b6b66cd3b6c84c59b 05f7c5423e4d8cf3c575e91439bb6f7b 8e33573c4ba013cb04bb6d451ea04fc9 54047dbf4e632108596c1240b8fab8e7",
	88: "43bdac86f726cb9b6b66cd3b6c84c59b 05f7c5423e4d8cf3c575e91439bb6f7b 1090699426d4f25556be0f801ba53b58 2a58a2a2af4a9ce49050dda41d67d22e",
}

// TestHPKEPQVectors checks the PQ KEMs against draft-ietf-hpke-pq's vectors
// (testdata/hpke-pq.json, see its README): the private key is the seed and derives the
// vector's public key; for ML-KEM-512, kpool's own encapsulation, key schedule and
// decapsulation reproduce enc, the key, the nonce and the ciphertext byte for byte; the
// key schedule is also run on the other KEMs' shared secrets.
func TestHPKEPQVectors(t *testing.T) {
	var vs []struct {
		KEM          uint16   `json:"kem_id"`
		KDF          uint16   `json:"kdf_id"`
		AEAD         uint16   `json:"aead_id"`
		Info         hexBytes `json:"info"`
		IkmE         hexBytes `json:"ikmE"`
		SkRm         hexBytes `json:"skRm"`
		PkRm         hexBytes `json:"pkRm"`
		Enc          hexBytes `json:"enc"`
		SharedSecret hexBytes `json:"shared_secret"`
		Key          hexBytes `json:"key"`
		BaseNonce    hexBytes `json:"base_nonce"`
		AAD          hexBytes `json:"aad"`
		PT           hexBytes `json:"pt"`
		CT           hexBytes `json:"ct"`
	}
	loadVectors(t, "hpke-pq.json", &vs)
	suiteOfKEM := map[uint16]CipherSuite{0x40: 77, 0x41: 79, 0x42: 81, 0x647a: 83}
	seen := map[uint16]bool{}
	for _, v := range vs {
		seen[v.KEM] = true
		name := fmt.Sprintf("kem=%#x,kdf=%d,aead=%d", v.KEM, v.KDF, v.AEAD)
		suite := suiteOfKEM[v.KEM]
		pub, err := PublicFromPrivate(suite, v.SkRm)
		if err != nil || !bytes.Equal(pub, v.PkRm) {
			t.Errorf("%s: public key from seed differs (%v)", name, err)
		}
		s, err := newHPKESchedule(v.KEM, v.KDF, v.AEAD, v.SharedSecret, v.Info)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(s.nonce, v.BaseNonce) || !bytes.Equal(s.aead.Seal(nil, s.nonce, v.PT, v.AAD), v.CT) {
			t.Errorf("%s: key schedule differs from the vector", name)
		}
		if v.KEM != 0x40 {
			continue
		}
		p := &suiteParams{kem: kemMLKEM512, kemID: v.KEM, kdfID: v.KDF, aeadID: v.AEAD}
		enc, ct, err := sealMLKEM512(p, v.PkRm, v.Info, v.AAD, v.PT, bytes.NewReader(v.IkmE))
		if err != nil || !bytes.Equal(enc, v.Enc) || !bytes.Equal(ct, v.CT) {
			t.Errorf("%s: seal differs from the vector (%v)", name, err)
		}
		pt, err := openMLKEM512(p, v.SkRm, v.Enc, v.Info, v.AAD, v.CT)
		if err != nil || !bytes.Equal(pt, v.PT) {
			t.Errorf("%s: open: %q %v", name, pt, err)
		}
	}
	for _, k := range []uint16{0x40, 0x41, 0x42, 0x647a} {
		if !seen[k] {
			t.Errorf("no vector for KEM %#x", k)
		}
	}
}

// The ML-KEM-512 path (own key schedule) and crypto/hpke agree: a message sealed to an
// ML-KEM-768 key by crypto/hpke opens with the schedule fed the decapsulated secret.
func TestHPKEScheduleMatchesStdlib(t *testing.T) {
	p := suites[79]
	priv, pub, err := newPQKey(p, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	enc, ct, err := SealTo(79, pub, []byte("info"), []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := mlkem.NewDecapsulationKey768(priv)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := dk.Decapsulate(enc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newHPKESchedule(p.kemID, p.kdfID, p.aeadID, shared, []byte("info"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := s.aead.Open(nil, s.nonce, ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("own schedule cannot open crypto/hpke's message: %q %v", pt, err)
	}
	if _, err := hpke.NewKEM(p.kemID); err != nil {
		t.Fatalf("crypto/hpke lost KEM %#x: %v", p.kemID, err)
	}
}

// outOfRange sets the first ML-KEM coefficient to 4095 ≥ q, which FIPS 203's
// encapsulation-key check must reject.
func outOfRange(k []byte) []byte {
	k = bytes.Clone(k)
	k[0], k[1] = 0xff, k[1]|0x0f
	return k
}

// lowerCoefficient lowers one ML-KEM coefficient by one (clearing the low bit of a
// coefficient's first byte), so the key stays a valid encapsulation key but is another key.
func lowerCoefficient(k []byte) []byte {
	k = bytes.Clone(k)
	for i := 0; i < len(k); i += 3 {
		if k[i]&1 == 1 {
			k[i] ^= 1
			return k
		}
	}
	panic("no odd coefficient")
}

func TestPQTampering(t *testing.T) {
	for _, s := range PQSuites {
		t.Run(s.String(), func(t *testing.T) {
			t.Parallel()
			signer, other := newSigner(t, s, "tamper"), newSigner(t, s, "mallory")
			fresh := func() *KeyPackage {
				kp, _, err := Generate(s, signer, []byte("carol"), GenerateOptions{Now: testNow, Rand: newSeeded("tamper-kp")})
				if err != nil {
					t.Fatal(err)
				}
				return kp
			}
			pol := DefaultPolicy()

			// Each signed field changed after signing: the signature that covers it fails.
			for _, c := range []struct {
				name   string
				tamper func(kp *KeyPackage)
				want   error
			}{
				{"init key", func(kp *KeyPackage) { kp.InitKey = lowerCoefficient(kp.InitKey) }, ErrKeyPackageSignature},
				{"encryption key", func(kp *KeyPackage) { kp.LeafNode.EncryptionKey = lowerCoefficient(kp.LeafNode.EncryptionKey) }, ErrLeafNodeSignature},
				{"signature key", func(kp *KeyPackage) { kp.LeafNode.SignatureKey = other.Public() }, ErrLeafNodeSignature},
				{"identity", func(kp *KeyPackage) { kp.LeafNode.Credential.Identity = []byte("mallory") }, ErrLeafNodeSignature},
				{"lifetime", func(kp *KeyPackage) { kp.LeafNode.Lifetime.NotBefore++ }, ErrLeafNodeSignature},
				{"capabilities", func(kp *KeyPackage) {
					kp.LeafNode.Capabilities.Credentials = append(kp.LeafNode.Capabilities.Credentials, CredentialX509)
				}, ErrLeafNodeSignature},
				{"leaf signature", func(kp *KeyPackage) { kp.LeafNode.Signature = flipByte(kp.LeafNode.Signature) }, ErrLeafNodeSignature},
				{"KeyPackage signature", func(kp *KeyPackage) { kp.Signature = flipByte(kp.Signature) }, ErrKeyPackageSignature},
				{"truncated signature", func(kp *KeyPackage) { kp.Signature = kp.Signature[:len(kp.Signature)-1] }, ErrKeyPackageSignature},
			} {
				kp := fresh()
				c.tamper(kp)
				expectInvalid(t, c.name, kp, testNow, pol, c.want)
			}

			// Relabelled as its sibling suite (same keys, the other AEAD): its capabilities give
			// it away, and with a lenient policy the signature does (the suite is signed).
			kp := fresh()
			kp.CipherSuite = s + 1 - 2*((s+1)%2)
			expectInvalid(t, "sibling suite", kp, testNow, pol, ErrSuiteNotInCapabilities)
			expectInvalid(t, "sibling suite, lenient", kp, testNow, Policy{AllowSuiteNotInCapabilities: true}, ErrKeyPackageSignature)

			// Keys that are not encapsulation keys are refused before any signature check.
			kp = fresh()
			kp.InitKey = outOfRange(kp.InitKey)
			resign(t, kp, signer)
			expectInvalid(t, "init key out of range", kp, testNow, pol, ErrInvalidInitKey)
			kp = fresh()
			kp.LeafNode.EncryptionKey = outOfRange(kp.LeafNode.EncryptionKey)
			resign(t, kp, signer)
			expectInvalid(t, "encryption key out of range", kp, testNow, pol, ErrInvalidEncryptionKey)
			if _, _, err := SealTo(s, outOfRange(kp.InitKey), nil, []byte("x"), nil); err == nil || !strings.Contains(err.Error(), "recipient key") {
				t.Errorf("SealTo to an out-of-range key: %v", err)
			}
		})
	}
}

func TestPQSealOpen(t *testing.T) {
	for _, s := range PQSuites {
		t.Run(s.String(), func(t *testing.T) {
			t.Parallel()
			kp, pb := generate(t, s, GenerateOptions{})
			enc, ct, err := SealTo(s, kp.InitKey, []byte("info"), []byte("bundle"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if pt, err := Open(s, pb.InitPriv, enc, []byte("info"), ct); err != nil || string(pt) != "bundle" {
				t.Fatalf("open: %q %v", pt, err)
			}
			for name, try := range map[string]func() error{
				"wrong info":   func() error { _, err := Open(s, pb.InitPriv, enc, []byte("other"), ct); return err },
				"wrong key":    func() error { _, err := Open(s, pb.EncryptionPriv, enc, []byte("info"), ct); return err },
				"flipped enc":  func() error { _, err := Open(s, pb.InitPriv, flipByte(enc), []byte("info"), ct); return err },
				"short enc":    func() error { _, err := Open(s, pb.InitPriv, enc[1:], []byte("info"), ct); return err },
				"flipped ct":   func() error { _, err := Open(s, pb.InitPriv, enc, []byte("info"), flipByte(ct)); return err },
				"empty enc/ct": func() error { _, err := Open(s, pb.InitPriv, nil, []byte("info"), nil); return err },
			} {
				if err := try(); !errors.Is(err, ErrDecrypt) {
					t.Errorf("%s: %v, want ErrDecrypt", name, err)
				}
			}
			if _, err := Open(s, pb.InitPriv[1:], enc, []byte("info"), ct); !errors.Is(err, ErrInvalidPrivateKey) {
				t.Errorf("short private key: %v", err)
			}
			if _, err := PublicFromPrivate(s, append(bytes.Clone(pb.InitPriv), 0)); !errors.Is(err, ErrInvalidPrivateKey) {
				t.Errorf("long private key: %v", err)
			}
			wrong := &PrivateBundle{InitPriv: pb.EncryptionPriv, EncryptionPriv: pb.EncryptionPriv}
			if err := wrong.Check(kp); !errors.Is(err, ErrInvalidPrivateKey) {
				t.Errorf("Check with the wrong init seed: %v", err)
			}
		})
	}
}

func flipByte(b []byte) []byte {
	b = bytes.Clone(b)
	b[len(b)/2] ^= 1
	return b
}

// KeyPackageRef is RefHash with the suite's own hash (SHA-256/384/512 by suite).
func TestPQRefs(t *testing.T) {
	hashes := map[int]func() hash.Hash{32: sha256.New, 48: sha512.New384, 64: sha512.New}
	for _, s := range PQSuites {
		kp, _ := generate(t, s, GenerateOptions{})
		ref, err := kp.Ref()
		if err != nil {
			t.Fatal(err)
		}
		h := hashes[pqSizes[s][4]]()
		label := "MLS 1.0 KeyPackage Reference"
		enc := kp.Marshal()
		h.Write(appendVarint(nil, len(label)))
		h.Write([]byte(label))
		h.Write(appendVarint(nil, len(enc)))
		h.Write(enc)
		if want := h.Sum(nil); !bytes.Equal(ref, want) {
			t.Errorf("%d: ref %x, want %x", s, ref, want)
		}
		again, err := DecodeMLSMessage(MarshalMLSMessage(kp))
		if err != nil {
			t.Fatal(err)
		}
		if r2, _ := again.Ref(); !bytes.Equal(r2, ref) {
			t.Errorf("%d: ref changed over a round trip", s)
		}
	}
}

func TestMLDSASigner(t *testing.T) {
	priv, pub, err := NewSignatureKey(85, newSeeded("mldsa"))
	if err != nil {
		t.Fatal(err)
	}
	if len(priv) != 32 || len(pub) != 2592 {
		t.Fatalf("seed %d B, public key %d B", len(priv), len(pub))
	}
	s, err := SignerFromPrivate(87, priv)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := SignWithLabel(s, "Test", []byte("content"))
	if err != nil || len(sig) != 4627 {
		t.Fatalf("signature of %d bytes: %v", len(sig), err)
	}
	if err := VerifyWithLabel(88, pub, "Test", []byte("content"), sig); err != nil {
		t.Errorf("verify: %v", err)
	}
	if err := VerifyWithLabel(88, pub, "Other", []byte("content"), sig); !errors.Is(err, ErrSignature) {
		t.Errorf("wrong label: %v", err)
	}
	if err := VerifyWithLabel(88, pub[1:], "Test", []byte("content"), sig); !errors.Is(err, ErrInvalidSignatureKey) {
		t.Errorf("short key: %v", err)
	}
	if _, err := SignerFromPrivate(85, priv[1:]); !errors.Is(err, ErrInvalidPrivateKey) {
		t.Errorf("short seed: %v", err)
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
		if out := fmt.Sprintf(f, s); strings.Contains(out, hex.EncodeToString(priv[:8])) || !strings.Contains(out, "redacted") {
			t.Errorf("%s prints %q", f, out)
		}
	}
	// An Ed25519 signer cannot sign an ML-DSA suite's KeyPackage and vice versa.
	if _, _, err := Generate(85, newSigner(t, 81, "ed"), []byte("a"), GenerateOptions{}); !errors.Is(err, ErrSignerMismatch) {
		t.Errorf("Ed25519 signer for suite 85: %v", err)
	}
	if _, _, err := Generate(81, s, []byte("a"), GenerateOptions{}); !errors.Is(err, ErrSignerMismatch) {
		t.Errorf("ML-DSA signer for suite 81: %v", err)
	}
}

// x509 credentials need certificates for ML-DSA-87 keys, which crypto/x509 cannot parse or
// make: suites 85–88 refuse them with a reason, in Generate and in Validate.
func TestX509RefusedForMLDSA(t *testing.T) {
	signer := newSigner(t, 85, "x509")
	chain := certFor(t, 81, newSigner(t, 81, "x509").Public(), testcert.Options{}) // any well-formed chain
	opts := GenerateOptions{Now: testNow, Credential: &Credential{Type: CredentialX509, Certificates: chain.DER},
		Capabilities: Capabilities{Credentials: []CredentialType{CredentialBasic, CredentialX509}}}
	_, _, err := Generate(85, signer, nil, opts)
	if !errors.Is(err, ErrX509) || !strings.Contains(err.Error(), "not supported for ML-DSA-87") {
		t.Fatalf("Generate: %v", err)
	}
	kp, _ := generate(t, 85, GenerateOptions{Capabilities: opts.Capabilities})
	kp.LeafNode.Credential = *opts.Credential
	resign(t, kp, newSigner(t, 85, fmt.Sprint("signer", CipherSuite(85))))
	expectInvalid(t, "x509 credential on suite 85", kp, testNow, DefaultPolicy(), ErrX509Credential)
}

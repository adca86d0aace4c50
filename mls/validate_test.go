package mls

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// resign recomputes both signatures, so a test's tampering is the KeyPackage's only defect.
func resign(t *testing.T, kp *KeyPackage, s Signer) {
	t.Helper()
	var err error
	leafTBS, _ := kp.signedParts()
	if kp.LeafNode.Signature, err = SignWithLabel(s, "LeafNodeTBS", leafTBS); err != nil {
		t.Fatal(err)
	}
	_, kpTBS := kp.signedParts() // over the new LeafNode signature
	if kp.Signature, err = SignWithLabel(s, "KeyPackageTBS", kpTBS); err != nil {
		t.Fatal(err)
	}
}

// expectInvalid validates the encoding of kp and checks the exact sentinel, the error type,
// and that validation changed nothing.
func expectInvalid(t *testing.T, name string, kp *KeyPackage, at time.Time, p Policy, want error) {
	t.Helper()
	before := kp.Marshal()
	err := Validate(kp, at, p)
	var ve *ValidationError
	if !errors.Is(err, want) || !errors.As(err, &ve) || ve.Err != want {
		t.Errorf("%s: error %v, want %v", name, err, want)
	}
	if !bytes.Equal(kp.Marshal(), before) {
		t.Errorf("%s: Validate modified the KeyPackage", name)
	}
	// The same verdict after a wire round trip.
	if again, derr := DecodeMLSMessage(MarshalMLSMessage(kp)); derr != nil || !errors.Is(Validate(again, at, p), want) {
		t.Errorf("%s: after decode: %v", name, derr)
	}
}

func TestValidateTampering(t *testing.T) {
	for _, suite := range AllSuites {
		t.Run(suite.String(), func(t *testing.T) {
			signer := newSigner(t, suite, "signer"+suite.String())
			fresh := func(opts GenerateOptions) *KeyPackage {
				opts.Now = testNow
				kp, _, err := Generate(suite, signer, []byte("bob"), opts)
				if err != nil {
					t.Fatal(err)
				}
				return kp
			}
			pol := DefaultPolicy()

			kp := fresh(GenerateOptions{})
			kp.Signature[len(kp.Signature)-3] ^= 1
			expectInvalid(t, "flipped KeyPackage signature", kp, testNow, pol, ErrKeyPackageSignature)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.Signature[len(kp.LeafNode.Signature)-3] ^= 1
			expectInvalid(t, "flipped LeafNode signature", kp, testNow, pol, ErrLeafNodeSignature)
			if !errors.Is(Validate(kp, testNow, pol), ErrSignature) {
				t.Error("ErrLeafNodeSignature does not match ErrSignature")
			}

			kp = fresh(GenerateOptions{})
			kp.InitKey, kp.LeafNode.EncryptionKey = kp.LeafNode.EncryptionKey, kp.InitKey
			expectInvalid(t, "swapped init/encryption keys", kp, testNow, pol, ErrLeafNodeSignature)

			kp = fresh(GenerateOptions{})
			other := fresh(GenerateOptions{})
			kp.InitKey = other.InitKey // a KeyPackage signed over different keys
			expectInvalid(t, "init key from another KeyPackage", kp, testNow, pol, ErrKeyPackageSignature)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.SignatureKey = newSigner(t, suite, "mallory").Public()
			expectInvalid(t, "swapped signature key", kp, testNow, pol, ErrLeafNodeSignature)

			kp = fresh(GenerateOptions{})
			expectInvalid(t, "expired", kp, testNow.Add(85*24*time.Hour), pol, ErrLifetime)
			expectInvalid(t, "not yet valid", kp, testNow.Add(-2*time.Hour), pol, ErrLifetime)
			// OpenMLS's bounds: refused at exactly not_before and not_after, accepted a second inside.
			nb, na := int64(kp.LeafNode.Lifetime.NotBefore), int64(kp.LeafNode.Lifetime.NotAfter)
			expectInvalid(t, "at not_before exactly", kp, time.Unix(nb, 0), pol, ErrLifetime)
			expectInvalid(t, "at not_after exactly", kp, time.Unix(na, 0), pol, ErrLifetime)
			expectInvalid(t, "at not_after + 0.9s", kp, time.Unix(na, 9e8), pol, ErrLifetime)
			for _, at := range []time.Time{time.Unix(nb+1, 0), time.Unix(na-1, 0), time.Unix(na-1, 999_999_999)} {
				if err := Validate(kp, at, pol); err != nil {
					t.Errorf("at %d (lifetime %d..%d): %v", at.Unix(), nb, na, err)
				}
			}

			kp = fresh(GenerateOptions{NotBefore: 1000, NotAfter: 1000 + 85*86400})
			expectInvalid(t, "too-long lifetime", kp, time.Unix(2000, 0), pol, ErrLifetimeTooLong)
			if err := Validate(kp, time.Unix(2000, 0), Policy{}); err != nil {
				t.Errorf("no maximum: %v", err)
			}

			kp = fresh(GenerateOptions{})
			kp.InitKey = kp.LeafNode.EncryptionKey
			resign(t, kp, signer)
			expectInvalid(t, "init = encryption key", kp, testNow, pol, ErrInitKeyEqualsEncryptionKey)

			kp = fresh(GenerateOptions{})
			kp.Extensions = []Extension{{Type: ExtensionLastResort}}
			resign(t, kp, signer)
			expectInvalid(t, "unlisted KeyPackage extension", kp, testNow, pol, ErrUnlistedExtension)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.Extensions = []Extension{{Type: 0xff01, Data: []byte{1}}}
			resign(t, kp, signer)
			expectInvalid(t, "unlisted LeafNode extension", kp, testNow, pol, ErrUnlistedExtension)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.Extensions = []Extension{{Type: 1, Data: []byte("app")}} // application_id is a default
			resign(t, kp, signer)
			if err := Validate(kp, testNow, pol); err != nil {
				t.Errorf("default extension unlisted: %v", err)
			}

			kp = fresh(GenerateOptions{LastResort: true})
			kp.Extensions = append(kp.Extensions, Extension{Type: ExtensionLastResort})
			resign(t, kp, signer)
			expectInvalid(t, "duplicate extension", kp, testNow, pol, ErrDuplicateExtension)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.Capabilities.CipherSuites = []CipherSuite{suite%7 + 1}
			resign(t, kp, signer)
			expectInvalid(t, "suite not in capabilities", kp, testNow, pol, ErrSuiteNotInCapabilities)
			if err := Validate(kp, testNow, Policy{AllowSuiteNotInCapabilities: true}); err != nil {
				t.Errorf("lenient policy: %v", err)
			}

			kp = fresh(GenerateOptions{})
			kp.Version = 2
			resign(t, kp, signer)
			expectInvalid(t, "version", kp, testNow, pol, ErrVersion)

			kp = fresh(GenerateOptions{})
			kp.CipherSuite = 0x0a0a
			expectInvalid(t, "unknown suite", kp, testNow, pol, ErrUnknownCipherSuite)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.Source = LeafNodeSourceUpdate
			resign(t, kp, signer)
			expectInvalid(t, "leaf_node_source update", kp, testNow, pol, ErrLeafNodeSource)

			kp = fresh(GenerateOptions{})
			kp.InitKey = kp.InitKey[1:]
			resign(t, kp, signer)
			expectInvalid(t, "short init key", kp, testNow, pol, ErrInvalidInitKey)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.EncryptionKey = append(bytes.Clone(kp.LeafNode.EncryptionKey), 0)
			resign(t, kp, signer)
			expectInvalid(t, "long encryption key", kp, testNow, pol, ErrInvalidEncryptionKey)

			kp = fresh(GenerateOptions{})
			kp.LeafNode.SignatureKey = kp.LeafNode.SignatureKey[:len(kp.LeafNode.SignatureKey)-1]
			expectInvalid(t, "short signature key", kp, testNow, pol, ErrInvalidSignatureKey)

			if sp := suites[suite]; sp.ecdsa != nil {
				kp = fresh(GenerateOptions{})
				k := bytes.Clone(kp.InitKey)
				k[len(k)-1] ^= 1 // off the curve
				kp.InitKey = k
				resign(t, kp, signer)
				expectInvalid(t, "init key off the curve", kp, testNow, pol, ErrInvalidInitKey)

				kp = fresh(GenerateOptions{})
				sk := bytes.Clone(kp.LeafNode.SignatureKey)
				sk[len(sk)-1] ^= 1
				kp.LeafNode.SignatureKey = sk
				expectInvalid(t, "signature key off the curve", kp, testNow, pol, ErrInvalidSignatureKey)

				// A compressed signature key is accepted and kept as is.
				kp = fresh(GenerateOptions{})
				full := kp.LeafNode.SignatureKey
				n := (len(full) - 1) / 2 // 0x04 || x || y  →  (0x02 | y's parity) || x
				kp.LeafNode.SignatureKey = append([]byte{2 | full[len(full)-1]&1}, full[1:1+n]...)
				resign(t, kp, signer)
				msg := MarshalMLSMessage(kp)
				got := checkRoundTrip(t, msg, true, testNow, pol)
				if len(got.LeafNode.SignatureKey) != 1+(len(full)-1)/2 {
					t.Errorf("compressed key not kept: %x", got.LeafNode.SignatureKey)
				}
			}
		})
	}
	if err := Validate(nil, testNow, DefaultPolicy()); !errors.Is(err, ErrNilKeyPackage) {
		t.Errorf("nil: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	kp, _ := generate(t, 1, GenerateOptions{})
	msg := MarshalMLSMessage(kp)
	bare := kp.Marshal()

	// Offsets in the bare encoding: version(2) suite(2) init_key<V>(1+32) encryption_key…
	const encHdr = 4 + 33
	nonMinimal := append(bytes.Clone(bare[:encHdr]), 0x40, 0x20) // 32 as a 2-byte length
	nonMinimal = append(nonMinimal, bare[encHdr+1:]...)
	reserved := bytes.Clone(bare)
	reserved[encHdr] = 0xc0
	unknownCred := bytes.Clone(bare)
	credOff := encHdr + 33 + 33
	unknownCred[credOff+1] = 9
	badSource := bytes.Clone(bare)
	_, _, leafEnd := kp.appendTo(nil)
	badSource[leafEnd-1-16-1] = 7 // before leaf extensions "00" and lifetime (16): the source

	cases := []struct {
		name string
		in   []byte
		dec  func([]byte) (*KeyPackage, error)
		want error
	}{
		{"empty", nil, DecodeKeyPackage, ErrEmpty},
		{"trailing bytes", append(bytes.Clone(bare), 0), DecodeKeyPackage, ErrTrailingBytes},
		{"trailing bytes (message)", append(bytes.Clone(msg), 0, 0), DecodeMLSMessage, ErrTrailingBytes},
		{"truncated", bare[:len(bare)-1], DecodeKeyPackage, ErrTruncated},
		{"truncated header", msg[:3], DecodeMLSMessage, ErrTruncated},
		{"non-minimal length", nonMinimal, DecodeKeyPackage, ErrNonMinimalLength},
		{"reserved length prefix", reserved, DecodeKeyPackage, ErrReservedLengthPrefix},
		{"unknown credential", unknownCred, DecodeKeyPackage, ErrUnknownCredential},
		{"unknown leaf source", badSource, DecodeKeyPackage, ErrUnknownLeafSource},
		{"welcome wire format", append([]byte{0, 1, 0, 3}, bare...), DecodeMLSMessage, ErrWireFormat},
		{"version 2 message", append([]byte{0, 2, 0, 5}, bare...), DecodeMLSMessage, ErrVersion},
		{"odd uint16 list", oddList(t, bare), DecodeKeyPackage, ErrOddLength},
	}
	for _, c := range cases {
		orig := bytes.Clone(c.in)
		got, err := c.dec(c.in)
		if !errors.Is(err, c.want) || got != nil {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
		if !bytes.Equal(orig, c.in) {
			t.Errorf("%s: decoder modified its input", c.name)
		}
	}
	var wf *WireFormatError
	if _, err := DecodeMLSMessage(append([]byte{0, 1, 0, 3}, bare...)); !errors.As(err, &wf) || wf.WireFormat != 3 ||
		!strings.Contains(err.Error(), "mls_welcome") {
		t.Errorf("wire format error %v", err)
	}
	var de *DecodeError
	if _, err := DecodeKeyPackage(reserved); !errors.As(err, &de) || de.Offset != encHdr || de.Field != "LeafNode.encryption_key" {
		t.Errorf("decode error position: %+v", de)
	}
	// DecodeAny takes both forms.
	for _, in := range [][]byte{msg, bare} {
		if got, err := DecodeAny(in); err != nil || !bytes.Equal(got.Marshal(), bare) {
			t.Errorf("DecodeAny: %v", err)
		}
	}
}

// oddList rewrites capabilities.versions (02 0001) as a 3-byte list.
func oddList(t *testing.T, bare []byte) []byte {
	i := bytes.Index(bare, []byte{0x02, 0x00, 0x01, 0x02, 0x00, 0x01}) // versions [1], suites [1]
	if i < 0 {
		t.Fatal("capabilities not found")
	}
	out := bytes.Clone(bare[:i])
	out = append(out, 0x03, 0x00, 0x01, 0x00)
	return append(out, bare[i+3:]...)
}

func TestDecodeAnySuite5Ambiguity(t *testing.T) {
	// A bare suite-5 KeyPackage starts 0001 0005 like an MLSMessage header.
	kp, _ := generate(t, 5, GenerateOptions{})
	bare := kp.Marshal()
	got, err := DecodeAny(bare)
	if err != nil || !bytes.Equal(got.Marshal(), bare) {
		t.Fatalf("DecodeAny(bare suite 5): %v", err)
	}
	got, err = DecodeAny(MarshalMLSMessage(kp))
	if err != nil || !bytes.Equal(got.Marshal(), bare) {
		t.Fatalf("DecodeAny(message suite 5): %v", err)
	}
}

func TestGreaseTolerated(t *testing.T) {
	for v := uint16(0); v < 0xffff; v++ {
		want := v&0xff == v>>8 && v&0x0f == 0x0a && v != 0xfafa
		if IsGrease(v) != want {
			t.Fatalf("IsGrease(0x%04x) = %v", v, !want)
		}
	}
	kp, _ := generate(t, 1, GenerateOptions{Grease: true, Rand: newSeeded("g")})
	c := kp.LeafNode.Capabilities
	for _, l := range [][]uint16{u16s(c.CipherSuites), u16s(c.Extensions), u16s(c.Proposals), u16s(c.Credentials)} {
		if !IsGrease(l[len(l)-1]) {
			t.Errorf("no GREASE value at the end of %v", l)
		}
	}
	// A GREASE extension listed in capabilities is accepted.
	signer := newSigner(t, 1, "signer"+CipherSuite(1).String())
	kp, _, _ = Generate(1, signer, nil, GenerateOptions{Now: testNow, Capabilities: Capabilities{Extensions: []ExtensionType{0x3a3a}}})
	kp.LeafNode.Extensions = []Extension{{Type: 0x3a3a, Data: []byte{0xde, 0xad}}}
	resign(t, kp, signer)
	checkRoundTrip(t, MarshalMLSMessage(kp), true, testNow, DefaultPolicy())
}

func u16s[T ~uint16](l []T) []uint16 {
	out := make([]uint16, len(l))
	for i, v := range l {
		out[i] = uint16(v)
	}
	return out
}

func TestEdDSAKeyNotOnCurve(t *testing.T) {
	// Every generated key decodes; about half of all 32/57-byte strings do not.
	for _, suite := range []CipherSuite{1, 4} {
		valid := ed25519PointValid
		if suite == 4 {
			valid = ed448PointValid
		}
		for i := range 20 {
			if pub := newSigner(t, suite, fmt.Sprint(i)).Public(); !valid(pub) {
				t.Fatalf("suite %d: generated key %x rejected", suite, pub)
			}
		}
		r := newSeeded("points")
		n, bad := 400, 0
		var invalidKey []byte
		for range n {
			k := make([]byte, suites[suite].sigPub)
			r.Read(k)
			if suite == 4 {
				k[56] &= 0x80 // only the sign bit may be set in Ed448's last byte
			}
			if !valid(k) {
				bad++
				invalidKey = k
			}
		}
		if bad < n/4 || bad > 3*n/4 {
			t.Errorf("suite %d: %d of %d random strings rejected, want about half", suite, bad, n)
		}
		kp, _ := generate(t, suite, GenerateOptions{})
		kp.LeafNode.SignatureKey = invalidKey
		expectInvalid(t, "EdDSA key off the curve", kp, testNow, DefaultPolicy(), ErrInvalidSignatureKey)
	}
	// y ≥ p is not a canonical Ed25519 encoding.
	p := make([]byte, 32)
	p[0] = 0xed
	for i := 1; i < 31; i++ {
		p[i] = 0xff
	}
	p[31] = 0x7f
	if ed25519PointValid(p) {
		t.Error("y = p accepted")
	}
}

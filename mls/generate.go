package mls

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Default lifetime of a generated KeyPackage (what OpenMLS emits): back-dated one hour,
// valid 84 days from now.
const (
	DefaultBackdate = time.Hour
	DefaultLifetime = 84 * 24 * time.Hour
)

// GenerateOptions tune Generate. The zero value gives a basic KeyPackage valid from
// now−1h to now+84d.
type GenerateOptions struct {
	// NotBefore and NotAfter are Unix seconds; each zero one defaults from Now.
	NotBefore, NotAfter uint64
	// Now is the clock for the defaults; the wall clock is read only when it is needed and
	// Now is zero.
	Now time.Time
	// LastResort adds the last_resort extension (0x000A) and lists it in capabilities.
	LastResort bool
	// Rand supplies every random byte of the keys (nil: crypto/rand). With a seeded reader
	// the output is deterministic for the EdDSA suites 1, 3, 4, 6; ECDSA signatures
	// (suites 2, 5, 7) are randomized by the standard library.
	Rand io.Reader
	// Capabilities: each non-empty list replaces the default of DefaultCapabilities (mls10,
	// the KeyPackage's own suite and credential type, no extensions, no proposals). The
	// result must pass CheckProfile. last_resort is added to the extensions when LastResort
	// is set.
	Capabilities Capabilities
	// Credential replaces the basic credential holding the identity argument; an x509
	// credential's chain must pass CheckX509Chain for the signer's key.
	Credential *Credential
	// LeafExtensions and KeyPackageExtensions are carried as given (each non-default type
	// must be listed in Capabilities.Extensions).
	LeafExtensions, KeyPackageExtensions []Extension
	// Grease adds one RFC 9420 §13.5 GREASE value (drawn from Rand) to each capability
	// list other than versions.
	Grease bool
}

// PrivateBundle is the private half of a generated KeyPackage: the HPKE private keys of
// init_key and the leaf encryption_key, serialized per RFC 9180. It never prints its
// contents.
type PrivateBundle struct {
	InitPriv, EncryptionPriv []byte
}

const bundleVersion = 1

// MarshalBinary encodes the bundle as 0x01 || opaque init<V> || opaque encryption<V>.
func (pb *PrivateBundle) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 1+4+len(pb.InitPriv)+4+len(pb.EncryptionPriv))
	b = append(b, bundleVersion)
	b = appendOpaque(b, pb.InitPriv)
	return appendOpaque(b, pb.EncryptionPriv), nil
}

// UnmarshalBinary decodes MarshalBinary's output strictly (no trailing bytes).
func (pb *PrivateBundle) UnmarshalBinary(data []byte) error {
	if len(data) == 0 || data[0] != bundleVersion {
		return fmt.Errorf("mls: %w: unknown version", ErrBadBundle)
	}
	r := &reader{buf: data, off: 1, field: "PrivateBundle"}
	init := r.opaque()
	enc := r.opaque()
	if r.err == nil && r.remaining() != 0 {
		r.fail(ErrTrailingBytes)
	}
	if r.err != nil {
		return fmt.Errorf("mls: %w: %w", ErrBadBundle, errors.Unwrap(r.err))
	}
	pb.InitPriv = slices.Clone(init)
	pb.EncryptionPriv = slices.Clone(enc)
	return nil
}

// Check reports whether the bundle's private keys belong to kp's init_key and
// encryption_key.
func (pb *PrivateBundle) Check(kp *KeyPackage) error {
	p, err := params(kp.CipherSuite)
	if err != nil {
		return err
	}
	for _, k := range []struct {
		name      string
		priv, pub []byte
	}{{"init", pb.InitPriv, kp.InitKey}, {"encryption", pb.EncryptionPriv, kp.LeafNode.EncryptionKey}} {
		pub, err := hpkePublicFromPrivate(p, k.priv)
		if err != nil {
			return fmt.Errorf("mls: %s private key: %w", k.name, ErrInvalidPrivateKey)
		}
		if !slices.Equal(pub, k.pub) {
			return fmt.Errorf("mls: %w: %s private key does not match the KeyPackage", ErrInvalidPrivateKey, k.name)
		}
	}
	return nil
}

// Wipe overwrites the private keys with zeros.
func (pb *PrivateBundle) Wipe() {
	clear(pb.InitPriv)
	clear(pb.EncryptionPriv)
}

const redactedBundle = "mls.PrivateBundle{REDACTED}"

func (PrivateBundle) String() string             { return redactedBundle }
func (PrivateBundle) GoString() string           { return redactedBundle }
func (PrivateBundle) Format(f fmt.State, _ rune) { io.WriteString(f, redactedBundle) }
func (PrivateBundle) MarshalJSON() ([]byte, error) {
	return nil, errors.New("mls: PrivateBundle is not JSON-encodable; use MarshalBinary and encrypt it")
}

// Generate makes a KeyPackage for suite signed by signer, with a basic credential holding
// identity unless opts.Credential says otherwise, and returns it with its private keys.
func Generate(suite CipherSuite, signer Signer, identity []byte, opts GenerateOptions) (*KeyPackage, *PrivateBundle, error) {
	p, err := params(suite)
	if err != nil {
		return nil, nil, err
	}
	if err := checkSigner(p, signer); err != nil {
		return nil, nil, err
	}
	lt, err := opts.lifetime()
	if err != nil {
		return nil, nil, err
	}
	cred := Credential{Type: CredentialBasic, Identity: slices.Clone(identity)}
	if opts.Credential != nil {
		if cred, err = opts.credential(suite, signer.Public()); err != nil {
			return nil, nil, err
		}
	}
	rand := orDefault(opts.Rand)

	initPriv, initPub, err := newHPKEKey(p, rand)
	if err != nil {
		return nil, nil, err
	}
	encPriv, encPub, err := newHPKEKey(p, rand)
	for tries := 0; err == nil && slices.Equal(initPub, encPub); tries++ {
		if tries == 2 { // only a broken random source repeats itself
			return nil, nil, fmt.Errorf("mls: %w: init and encryption keys keep coming out equal", ErrRandom)
		}
		encPriv, encPub, err = newHPKEKey(p, rand)
	}
	if err != nil {
		return nil, nil, err
	}

	kp := &KeyPackage{
		Version:     ProtocolVersionMLS10,
		CipherSuite: suite,
		InitKey:     initPub,
		LeafNode: LeafNode{
			EncryptionKey: encPub,
			SignatureKey:  slices.Clone(signer.Public()), // the KeyPackage must not alias the signer
			Credential:    cred,
			Source:        LeafNodeSourceKeyPackage,
			Lifetime:      lt,
			Extensions:    cloneExtensions(opts.LeafExtensions),
		},
		Extensions: cloneExtensions(opts.KeyPackageExtensions),
	}
	if opts.LastResort && !slices.ContainsFunc(kp.Extensions, func(e Extension) bool { return e.Type == ExtensionLastResort }) {
		kp.Extensions = append(kp.Extensions, Extension{Type: ExtensionLastResort, Data: []byte{}})
	}
	if kp.LeafNode.Capabilities, err = opts.capabilities(suite, cred.Type, rand); err != nil {
		return nil, nil, err
	}
	if err := CheckProfile(suite, cred.Type, kp.LeafNode.Capabilities, kp.LeafNode.Extensions, kp.Extensions); err != nil {
		return nil, nil, err
	}

	// One encoding pass: sign the LeafNodeTBS, append its signature, sign the KeyPackageTBS.
	b := make([]byte, 0, kp.sizeHint()+2*maxSigSize(p))
	b = appendU16(b, kp.Version)
	b = appendU16(b, uint16(suite))
	b = appendOpaque(b, initPub)
	leafStart := len(b)
	b = kp.LeafNode.appendTBS(b)
	if kp.LeafNode.Signature, err = SignWithLabel(signer, "LeafNodeTBS", b[leafStart:]); err != nil {
		return nil, nil, fmt.Errorf("mls: signing LeafNodeTBS: %w", err)
	}
	b = appendOpaque(b, kp.LeafNode.Signature)
	b = appendExtensions(b, kp.Extensions)
	if kp.Signature, err = SignWithLabel(signer, "KeyPackageTBS", b); err != nil {
		return nil, nil, fmt.Errorf("mls: signing KeyPackageTBS: %w", err)
	}
	return kp, &PrivateBundle{InitPriv: initPriv, EncryptionPriv: encPriv}, nil
}

func checkSigner(p *suiteParams, s Signer) error {
	switch s := s.(type) {
	case nil:
		return fmt.Errorf("mls: %w: nil signer", ErrSignerMismatch)
	case *edSigner:
		if p.sig == sigEd25519 {
			return nil
		}
	case *ed448Signer:
		if p.sig == sigEd448 {
			return nil
		}
	case *ecdsaSigner:
		if s.p.sig == p.sig {
			return nil
		}
	case *mldsaSigner:
		if p.sig == sigMLDSA87 {
			return nil
		}
	default:
		if _, err := parseSignatureKey(p, s.Public()); err == nil {
			return nil
		}
	}
	return fmt.Errorf("mls: %w: key is not a %s signature key", ErrSignerMismatch, p.name)
}

func (o *GenerateOptions) lifetime() (Lifetime, error) {
	lt := Lifetime{NotBefore: o.NotBefore, NotAfter: o.NotAfter}
	if lt.NotBefore == 0 || lt.NotAfter == 0 {
		now := o.Now
		if now.IsZero() {
			now = time.Now()
		}
		if lt.NotBefore == 0 {
			lt.NotBefore = uint64(max(now.Add(-DefaultBackdate).Unix(), 0))
		}
		if lt.NotAfter == 0 {
			lt.NotAfter = uint64(max(now.Add(DefaultLifetime).Unix(), 0))
		}
	}
	if lt.NotAfter < lt.NotBefore {
		return lt, invalid(ErrLifetime, "not_after %d is before not_before %d", lt.NotAfter, lt.NotBefore)
	}
	return lt, nil
}

func (o *GenerateOptions) capabilities(suite CipherSuite, cred CredentialType, rand io.Reader) (Capabilities, error) {
	c := o.Capabilities.WithDefaults(suite, cred)
	if o.LastResort {
		c.Extensions = addUnique(c.Extensions, []ExtensionType{ExtensionLastResort})
	}
	if o.Grease {
		var g [4]byte
		if err := readFull(rand, g[:]); err != nil {
			return c, err
		}
		grease := func(i int) uint16 { v := uint16(g[i]%15)<<4 | 0x0a; return v<<8 | v }
		c.CipherSuites = addUnique(c.CipherSuites, []CipherSuite{CipherSuite(grease(0))})
		c.Extensions = addUnique(c.Extensions, []ExtensionType{ExtensionType(grease(1))})
		c.Proposals = addUnique(c.Proposals, []ProposalType{ProposalType(grease(2))})
		c.Credentials = addUnique(c.Credentials, []CredentialType{CredentialType(grease(3))})
	}
	return c, nil
}

// credential checks and copies opts.Credential for a signer whose public key is pub.
func (o *GenerateOptions) credential(suite CipherSuite, pub []byte) (Credential, error) {
	c := o.Credential
	switch c.Type {
	case CredentialBasic:
		return Credential{Type: CredentialBasic, Identity: slices.Clone(c.Identity)}, nil
	case CredentialX509:
		if err := CheckX509Chain(suite, pub, c.Certificates, nil, time.Time{}); err != nil {
			return Credential{}, err
		}
		certs := make([][]byte, len(c.Certificates))
		for i, der := range c.Certificates {
			certs[i] = slices.Clone(der)
		}
		return Credential{Type: CredentialX509, Certificates: certs}, nil
	}
	return Credential{}, fmt.Errorf("mls: %w %d", ErrUnknownCredential, c.Type)
}

func cloneExtensions(exts []Extension) []Extension {
	out := make([]Extension, len(exts))
	for i, e := range exts {
		out[i] = Extension{Type: e.Type, Data: append([]byte{}, e.Data...)}
	}
	return out
}

func addUnique[T comparable](base, extra []T) []T {
	for _, v := range extra {
		if !slices.Contains(base, v) {
			base = append(base, v)
		}
	}
	return base
}

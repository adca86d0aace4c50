package mls

import (
	"bytes"
	"crypto/x509"
	"strings"
	"time"
)

// Policy is what Validate enforces beyond RFC 9420 itself.
type Policy struct {
	// MaxLifetime bounds not_after − not_before; zero means no bound.
	MaxLifetime time.Duration
	// AllowSuiteNotInCapabilities accepts a KeyPackage whose capabilities do not list its
	// own cipher suite (the suite-7 KeyPackage of the interop welcome.json does this).
	AllowSuiteNotInCapabilities bool
	// TrustAnchors, when set, are the certificates an x509 credential's chain must end at
	// or under (see CheckX509Chain). Without them the chain is only checked to be well
	// formed and to certify the signature key: its trust is the application's business.
	TrustAnchors []*x509.Certificate
}

// DefaultMaxLifetime is 84 days + 1 hour: the default lifetime plus its back-dating.
const DefaultMaxLifetime = DefaultLifetime + DefaultBackdate

// DefaultPolicy bounds the lifetime to DefaultMaxLifetime and requires the suite to be
// listed in capabilities.
func DefaultPolicy() Policy { return Policy{MaxLifetime: DefaultMaxLifetime} }

// defaultExtensions need not be listed in capabilities (RFC 9420 §7.2): application_id,
// ratchet_tree, required_capabilities, external_pub, external_senders.
func isDefaultExtension(t ExtensionType) bool { return t >= 1 && t <= 5 }

// Validate checks kp on its own as RFC 9420 §10.1 and §7.3 require, at time at. The
// error is a *ValidationError wrapping one sentinel (ErrVersion, ErrUnknownCipherSuite,
// ErrLeafNodeSource, ErrInvalidInitKey, ErrInvalidEncryptionKey, ErrInvalidSignatureKey,
// ErrInitKeyEqualsEncryptionKey, ErrSuiteNotInCapabilities, ErrCredentialNotInCapabilities,
// ErrDuplicateExtension, ErrUnlistedExtension, ErrLifetime, ErrLifetimeTooLong,
// ErrLeafNodeSignature, ErrKeyPackageSignature, ErrX509Credential). Cheap structural checks
// run first, signatures and certificates last.
//
// The lifetime is checked as OpenMLS does: valid strictly between not_before and
// not_after, so a KeyPackage is refused at exactly either bound.
func Validate(kp *KeyPackage, at time.Time, p Policy) error {
	if kp == nil {
		return &ValidationError{Err: ErrNilKeyPackage}
	}
	if kp.Version != ProtocolVersionMLS10 {
		return invalid(ErrVersion, "version %d, want 1 (mls10)", kp.Version)
	}
	sp, err := params(kp.CipherSuite)
	if err != nil {
		return invalid(ErrUnknownCipherSuite, "0x%04x", uint16(kp.CipherSuite))
	}
	l := &kp.LeafNode
	if l.Source != LeafNodeSourceKeyPackage {
		return invalid(ErrLeafNodeSource, "leaf_node_source %d", l.Source)
	}
	if err := checkHPKEPublic(sp, kp.InitKey); err != nil {
		return invalid(ErrInvalidInitKey, "%s: %v", sp.name, err)
	}
	if err := checkHPKEPublic(sp, l.EncryptionKey); err != nil {
		return invalid(ErrInvalidEncryptionKey, "%s: %v", sp.name, err)
	}
	if bytes.Equal(kp.InitKey, l.EncryptionKey) {
		return invalid(ErrInitKeyEqualsEncryptionKey, "")
	}
	v, err := parseSignatureKey(sp, l.SignatureKey)
	if err != nil {
		return invalid(ErrInvalidSignatureKey, "%s: %v", sp.name, err)
	}
	caps := &l.Capabilities
	if !p.AllowSuiteNotInCapabilities && !contains(caps.CipherSuites, kp.CipherSuite) {
		return invalid(ErrSuiteNotInCapabilities, "0x%04x not in %v", uint16(kp.CipherSuite), caps.CipherSuites)
	}
	if !contains(caps.Credentials, l.Credential.Type) {
		return invalid(ErrCredentialNotInCapabilities, "%s not in %s", CapabilityName(KindCredentials, uint16(l.Credential.Type)), names(KindCredentials, u16(caps.Credentials)))
	}
	if err := checkExtensions("LeafNode", l.Extensions, caps.Extensions); err != nil {
		return err
	}
	if err := checkExtensions("KeyPackage", kp.Extensions, caps.Extensions); err != nil {
		return err
	}
	if err := checkLifetime(l.Lifetime, at, p); err != nil {
		return err
	}

	leafTBS, kpTBS := kp.signedParts()
	if !v.verify(signContent("LeafNodeTBS", leafTBS), l.Signature) {
		if v.pointInvalid() {
			return invalid(ErrInvalidSignatureKey, "%s: not a curve point", sp.name)
		}
		return invalid(ErrLeafNodeSignature, "label LeafNodeTBS")
	}
	if !v.verify(signContent("KeyPackageTBS", kpTBS), kp.Signature) {
		return invalid(ErrKeyPackageSignature, "label KeyPackageTBS")
	}
	if l.Credential.Type == CredentialX509 {
		if err := CheckX509Chain(kp.CipherSuite, l.SignatureKey, l.Credential.Certificates, p.TrustAnchors, at); err != nil {
			return invalid(ErrX509Credential, "%s", strings.TrimPrefix(err.Error(), "mls: "+ErrX509.Error()+": "))
		}
	}
	return nil
}

func contains[T comparable](l []T, v T) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

func checkExtensions(where string, exts []Extension, listed []ExtensionType) error {
	for i, e := range exts {
		for _, f := range exts[:i] {
			if f.Type == e.Type {
				return invalid(ErrDuplicateExtension, "%s extension 0x%04x", where, uint16(e.Type))
			}
		}
		if !isDefaultExtension(e.Type) && !contains(listed, e.Type) {
			return invalid(ErrUnlistedExtension, "%s extension 0x%04x not in capabilities %v", where, uint16(e.Type), listed)
		}
	}
	return nil
}

func checkLifetime(lt Lifetime, at time.Time, p Policy) error {
	if lt.NotAfter < lt.NotBefore {
		return invalid(ErrLifetime, "not_after %d before not_before %d", lt.NotAfter, lt.NotBefore)
	}
	if p.MaxLifetime > 0 && lt.NotAfter-lt.NotBefore > uint64(p.MaxLifetime/time.Second) {
		return invalid(ErrLifetimeTooLong, "%d s > %d s", lt.NotAfter-lt.NotBefore, uint64(p.MaxLifetime/time.Second))
	}
	sec := at.Unix()
	if sec < 0 || uint64(sec) <= lt.NotBefore {
		return invalid(ErrLifetime, "not yet valid at %d (valid after not_before %d)", sec, lt.NotBefore)
	}
	if uint64(sec) >= lt.NotAfter {
		return invalid(ErrLifetime, "expired at %d (valid before not_after %d)", sec, lt.NotAfter)
	}
	return nil
}

package mls

import (
	"bytes"
	"fmt"
)

// Protocol constants (RFC 9420 §17).
const (
	ProtocolVersionMLS10 uint16 = 1
	WireFormatKeyPackage uint16 = 5

	CredentialBasic CredentialType = 1
	CredentialX509  CredentialType = 2

	LeafNodeSourceKeyPackage LeafNodeSource = 1
	LeafNodeSourceUpdate     LeafNodeSource = 2
	LeafNodeSourceCommit     LeafNodeSource = 3

	// ExtensionLastResort marks a KeyPackage that may be used more than once
	// (draft-ietf-mls-extensions; the value OpenMLS and mls-rs use).
	ExtensionLastResort ExtensionType = 0x000A
)

type (
	ExtensionType  uint16
	ProposalType   uint16
	CredentialType uint16
	LeafNodeSource uint8
)

// KeyPackage is RFC 9420 §10. Decoded byte slices alias one private copy of the input.
type KeyPackage struct {
	Version     uint16
	CipherSuite CipherSuite
	InitKey     []byte
	LeafNode    LeafNode
	Extensions  []Extension
	Signature   []byte
}

// LeafNode is RFC 9420 §7.2.
type LeafNode struct {
	EncryptionKey []byte
	SignatureKey  []byte
	Credential    Credential
	Capabilities  Capabilities
	Source        LeafNodeSource
	Lifetime      Lifetime // when Source is key_package
	ParentHash    []byte   // when Source is commit
	Extensions    []Extension
	Signature     []byte
}

// Lifetime bounds, in seconds since the Unix epoch.
type Lifetime struct{ NotBefore, NotAfter uint64 }

// Credential is RFC 9420 §5.3: basic (Identity) or x509 (Certificates, carried, not checked).
type Credential struct {
	Type         CredentialType
	Identity     []byte
	Certificates [][]byte
}

// Capabilities is RFC 9420 §7.2. GREASE values are carried like any other.
type Capabilities struct {
	Versions     []uint16
	CipherSuites []CipherSuite
	Extensions   []ExtensionType
	Proposals    []ProposalType
	Credentials  []CredentialType
}

// Extension is RFC 9420 §13.
type Extension struct {
	Type ExtensionType
	Data []byte
}

// IsLastResort reports whether the KeyPackage carries the last_resort extension.
func (kp *KeyPackage) IsLastResort() bool {
	for _, e := range kp.Extensions {
		if e.Type == ExtensionLastResort {
			return true
		}
	}
	return false
}

// ---- encoding ----

// Marshal returns the bare KeyPackage encoding.
func (kp *KeyPackage) Marshal() []byte {
	b, _, _ := kp.appendTo(make([]byte, 0, kp.sizeHint()))
	return b
}

// MarshalMLSMessage returns MLSMessage{mls10, mls_key_package, kp}.
func MarshalMLSMessage(kp *KeyPackage) []byte {
	b := make([]byte, 4, 4+kp.sizeHint())
	b[1], b[3] = byte(ProtocolVersionMLS10), byte(WireFormatKeyPackage)
	b, _, _ = kp.appendTo(b)
	return b
}

func (kp *KeyPackage) sizeHint() int {
	l := &kp.LeafNode
	n := 64 + len(kp.InitKey) + len(l.EncryptionKey) + len(l.SignatureKey) + len(l.Credential.Identity) +
		len(l.Signature) + len(kp.Signature) + len(l.ParentHash) +
		2*(len(l.Capabilities.Versions)+len(l.Capabilities.CipherSuites)+len(l.Capabilities.Extensions)+
			len(l.Capabilities.Proposals)+len(l.Capabilities.Credentials))
	for _, c := range l.Credential.Certificates {
		n += 4 + len(c)
	}
	for _, e := range l.Extensions {
		n += 6 + len(e.Data)
	}
	for _, e := range kp.Extensions {
		n += 6 + len(e.Data)
	}
	return n
}

// appendTo appends the KeyPackage and returns the offsets (relative to b) where the
// LeafNodeTBS begins and ends; the KeyPackageTBS runs from start to just before the final
// signature.
func (kp *KeyPackage) appendTo(b []byte) (out []byte, leafStart, leafEnd int) {
	b = appendU16(b, kp.Version)
	b = appendU16(b, uint16(kp.CipherSuite))
	b = appendOpaque(b, kp.InitKey)
	leafStart = len(b)
	b = kp.LeafNode.appendTBS(b)
	leafEnd = len(b)
	b = appendOpaque(b, kp.LeafNode.Signature)
	b = appendExtensions(b, kp.Extensions)
	b = appendOpaque(b, kp.Signature)
	return b, leafStart, leafEnd
}

// signedParts encodes kp once and returns the LeafNodeTBS and the KeyPackageTBS, both
// subslices of that encoding.
func (kp *KeyPackage) signedParts() (leafTBS, kpTBS []byte) {
	b, leafStart, leafEnd := kp.appendTo(make([]byte, 0, kp.sizeHint()))
	return b[leafStart:leafEnd], b[:len(b)-varintLen(len(kp.Signature))-len(kp.Signature)]
}

// appendTBS appends LeafNodeTBS for source key_package (the LeafNode without its signature;
// update/commit leaves would add group_id and leaf_index, which a KeyPackage never needs).
func (l *LeafNode) appendTBS(b []byte) []byte {
	b = appendOpaque(b, l.EncryptionKey)
	b = appendOpaque(b, l.SignatureKey)
	b = l.Credential.appendTo(b)
	c := &l.Capabilities
	b = appendU16List(b, c.Versions)
	b = appendU16List(b, c.CipherSuites)
	b = appendU16List(b, c.Extensions)
	b = appendU16List(b, c.Proposals)
	b = appendU16List(b, c.Credentials)
	b = append(b, byte(l.Source))
	switch l.Source {
	case LeafNodeSourceKeyPackage:
		b = appendU64(b, l.Lifetime.NotBefore)
		b = appendU64(b, l.Lifetime.NotAfter)
	case LeafNodeSourceCommit:
		b = appendOpaque(b, l.ParentHash)
	}
	return appendExtensions(b, l.Extensions)
}

func (c *Credential) appendTo(b []byte) []byte {
	b = appendU16(b, uint16(c.Type))
	if c.Type == CredentialX509 {
		n := 0
		for _, cert := range c.Certificates {
			n += varintLen(len(cert)) + len(cert)
		}
		b = appendVarint(b, n)
		for _, cert := range c.Certificates {
			b = appendOpaque(b, cert)
		}
		return b
	}
	return appendOpaque(b, c.Identity)
}

func appendExtensions(b []byte, exts []Extension) []byte {
	n := 0
	for _, e := range exts {
		n += 2 + varintLen(len(e.Data)) + len(e.Data)
	}
	b = appendVarint(b, n)
	for _, e := range exts {
		b = appendU16(b, uint16(e.Type))
		b = appendOpaque(b, e.Data)
	}
	return b
}

// ---- decoding ----

// DecodeKeyPackage decodes a bare KeyPackage; the whole input must be consumed.
func DecodeKeyPackage(b []byte) (*KeyPackage, error) {
	if len(b) == 0 {
		return nil, &DecodeError{Field: "KeyPackage", Err: ErrEmpty}
	}
	r := &reader{buf: bytes.Clone(b)}
	kp := decodeKeyPackage(r)
	return finish(r, kp)
}

// DecodeMLSMessage decodes an MLSMessage carrying a KeyPackage. Other wire formats give a
// *WireFormatError (matching ErrWireFormat); a version other than mls10 gives ErrVersion.
func DecodeMLSMessage(b []byte) (*KeyPackage, error) {
	if len(b) == 0 {
		return nil, &DecodeError{Field: "MLSMessage", Err: ErrEmpty}
	}
	r := &reader{buf: bytes.Clone(b), field: "MLSMessage"}
	if v := r.u16(); r.err == nil && v != ProtocolVersionMLS10 {
		return nil, &DecodeError{Field: "MLSMessage.version", Offset: 0, Err: fmt.Errorf("%w %d", ErrVersion, v)}
	}
	if w := r.u16(); r.err == nil && w != WireFormatKeyPackage {
		return nil, &WireFormatError{WireFormat: w}
	}
	if r.err != nil {
		return nil, r.err
	}
	kp := decodeKeyPackage(r)
	return finish(r, kp)
}

// DecodeAny accepts an MLSMessage(KeyPackage) or a bare KeyPackage. The two can share a
// prefix (a bare suite-5 KeyPackage also starts 0001 0005), so the MLSMessage reading is
// tried first and the bare one only if it fails.
func DecodeAny(b []byte) (*KeyPackage, error) {
	if len(b) >= 4 && b[0] == 0 && b[1] == 1 && b[2] == 0 && b[3] == byte(WireFormatKeyPackage) {
		kp, err := DecodeMLSMessage(b)
		if err == nil {
			return kp, nil
		}
		if kp2, err2 := DecodeKeyPackage(b); err2 == nil {
			return kp2, nil
		}
		return nil, err
	}
	return DecodeKeyPackage(b)
}

func finish(r *reader, kp *KeyPackage) (*KeyPackage, error) {
	if r.err == nil && r.remaining() != 0 {
		r.field = "KeyPackage"
		r.fail(ErrTrailingBytes)
	}
	if r.err != nil {
		return nil, r.err
	}
	return kp, nil
}

func decodeKeyPackage(r *reader) *KeyPackage {
	kp := &KeyPackage{}
	r.field = "KeyPackage.version"
	kp.Version = r.u16()
	r.field = "KeyPackage.cipher_suite"
	kp.CipherSuite = CipherSuite(r.u16())
	r.field = "KeyPackage.init_key"
	kp.InitKey = r.opaque()
	decodeLeafNode(r, &kp.LeafNode)
	r.field = "KeyPackage.extensions"
	kp.Extensions = decodeExtensions(r)
	r.field = "KeyPackage.signature"
	kp.Signature = r.opaque()
	return kp
}

func decodeLeafNode(r *reader, l *LeafNode) {
	r.field = "LeafNode.encryption_key"
	l.EncryptionKey = r.opaque()
	r.field = "LeafNode.signature_key"
	l.SignatureKey = r.opaque()
	r.field = "LeafNode.credential"
	l.Credential.Type = CredentialType(r.u16())
	switch l.Credential.Type {
	case CredentialBasic:
		l.Credential.Identity = r.opaque()
	case CredentialX509:
		r.list(func(s *reader) { l.Credential.Certificates = append(l.Credential.Certificates, s.opaque()) })
	default:
		if r.err == nil {
			r.fail(fmt.Errorf("%w %d", ErrUnknownCredential, l.Credential.Type))
		}
	}
	c := &l.Capabilities
	r.field = "LeafNode.capabilities.versions"
	c.Versions = readU16List[uint16](r)
	r.field = "LeafNode.capabilities.cipher_suites"
	c.CipherSuites = readU16List[CipherSuite](r)
	r.field = "LeafNode.capabilities.extensions"
	c.Extensions = readU16List[ExtensionType](r)
	r.field = "LeafNode.capabilities.proposals"
	c.Proposals = readU16List[ProposalType](r)
	r.field = "LeafNode.capabilities.credentials"
	c.Credentials = readU16List[CredentialType](r)
	r.field = "LeafNode.leaf_node_source"
	l.Source = LeafNodeSource(r.u8())
	switch l.Source {
	case LeafNodeSourceKeyPackage:
		r.field = "LeafNode.lifetime"
		l.Lifetime.NotBefore = r.u64()
		l.Lifetime.NotAfter = r.u64()
	case LeafNodeSourceUpdate:
	case LeafNodeSourceCommit:
		r.field = "LeafNode.parent_hash"
		l.ParentHash = r.opaque()
	default:
		if r.err == nil {
			r.off--
			r.fail(fmt.Errorf("%w %d", ErrUnknownLeafSource, l.Source))
		}
	}
	r.field = "LeafNode.extensions"
	l.Extensions = decodeExtensions(r)
	r.field = "LeafNode.signature"
	l.Signature = r.opaque()
}

func decodeExtensions(r *reader) []Extension {
	var exts []Extension
	r.list(func(s *reader) {
		t := ExtensionType(s.u16())
		d := s.opaque()
		exts = append(exts, Extension{Type: t, Data: d})
	})
	return exts
}

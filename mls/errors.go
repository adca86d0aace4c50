package mls

import (
	"errors"
	"fmt"
)

// Decoding errors. A *DecodeError wraps one of them with the field and byte offset.
var (
	ErrTruncated            = errors.New("truncated input")
	ErrTrailingBytes        = errors.New("trailing bytes after the message")
	ErrNonMinimalLength     = errors.New("vector length not minimally encoded")
	ErrReservedLengthPrefix = errors.New("vector length uses the reserved 0b11 prefix")
	ErrOddLength            = errors.New("uint16 list has an odd byte length")
	ErrUnknownCredential    = errors.New("unknown credential type")
	ErrUnknownLeafSource    = errors.New("unknown leaf_node_source")
	ErrWireFormat           = errors.New("MLSMessage wire format is not mls_key_package")
	ErrEmpty                = errors.New("empty input")
)

// Validation errors (RFC 9420 §7.3, §10.1). Validate returns a *ValidationError wrapping
// exactly one of these; test with errors.Is.
var (
	ErrNilKeyPackage              = errors.New("nil KeyPackage")
	ErrVersion                    = errors.New("unsupported protocol version")
	ErrUnknownCipherSuite         = errors.New("unknown cipher suite")
	ErrLeafNodeSource             = errors.New("leaf_node_source is not key_package")
	ErrInvalidInitKey             = errors.New("init_key is not a valid HPKE public key for the suite")
	ErrInvalidEncryptionKey       = errors.New("encryption_key is not a valid HPKE public key for the suite")
	ErrInvalidSignatureKey        = errors.New("signature_key is not a valid public key for the suite")
	ErrInitKeyEqualsEncryptionKey = errors.New("init_key equals the leaf encryption_key")
	ErrSuiteNotInCapabilities     = errors.New("cipher suite not listed in capabilities")
	// ErrCredentialNotInCapabilities: the leaf's own credential type is not listed (RFC
	// 9420 §7.2; OpenMLS refuses such a KeyPackage).
	ErrCredentialNotInCapabilities = errors.New("credential type not listed in capabilities")
	// ErrX509Credential: an x509 credential whose chain is malformed, whose leaf
	// certificate does not hold the signature key, or that no trust anchor vouches for.
	ErrX509Credential     = errors.New("x509 credential refused")
	ErrUnlistedExtension  = errors.New("extension type not listed in capabilities")
	ErrDuplicateExtension = errors.New("extension type appears twice")
	ErrLifetime           = errors.New("outside the lifetime window")
	ErrLifetimeTooLong    = errors.New("lifetime longer than the policy maximum")
	ErrSignature          = errors.New("signature does not verify")
	// ErrLeafNodeSignature and ErrKeyPackageSignature say which signature failed; both
	// also match ErrSignature.
	ErrLeafNodeSignature   = fmt.Errorf("LeafNode %w", ErrSignature)
	ErrKeyPackageSignature = fmt.Errorf("KeyPackage %w", ErrSignature)
)

// Errors of key handling, generation and HPKE.
var (
	ErrInvalidPrivateKey = errors.New("invalid private key for the suite")
	ErrSignerMismatch    = errors.New("signer key does not fit the cipher suite")
	ErrBadBundle         = errors.New("malformed private bundle encoding")
	ErrDecrypt           = errors.New("HPKE decryption failed")
	ErrRandom            = errors.New("random source failed")
	// ErrCapabilities: capabilities or extensions a KeyPackage could not be valid with.
	ErrCapabilities = errors.New("capabilities refused")
	// ErrX509: a certificate chain that is not well formed or does not fit the key.
	ErrX509 = errors.New("x509 certificate chain refused")
)

// DecodeError says where decoding stopped and why.
type DecodeError struct {
	Field  string // the structure being read, e.g. "LeafNode.capabilities"
	Offset int    // byte offset into the input
	Err    error  // one of the decoding sentinels above
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("mls: decode %s at byte %d: %v", e.Field, e.Offset, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// WireFormatError is returned by DecodeMLSMessage for a message that is valid framing but
// not a KeyPackage (Welcome, GroupInfo, ...). It matches ErrWireFormat.
type WireFormatError struct{ WireFormat uint16 }

func (e *WireFormatError) Error() string {
	return fmt.Sprintf("mls: MLSMessage wire format %d (%s) is not mls_key_package (5)", e.WireFormat, wireFormatName(e.WireFormat))
}

func (e *WireFormatError) Unwrap() error { return ErrWireFormat }

func wireFormatName(w uint16) string {
	switch w {
	case 1:
		return "mls_public_message"
	case 2:
		return "mls_private_message"
	case 3:
		return "mls_welcome"
	case 4:
		return "mls_group_info"
	case 5:
		return "mls_key_package"
	}
	return "unknown"
}

// ValidationError names the check that failed. Detail carries public values only (types,
// times, suite numbers) — never key material.
type ValidationError struct {
	Err    error
	Detail string
}

func (e *ValidationError) Error() string {
	if e.Detail == "" {
		return "mls: invalid KeyPackage: " + e.Err.Error()
	}
	return "mls: invalid KeyPackage: " + e.Err.Error() + ": " + e.Detail
}

func (e *ValidationError) Unwrap() error { return e.Err }

func invalid(err error, format string, args ...any) error {
	return &ValidationError{Err: err, Detail: fmt.Sprintf(format, args...)}
}

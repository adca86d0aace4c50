package mls

import (
	"crypto"
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
)

// CipherSuite is an RFC 9420 §17.1 cipher suite identifier.
type CipherSuite uint16

// The seven cipher suites of RFC 9420.
const (
	MLS128DHKEMX25519AES128GCMSHA256Ed25519        CipherSuite = 0x0001
	MLS128DHKEMP256AES128GCMSHA256P256             CipherSuite = 0x0002
	MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519 CipherSuite = 0x0003
	MLS256DHKEMX448AES256GCMSHA512Ed448            CipherSuite = 0x0004
	MLS256DHKEMP521AES256GCMSHA512P521             CipherSuite = 0x0005
	MLS256DHKEMX448ChaCha20Poly1305SHA512Ed448     CipherSuite = 0x0006
	MLS256DHKEMP384AES256GCMSHA384P384             CipherSuite = 0x0007
)

// The twelve post-quantum suites, numbered as ts-mls 1.x numbers them (docs/mls.md says
// which drafts they follow).
const (
	MLS128MLKEM512AES128GCMSHA256Ed25519         CipherSuite = 77
	MLS128MLKEM512ChaCha20Poly1305SHA256Ed25519  CipherSuite = 78
	MLS256MLKEM768AES256GCMSHA384Ed25519         CipherSuite = 79
	MLS256MLKEM768ChaCha20Poly1305SHA384Ed25519  CipherSuite = 80
	MLS256MLKEM1024AES256GCMSHA512Ed25519        CipherSuite = 81
	MLS256MLKEM1024ChaCha20Poly1305SHA512Ed25519 CipherSuite = 82
	MLS256XWingAES256GCMSHA512Ed25519            CipherSuite = 83
	MLS256XWingChaCha20Poly1305SHA512Ed25519     CipherSuite = 84
	MLS256MLKEM1024AES256GCMSHA512MLDSA87        CipherSuite = 85
	MLS256MLKEM1024ChaCha20Poly1305SHA512MLDSA87 CipherSuite = 86
	MLS256XWingAES256GCMSHA512MLDSA87            CipherSuite = 87
	MLS256XWingChaCha20Poly1305SHA512MLDSA87     CipherSuite = 88
)

// AllSuites lists every supported suite in order: the seven of RFC 9420, then PQSuites.
var AllSuites = append([]CipherSuite{1, 2, 3, 4, 5, 6, 7}, PQSuites...)

// PQSuites lists the post-quantum suites 77–88.
var PQSuites = []CipherSuite{77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88}

type kemKind uint8

const (
	kemX25519 kemKind = iota + 1
	kemP256
	kemP384
	kemP521
	kemX448
	kemMLKEM512
	kemMLKEM768
	kemMLKEM1024
	kemXWing // ML-KEM-768 + X25519
)

type sigKind uint8

const (
	sigEd25519 sigKind = iota + 1
	sigEd448
	sigP256
	sigP384
	sigP521
	sigMLDSA87
)

// suiteParams are the algorithms of one suite (RFC 9420 §17.1, RFC 9180 §7 ids).
type suiteParams struct {
	name     string
	kem      kemKind
	kemID    uint16
	kdfID    uint16
	aeadID   uint16
	hash     crypto.Hash
	sig      sigKind
	pubLen   int // HPKE public key length
	privLen  int // HPKE private key length
	sigPub   int // signature public key length (uncompressed for ECDSA)
	sigPriv  int // signature private key length
	newHash  func() hash.Hash
	ecdh     ecdh.Curve     // nil for X448 and the PQ KEMs
	ecdsa    elliptic.Curve // nil for EdDSA
	hashSize int
}

var suites = [89]*suiteParams{
	1: {name: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", kem: kemX25519, kemID: 0x20, kdfID: 1, aeadID: 1,
		hash: crypto.SHA256, sig: sigEd25519, pubLen: 32, privLen: 32, sigPub: 32, sigPriv: 32, newHash: sha256.New, ecdh: ecdh.X25519(), hashSize: 32},
	2: {name: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256", kem: kemP256, kemID: 0x10, kdfID: 1, aeadID: 1,
		hash: crypto.SHA256, sig: sigP256, pubLen: 65, privLen: 32, sigPub: 65, sigPriv: 32, newHash: sha256.New, ecdh: ecdh.P256(), ecdsa: elliptic.P256(), hashSize: 32},
	3: {name: "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", kem: kemX25519, kemID: 0x20, kdfID: 1, aeadID: 3,
		hash: crypto.SHA256, sig: sigEd25519, pubLen: 32, privLen: 32, sigPub: 32, sigPriv: 32, newHash: sha256.New, ecdh: ecdh.X25519(), hashSize: 32},
	4: {name: "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448", kem: kemX448, kemID: 0x21, kdfID: 3, aeadID: 2,
		hash: crypto.SHA512, sig: sigEd448, pubLen: 56, privLen: 56, sigPub: 57, sigPriv: 57, newHash: sha512.New, hashSize: 64},
	5: {name: "MLS_256_DHKEMP521_AES256GCM_SHA512_P521", kem: kemP521, kemID: 0x12, kdfID: 3, aeadID: 2,
		hash: crypto.SHA512, sig: sigP521, pubLen: 133, privLen: 66, sigPub: 133, sigPriv: 66, newHash: sha512.New, ecdh: ecdh.P521(), ecdsa: elliptic.P521(), hashSize: 64},
	6: {name: "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448", kem: kemX448, kemID: 0x21, kdfID: 3, aeadID: 3,
		hash: crypto.SHA512, sig: sigEd448, pubLen: 56, privLen: 56, sigPub: 57, sigPriv: 57, newHash: sha512.New, hashSize: 64},
	7: {name: "MLS_256_DHKEMP384_AES256GCM_SHA384_P384", kem: kemP384, kemID: 0x11, kdfID: 2, aeadID: 2,
		hash: crypto.SHA384, sig: sigP384, pubLen: 97, privLen: 48, sigPub: 97, sigPriv: 48, newHash: sha512.New384, ecdh: ecdh.P384(), ecdsa: elliptic.P384(), hashSize: 48},

	// Post-quantum suites as ts-mls 1.x defines them: HPKE KDF is HKDF-SHA512 (3) for all of
	// them and the HPKE AEAD is AES-256-GCM (2) or ChaCha20-Poly1305 (3) — also for 77, whose
	// name says AES128GCM. KEM ids are draft-ietf-hpke-pq's. Private keys are seeds.
	77: pqSuite("MLS_128_MLKEM512_AES128GCM_SHA256_Ed25519", kemMLKEM512, 2, crypto.SHA256, sigEd25519),
	78: pqSuite("MLS_128_MLKEM512_CHACHA20POLY1305_SHA256_Ed25519", kemMLKEM512, 3, crypto.SHA256, sigEd25519),
	79: pqSuite("MLS_256_MLKEM768_AES256GCM_SHA384_Ed25519", kemMLKEM768, 2, crypto.SHA384, sigEd25519),
	80: pqSuite("MLS_256_MLKEM768_CHACHA20POLY1305_SHA384_Ed25519", kemMLKEM768, 3, crypto.SHA384, sigEd25519),
	81: pqSuite("MLS_256_MLKEM1024_AES256GCM_SHA512_Ed25519", kemMLKEM1024, 2, crypto.SHA512, sigEd25519),
	82: pqSuite("MLS_256_MLKEM1024_CHACHA20POLY1305_SHA512_Ed25519", kemMLKEM1024, 3, crypto.SHA512, sigEd25519),
	83: pqSuite("MLS_256_XWING_AES256GCM_SHA512_Ed25519", kemXWing, 2, crypto.SHA512, sigEd25519),
	84: pqSuite("MLS_256_XWING_CHACHA20POLY1305_SHA512_Ed25519", kemXWing, 3, crypto.SHA512, sigEd25519),
	85: pqSuite("MLS_256_MLKEM1024_AES256GCM_SHA512_MLDSA87", kemMLKEM1024, 2, crypto.SHA512, sigMLDSA87),
	86: pqSuite("MLS_256_MLKEM1024_CHACHA20POLY1305_SHA512_MLDSA87", kemMLKEM1024, 3, crypto.SHA512, sigMLDSA87),
	87: pqSuite("MLS_256_XWING_AES256GCM_SHA512_MLDSA87", kemXWing, 2, crypto.SHA512, sigMLDSA87),
	88: pqSuite("MLS_256_XWING_CHACHA20POLY1305_SHA512_MLDSA87", kemXWing, 3, crypto.SHA512, sigMLDSA87),
}

// Valid reports whether s is one of the supported suites (AllSuites).
func (s CipherSuite) Valid() bool { return int(s) < len(suites) && suites[s] != nil }

func (s CipherSuite) String() string {
	if s.Valid() {
		return suites[s].name
	}
	return fmt.Sprintf("CipherSuite(0x%04x)", uint16(s))
}

// Hash is the suite's hash function.
func (s CipherSuite) Hash() crypto.Hash {
	if !s.Valid() {
		return 0
	}
	return suites[s].hash
}

// IsEdDSA reports whether the suite signs with Ed25519/Ed448, i.e. deterministically:
// only these suites give byte-identical KeyPackages from the same random seed.
func (s CipherSuite) IsEdDSA() bool {
	return s.Valid() && (suites[s].sig == sigEd25519 || suites[s].sig == sigEd448)
}

// HPKESuite returns the RFC 9180 KEM, KDF and AEAD identifiers of the suite.
func HPKESuite(s CipherSuite) (kem, kdf, aead uint16, err error) {
	p, err := params(s)
	if err != nil {
		return 0, 0, 0, err
	}
	return p.kemID, p.kdfID, p.aeadID, nil
}

func params(s CipherSuite) (*suiteParams, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("mls: %w: 0x%04x", ErrUnknownCipherSuite, uint16(s))
	}
	return suites[s], nil
}

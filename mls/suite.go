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

// AllSuites lists every supported suite in order.
var AllSuites = []CipherSuite{1, 2, 3, 4, 5, 6, 7}

type kemKind uint8

const (
	kemX25519 kemKind = iota + 1
	kemP256
	kemP384
	kemP521
	kemX448
)

type sigKind uint8

const (
	sigEd25519 sigKind = iota + 1
	sigEd448
	sigP256
	sigP384
	sigP521
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
	ecdh     ecdh.Curve     // nil for X448
	ecdsa    elliptic.Curve // nil for EdDSA
	hashSize int
}

var suites = [8]*suiteParams{
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
}

// Valid reports whether s is one of the seven RFC 9420 suites.
func (s CipherSuite) Valid() bool { return s >= 1 && s <= 7 }

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

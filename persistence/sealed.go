package persistence

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
)

// Seal encrypts private material under the master key exactly as the store keeps it
// (id as associated data), so that a cluster can replicate it before the input that
// offers it (docs/scale-out.md). Unseal in any worker holding the same key reverses it.
func (s *Store) Seal(id string, plain []byte) ([]byte, error) {
	if s.seal == nil {
		return nil, ErrNoKey
	}
	return s.seal.seal([]byte(id), plain)
}

// Unseal opens what Seal produced for the same id.
func (s *Store) Unseal(id string, sealed []byte) ([]byte, error) {
	if s.seal == nil {
		return nil, ErrNoKey
	}
	return s.seal.open([]byte(id), sealed)
}

// KeyCheck loads the master key file (creating it when absent and create is set) and
// returns a value that identifies the key without revealing it: workers of one cluster
// compare it, since records sealed by one must open in every other.
func KeyCheck(path string, create bool) (string, error) {
	key, err := loadKey(path, create)
	if errors.Is(err, ErrKeyFileInvalid) && create { // another worker created it meanwhile
		key, err = loadKey(path, false)
	}
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("kpool cluster key check v1"))
	return hex.EncodeToString(m.Sum(nil)[:16]), nil
}

// erasedMarker stands in the secrets bucket for keys the cluster erased before this view
// applied the input that stores them (Input.Erased). Shorter than any sealed value.
var erasedMarker = []byte("erased-in-cluster")

func erasedInCluster(sealed []byte) bool { return bytes.Equal(sealed, erasedMarker) }

// ErrErasedInCluster: the keys were erased by the cluster; a later input of the
// partition's log takes or deletes their KeyPackage.
var ErrErasedInCluster = errors.New("private keys erased by the cluster (a later input takes or deletes them)")

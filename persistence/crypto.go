package persistence

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// KeySize is the length of the master key: AES-256.
const KeySize = 32

// keyCheckPlain is sealed under the master key when a database is created, so that
// opening it with another key fails at start-up instead of at the first take.
var (
	keyCheckPlain = []byte("kpool key check v1")
	keyCheckAD    = []byte("kpool:key-check")
)

// sealer encrypts private material with AES-256-GCM; the record id is the associated
// data, so a ciphertext moved to another id does not decrypt.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal returns nonce || ciphertext+tag.
func (s *sealer) seal(ad, plain []byte) ([]byte, error) {
	out := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := io.ReadFull(rand.Reader, out); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return s.aead.Seal(out, out, plain, ad), nil
}

func (s *sealer) open(ad, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, ErrCorruptSecret
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], ad)
	if err != nil {
		return nil, ErrCorruptSecret
	}
	return plain, nil
}

// loadKey reads the key file, refusing one that others can read. When the file is
// absent and create is true, a new random key is written with mode 0600.
func loadKey(path string, create bool) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !create {
			return nil, &KeyFileError{Path: path, Err: ErrKeyFileMissing,
				Reason: "the database already holds records sealed under a key; restore the key file instead of creating a new one"}
		}
		return createKey(path)
	}
	if err != nil {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: err.Error()}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: err.Error()}
	}
	if !st.Mode().IsRegular() {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: "not a regular file"}
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFilePermissions,
			Reason: fmt.Sprintf("mode %04o lets group or others access it; run chmod 600 %s", perm, path)}
	}
	key := make([]byte, KeySize+1)
	n, err := io.ReadFull(f, key)
	if n != KeySize || (err != nil && !errors.Is(err, io.ErrUnexpectedEOF)) {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid,
			Reason: fmt.Sprintf("want exactly %d bytes, file holds %d or more", KeySize, n)}
	}
	return key[:KeySize], nil
}

func createKey(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: "create: " + err.Error()}
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		os.Remove(path)
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: "write: " + err.Error()}
	}
	// The key must be durable before any record sealed under it is.
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: "sync: " + err.Error()}
	}
	if err := f.Close(); err != nil {
		return nil, &KeyFileError{Path: path, Err: ErrKeyFileInvalid, Reason: "close: " + err.Error()}
	}
	return key, nil
}

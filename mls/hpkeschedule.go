package mls

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"

	"golang.org/x/crypto/chacha20poly1305"
)

// hpkeSchedule is the RFC 9180 §5.1 key schedule in base mode (empty psk) for the HKDF
// KDFs, reduced to what single-shot Seal/Open needs: the AEAD and the first nonce. Only
// ML-KEM-512 uses it; crypto/hpke runs the schedule for every other KEM.
type hpkeSchedule struct {
	aead  cipher.AEAD
	nonce []byte
}

func newHPKESchedule(kemID, kdfID, aeadID uint16, shared, info []byte) (*hpkeSchedule, error) {
	var h func() hash.Hash
	switch kdfID {
	case 1:
		h = sha256.New
	case 2:
		h = sha512.New384
	case 3:
		h = sha512.New
	default:
		return nil, fmt.Errorf("mls: HPKE KDF 0x%04x not supported", kdfID)
	}
	keyLen := 32
	switch aeadID {
	case 1:
		keyLen = 16
	case 2, 3:
	default:
		return nil, fmt.Errorf("mls: HPKE AEAD 0x%04x not supported", aeadID)
	}
	suiteID := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16([]byte("HPKE"), kemID), kdfID), aeadID)
	extract := func(salt []byte, label string, ikm []byte) []byte {
		prk, _ := hkdf.Extract(h, labeled(suiteID, label, ikm), salt) // HMAC takes any key
		return prk
	}
	expand := func(prk []byte, label string, ctx []byte, n int) ([]byte, error) {
		li := binary.BigEndian.AppendUint16(nil, uint16(n))
		return hkdf.Expand(h, prk, string(append(li, labeled(suiteID, label, ctx)...)), n)
	}
	ctx := append([]byte{0}, extract(nil, "psk_id_hash", nil)...) // mode_base, empty psk_id
	ctx = append(ctx, extract(nil, "info_hash", info)...)
	secret := extract(shared, "secret", nil)
	key, err := expand(secret, "key", ctx, keyLen)
	if err != nil {
		return nil, err
	}
	nonce, err := expand(secret, "base_nonce", ctx, 12)
	if err != nil {
		return nil, err
	}
	var a cipher.AEAD
	if aeadID == 3 {
		a, err = chacha20poly1305.New(key)
	} else {
		var b cipher.Block
		if b, err = aes.NewCipher(key); err == nil {
			a, err = cipher.NewGCM(b)
		}
	}
	if err != nil {
		return nil, err
	}
	return &hpkeSchedule{aead: a, nonce: nonce}, nil
}

// labeled is "HPKE-v1" ‖ suite_id ‖ label ‖ value, the input of LabeledExtract/Expand.
func labeled(suiteID []byte, label string, value []byte) []byte {
	b := make([]byte, 0, 7+len(suiteID)+len(label)+len(value))
	b = append(b, "HPKE-v1"...)
	b = append(b, suiteID...)
	b = append(b, label...)
	return append(b, value...)
}

package mls

import "fmt"

// CheckSignaturePublicKey reports whether pub is a signature public key of the suite
// (a client-custody pool is registered with its client's key).
func CheckSignaturePublicKey(suite CipherSuite, pub []byte) error {
	p, err := params(suite)
	if err != nil {
		return err
	}
	v, err := parseSignatureKey(p, pub)
	if err == nil && v.pointInvalid() {
		err = fmt.Errorf("not a curve point")
	}
	if err != nil {
		return fmt.Errorf("mls: %w: %v", ErrInvalidSignatureKey, err)
	}
	return nil
}

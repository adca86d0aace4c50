package mls

import (
	"errors"
	"testing"
)

// FuzzPQKeys feeds arbitrary bytes to the decoders the PQ suites add: KEM public keys
// (Validate's key check, SealTo), KEM seeds and encapsulations (PublicFromPrivate, Open) and
// ML-DSA-87 public keys and signatures. None may panic; a public key the check accepts
// must be one SealTo can encrypt to; a seed of the right size always has a public key.
func FuzzPQKeys(f *testing.F) {
	for i, s := range PQSuites {
		kp, pb := generate(f, s, GenerateOptions{Rand: newSeeded("fuzz")})
		enc, ct, err := SealTo(s, kp.InitKey, nil, []byte("x"), nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), kp.InitKey, pb.InitPriv, enc, ct)
		f.Add(uint8(i), kp.LeafNode.SignatureKey, kp.Signature, enc[:len(enc)-1], kp.Signature)
	}
	f.Fuzz(func(t *testing.T, which uint8, key, priv, enc, ct []byte) {
		s := PQSuites[int(which)%len(PQSuites)]
		p := suites[s]
		if checkHPKEPublic(p, key) == nil {
			if _, _, err := SealTo(s, key, nil, []byte("x"), nil); err != nil {
				t.Fatalf("accepted key does not seal: %v", err)
			}
		}
		if _, err := PublicFromPrivate(s, priv); (err == nil) != (len(priv) == p.privLen) {
			t.Fatalf("seed of %d bytes: %v", len(priv), err)
		}
		if _, err := Open(s, priv, enc, nil, ct); err != nil && !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrInvalidPrivateKey) {
			t.Fatalf("Open: unexpected error %v", err)
		}
		_ = VerifyWithLabel(s, key, "FuzzLabel", enc, ct)
		var pb PrivateBundle
		_ = pb.UnmarshalBinary(key)
	})
}

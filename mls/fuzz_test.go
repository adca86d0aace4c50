package mls

import (
	"bytes"
	"testing"
	"time"
)

// fuzzSeeds returns MLSMessage encodings: generated KeyPackages of every suite plus a few
// interop vectors.
func fuzzSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, suite := range AllSuites {
		kp, _ := generate(f, suite, GenerateOptions{LastResort: suite%2 == 0, Grease: suite == 3, Rand: newSeeded("fuzz")})
		seeds = append(seeds, MarshalMLSMessage(kp))
	}
	var vs []struct {
		KP hexBytes `json:"key_package"`
	}
	loadVectors(f, "welcome.json", &vs)
	for _, v := range vs {
		seeds = append(seeds, v.KP)
	}
	return seeds
}

// checkDecoded is the fuzz property: accepted input re-encodes to itself, and the
// accessors and Validate never panic on it.
func checkDecoded(t *testing.T, in []byte, kp *KeyPackage, err error, encode func(*KeyPackage) []byte) {
	if err != nil {
		if kp != nil {
			t.Fatalf("non-nil KeyPackage with error %v", err)
		}
		return
	}
	if out := encode(kp); !bytes.Equal(out, in) {
		t.Fatalf("decode→encode is not the identity:\n in %x\nout %x", in, out)
	}
	_ = Validate(kp, time.Unix(1_800_000_000, 0), DefaultPolicy())
	_, _ = kp.Ref()
	_ = kp.IsLastResort()
}

func FuzzDecodeKeyPackage(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[4:])
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		kp, err := DecodeKeyPackage(in)
		checkDecoded(t, in, kp, err, (*KeyPackage).Marshal)
		if _, err := DecodeAny(in); err != nil && kp != nil {
			t.Fatalf("DecodeAny rejects a valid bare KeyPackage: %v", err)
		}
	})
}

func FuzzDecodeMLSMessage(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{0, 1, 0, 3})
	f.Fuzz(func(t *testing.T, in []byte) {
		kp, err := DecodeMLSMessage(in)
		checkDecoded(t, in, kp, err, MarshalMLSMessage)
	})
}

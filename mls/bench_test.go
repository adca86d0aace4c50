package mls

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/cloudflare/circl/dh/x448"
	"github.com/cloudflare/circl/sign/ed448"
)

// Benchmarks: Generate and Validate per suite, each next to a "bare" baseline doing the same
// primitive operations directly (docs/benchmarks.md reports bare ns/op ÷ mls ns/op).
//
// Generate bare: two HPKE key pairs from fresh random bytes and two signatures over
// messages the size of the LeafNodeTBS and KeyPackageTBS SignContents.
// Validate bare: parse the signature key, check both HPKE public keys, verify two
// signatures over messages of those sizes.

func benchSigner(b *testing.B, suite CipherSuite) Signer {
	return newSigner(b, suite, "bench")
}

// generateOps returns one Generate of suite and its bare equivalent, failing b.
func generateOps(b *testing.B, suite CipherSuite) (mlsOp, bareOp func()) {
	signer := benchSigner(b, suite)
	id := []byte("alice@example.org")
	kp, _ := generate(b, suite, GenerateOptions{})
	leafMsg, kpMsg := tbsContents(kp)
	p := suites[suite]
	mlsOp = func() {
		if _, _, err := Generate(suite, signer, id, GenerateOptions{Now: testNow}); err != nil {
			b.Fatal(err)
		}
	}
	bareOp = func() {
		bareHPKEKey(b, p)
		bareHPKEKey(b, p)
		if _, err := signer.Sign(leafMsg); err != nil {
			b.Fatal(err)
		}
		if _, err := signer.Sign(kpMsg); err != nil {
			b.Fatal(err)
		}
	}
	return mlsOp, bareOp
}

// validateOps returns one Validate of a suite's KeyPackage and its bare equivalent.
func validateOps(b *testing.B, suite CipherSuite) (mlsOp, bareOp func()) {
	kp, _ := generate(b, suite, GenerateOptions{})
	leafMsg, kpMsg := tbsContents(kp)
	p := suites[suite]
	mlsOp = func() {
		if err := Validate(kp, testNow, DefaultPolicy()); err != nil {
			b.Fatal(err)
		}
	}
	bareOp = func() {
		if !bareVerify(p, kp.LeafNode.SignatureKey, kp.InitKey, kp.LeafNode.EncryptionKey, leafMsg, kpMsg, kp.LeafNode.Signature, kp.Signature) {
			b.Fatal("bare verification failed")
		}
	}
	return mlsOp, bareOp
}

type benchOps func(b *testing.B, suite CipherSuite) (mlsOp, bareOp func())

// perOp runs each side as its own sub-benchmark (suite=N/mls, suite=N/bare), with allocations.
func perOp(b *testing.B, ops benchOps) {
	for _, suite := range AllSuites {
		for i, side := range []string{"mls", "bare"} {
			b.Run(fmt.Sprintf("suite=%d/%s", suite, side), func(b *testing.B) {
				mlsOp, bareOp := ops(b, suite)
				op := [2]func(){mlsOp, bareOp}[i]
				b.ReportAllocs()
				for b.Loop() {
					op()
				}
			})
		}
	}
}

func BenchmarkGenerate(b *testing.B) { perOp(b, generateOps) }
func BenchmarkValidate(b *testing.B) { perOp(b, validateOps) }

// tbsContents returns the two SignContent messages of kp.
func tbsContents(kp *KeyPackage) (leaf, whole []byte) {
	leafTBS, kpTBS := kp.signedParts()
	return signContent("LeafNodeTBS", leafTBS), signContent("KeyPackageTBS", kpTBS)
}

func bareHPKEKey(b *testing.B, p *suiteParams) {
	if p.kem.pq() {
		barePQKey(b, p)
		return
	}
	if p.kem == kemX448 {
		var sk, pk x448.Key
		if _, err := rand.Read(sk[:]); err != nil {
			b.Fatal(err)
		}
		x448.KeyGen(&pk, &sk)
		return
	}
	k, err := p.ecdh.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	_ = k.PublicKey().Bytes()
}

func bareVerify(p *suiteParams, pub, init, enc, m1, m2, s1, s2 []byte) bool {
	if p.kem.pq() && (!barePQPublic(p, init) || !barePQPublic(p, enc)) {
		return false
	}
	if p.sig == sigMLDSA87 {
		return bareMLDSAVerify(pub, m1, m2, s1, s2)
	}
	if p.ecdh != nil && p.kem != kemX25519 {
		if _, err := p.ecdh.NewPublicKey(init); err != nil {
			return false
		}
		if _, err := p.ecdh.NewPublicKey(enc); err != nil {
			return false
		}
	}
	switch p.sig {
	case sigEd25519:
		return ed25519.Verify(pub, m1, s1) && ed25519.Verify(pub, m2, s2)
	case sigEd448:
		return ed448.Verify(pub, m1, s1, "") && ed448.Verify(pub, m2, s2, "")
	}
	k, err := ecdsa.ParseUncompressedPublicKey(p.ecdsa, pub)
	if err != nil {
		return false
	}
	h1, h2 := p.newHash(), p.newHash()
	h1.Write(m1)
	h2.Write(m2)
	return ecdsa.VerifyASN1(k, h1.Sum(nil), s1) && ecdsa.VerifyASN1(k, h2.Sum(nil), s2)
}

// The *VsBare benchmarks interleave one mls operation with its bare equivalent in every
// iteration, alternating the order, so load from other processes hits both sides alike.
// They report mls-ns/op, bare-ns/op and ratio = bare ÷ mls (1.0 = no overhead).

func vsBare(b *testing.B, ops benchOps) {
	for _, suite := range AllSuites {
		b.Run(fmt.Sprintf("suite=%d", suite), func(b *testing.B) {
			mlsOp, bareOp := ops(b, suite)
			interleave(b, mlsOp, bareOp)
		})
	}
}

func BenchmarkGenerateVsBare(b *testing.B) { vsBare(b, generateOps) }
func BenchmarkValidateVsBare(b *testing.B) { vsBare(b, validateOps) }

func interleave(b *testing.B, mlsOp, bareOp func()) {
	var mlsNS, bareNS time.Duration
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			t0 := time.Now()
			mlsOp()
			t1 := time.Now()
			bareOp()
			mlsNS += t1.Sub(t0)
			bareNS += time.Since(t1)
		} else {
			t0 := time.Now()
			bareOp()
			t1 := time.Now()
			mlsOp()
			bareNS += t1.Sub(t0)
			mlsNS += time.Since(t1)
		}
		n++
	}
	b.ReportMetric(float64(mlsNS.Nanoseconds())/float64(n), "mls-ns/op")
	b.ReportMetric(float64(bareNS.Nanoseconds())/float64(n), "bare-ns/op")
	b.ReportMetric(float64(bareNS)/float64(mlsNS), "ratio")
}

package worker_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/internal/testcert"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
)

// Through the worker, for every cipher suite: a pool listing credentials [basic, x509]
// (what an OpenMLS group requiring x509-capable members checks) generates KeyPackages
// that list both, and keypackage.get shows it; a pool re-registered with an x509
// credential generates KeyPackages that carry its chain and validate against its root.
func TestCapabilitiesEverySuite(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	dir := t.TempDir()
	w := startWorker(t, ns.URL(), dir, clock)
	nc, c := connect(t, ns.URL())
	ds := startDS(t, c, true)
	small := events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(6)}
	// Registrations with capabilities and chains replay exactly (checked after the suites).
	defer func() {
		if t.Failed() {
			return
		}
		waitIdle(t, w, nc, events.DefaultPrefix)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if n := verifyDir(t, dir); n < 100 {
			t.Fatalf("replay of the journal: %d inputs applied, want at least 100", n)
		}
	}()

	for _, suite := range mls.AllSuites {
		t.Run(fmt.Sprint("suite", uint16(suite)), func(t *testing.T) {
			both := fmt.Sprintf("both-%d", suite)
			pol := small
			pol.Capabilities = &events.Capabilities{Credentials: []events.CapabilityValue{"basic", "x509"}}
			if _, err := c.RegisterSealed(ctx(t), both, natsbus.RegisterRequest{Identity: "alice", CipherSuite: uint16(suite), Policy: pol}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 20*time.Second, "2 regular KeyPackages and a last resort", func() bool {
				return len(ds.refs(both, false)) == 2 && len(ds.refs(both, true)) == 1
			})
			for _, ref := range append(ds.refs(both, false), ds.refs(both, true)...) {
				kp := getValid(t, c, both, ref, clock.Now(), mls.DefaultPolicy())
				if kp.LeafNode.Credential.Type != mls.CredentialBasic || string(kp.LeafNode.Credential.Identity) != "alice" {
					t.Errorf("%s: credential %d %q, want basic alice", ref, kp.LeafNode.Credential.Type, kp.LeafNode.Credential.Identity)
				}
			}

			// x509: register (the worker makes the key), certify the key, re-register with
			// the chain and a larger target; the refill carries the chain.
			cert := fmt.Sprintf("x509-%d", suite)
			first := events.Policy{Target: new(1), LowWatermark: new(1), HardCap: new(6)}
			info, err := c.RegisterSealed(ctx(t), cert, natsbus.RegisterRequest{Identity: "bob", CipherSuite: uint16(suite), Policy: first})
			if err != nil {
				t.Fatal(err)
			}
			key, err := mls.SignaturePublicKey(suite, info.SignatureKey)
			if err != nil {
				t.Fatal(err)
			}
			if mlDSA(suite) { // crypto/x509 has no ML-DSA certificates: refused with the reason
				other := testcert.New(t, mustEd25519(t), testcert.Options{})
				_, err := c.RegisterSealed(ctx(t), cert, natsbus.RegisterRequest{Identity: "bob", CipherSuite: uint16(suite), Policy: events.Policy{X509Chain: other.DER}})
				var ae *natsbus.APIError
				if !errors.As(err, &ae) || ae.Code != pool.CodeInvalidConfig || !strings.Contains(ae.Description, "x509 credentials are not supported for ML-DSA-87 signature keys") {
					t.Errorf("x509 chain for an ML-DSA pool: %v", err)
				}
				return
			}
			chain := testcert.New(t, key, testcert.Options{NotBefore: clock.Now().Add(-time.Hour), NotAfter: clock.Now().Add(365 * 24 * time.Hour), Ed448CA: suite == 6})
			eventually(t, 20*time.Second, "the basic KeyPackage", func() bool { return len(ds.refs(cert, false)) == 1 })
			second := events.Policy{Target: new(3), LowWatermark: new(3), HardCap: new(6), X509Chain: chain.DER, X509TrustAnchors: [][]byte{chain.Root.Raw}}
			again, err := c.RegisterSealed(ctx(t), cert, natsbus.RegisterRequest{Identity: "bob", CipherSuite: uint16(suite), Policy: second})
			if err != nil {
				t.Fatal(err)
			}
			if got := again.Changed; !slices.Equal(got, []string{"target", "low_watermark", "x509_chain", "x509_trust_anchors"}) {
				t.Errorf("changed %v", got)
			}
			if p := again.Policy; !slices.EqualFunc(p.X509Chain, chain.DER, bytes.Equal) || p.LastResort == nil || !*p.LastResort {
				t.Errorf("policy in force: chain of %d, last_resort %v", len(p.X509Chain), p.LastResort)
			}
			eventually(t, 20*time.Second, "2 more KeyPackages after re-registration", func() bool { return len(ds.refs(cert, false)) == 3 })
			anchored := mls.DefaultPolicy()
			anchored.TrustAnchors = []*x509.Certificate{chain.Root}
			for i, ref := range ds.refs(cert, false) {
				if i == 0 { // generated before the chain was given
					if kp := getValid(t, c, cert, ref, clock.Now(), mls.DefaultPolicy()); kp.LeafNode.Credential.Type != mls.CredentialBasic {
						t.Errorf("%s: the first KeyPackage changed credential", ref)
					}
					continue
				}
				kp := getValid(t, c, cert, ref, clock.Now(), anchored)
				cred := kp.LeafNode.Credential
				if cred.Type != mls.CredentialX509 || !slices.EqualFunc(cred.Certificates, chain.DER, bytes.Equal) {
					t.Errorf("%s: credential %d with %d certificates, want the x509 chain", ref, cred.Type, len(cred.Certificates))
				}
				if got := kp.LeafNode.Capabilities.Credentials; !slices.Equal(got, []mls.CredentialType{mls.CredentialX509}) {
					t.Errorf("%s: capabilities.credentials %v, want [x509]", ref, got)
				}
			}
		})
	}
}

// getValid reads a KeyPackage through keypackage.get, checks the capabilities the answer
// shows against the KeyPackage's own, and validates it.
func getValid(t *testing.T, c *natsbus.Client, poolID, ref string, at time.Time, p mls.Policy) *mls.KeyPackage {
	t.Helper()
	info, err := c.Get(ctx(t), poolID, ref)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := mls.DecodeMLSMessage(info.KeyPackage)
	if err != nil {
		t.Fatal(err)
	}
	if err := mls.Validate(kp, at, p); err != nil {
		t.Fatalf("%s/%s: %v", poolID, ref, err)
	}
	lc := kp.LeafNode.Capabilities
	l := lc.Lists()
	want := natsbus.Capabilities{Versions: l[0], CipherSuites: l[1], Extensions: l[2], Proposals: l[3], Credentials: l[4]}
	if info.Capabilities == nil || fmt.Sprint(*info.Capabilities) != fmt.Sprint(want) || info.CredentialType != uint16(kp.LeafNode.Credential.Type) {
		t.Errorf("%s/%s: keypackage.get shows capabilities %+v credential %d, the KeyPackage has %+v %d", poolID, ref, info.Capabilities, info.CredentialType, want, kp.LeafNode.Credential.Type)
	}
	if info.LastResort != kp.IsLastResort() || (kp.IsLastResort() && !slices.Contains(lc.Extensions, mls.ExtensionLastResort)) {
		t.Errorf("%s/%s: last resort %v, extensions %v", poolID, ref, info.LastResort, lc.Extensions)
	}
	return kp
}

func mlDSA(s mls.CipherSuite) bool {
	return s >= mls.MLS256MLKEM1024AES256GCMSHA512MLDSA87 && s <= mls.MLS256XWingChaCha20Poly1305SHA512MLDSA87
}

func mustEd25519(t *testing.T) ed25519.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// Bad capability configurations are refused by the API with the reason, and create
// nothing; a pool with last_resort: false never gets a last-resort KeyPackage.
func TestCapabilitiesRefusedAndLastResortOff(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	startWorker(t, ns.URL(), t.TempDir(), clock)
	_, c := connect(t, ns.URL())
	ds := startDS(t, c, true)

	for _, bad := range []struct {
		caps events.Capabilities
		want string
	}{
		{events.Capabilities{Credentials: []events.CapabilityValue{"x.509"}}, `capabilities.credentials[0]: "x.509" is neither a number from 1 to 65535 nor one of basic, x509`},
		{events.Capabilities{Credentials: []events.CapabilityValue{"x509"}}, "capabilities: credentials [x509] must list the KeyPackage's own credential type basic"},
		{events.Capabilities{LeafExtensions: []events.Extension{{Type: "0xff00"}}}, "capabilities: leaf_extensions carries 0xff00, which capabilities.extensions [] must then list"},
	} {
		caps := bad.caps
		_, err := c.RegisterSealed(ctx(t), "bad", natsbus.RegisterRequest{Identity: "a", CipherSuite: 1, Policy: events.Policy{Capabilities: &caps}})
		var ae *natsbus.APIError
		if !errors.As(err, &ae) || ae.Code != pool.CodeInvalidConfig || !strings.Contains(ae.Description, bad.want) {
			t.Errorf("error %v, want %s containing %q", err, pool.CodeInvalidConfig, bad.want)
		}
	}
	if _, err := c.Status(ctx(t), "bad"); err == nil || !strings.Contains(err.Error(), "pool bad is not registered") {
		t.Errorf("a refused registration left a pool: %v", err)
	}

	info, err := c.RegisterSealed(ctx(t), "wire", natsbus.RegisterRequest{Identity: "a", CipherSuite: 2, Policy: events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6), LastResort: new(false),
		Capabilities: &events.Capabilities{Credentials: []events.CapabilityValue{"basic", "x509"}}}}) // docs/mls.md's Wire row
	if err != nil || info.Policy.LastResort == nil || *info.Policy.LastResort {
		t.Fatalf("register: %v, last_resort in force %v", err, info.Policy.LastResort)
	}
	var st events.Status
	eventually(t, 20*time.Second, "3 available KeyPackages", func() bool {
		st, err = c.Status(ctx(t), "wire")
		return err == nil && st.Counts.Available == 3
	})
	if st.LastResortRef != "" || len(ds.refs("wire", true)) != 0 || len(ds.refs("wire", false)) != 3 || st.Counts.Created != 0 {
		t.Fatalf("status %+v (%v), last-resort uploads %d: want 3 available and no last resort", st, err, len(ds.refs("wire", true)))
	}
	for _, ref := range ds.refs("wire", false) {
		kp := getValid(t, c, "wire", ref, clock.Now(), mls.DefaultPolicy())
		if lc := kp.LeafNode.Capabilities; slices.Contains(lc.Extensions, mls.ExtensionLastResort) || kp.IsLastResort() || !slices.Equal(lc.Credentials, []mls.CredentialType{1, 2}) {
			t.Errorf("%s: extensions %v credentials %v, want no last_resort and [basic x509]", ref, lc.Extensions, lc.Credentials)
		}
	}
}

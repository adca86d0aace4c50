package pool

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/internal/testcert"
	"github.com/kpool/kpool/mls"
)

func names(vals ...string) []events.CapabilityValue {
	out := make([]events.CapabilityValue, len(vals))
	for i, v := range vals {
		out[i] = events.CapabilityValue(v)
	}
	return out
}

// expectRefused steps in and checks the exact rejection and that nothing changed.
func expectRefused(t *testing.T, h *harness, in events.Event, want string) {
	t.Helper()
	before := snapshot(h.store)
	_, err := h.step(in)
	var re *RejectError
	if !errors.As(err, &re) || re.Code != CodeInvalidConfig || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want %s containing %q", err, CodeInvalidConfig, want)
	}
	if snapshot(h.store) != before {
		t.Error("a refused registration changed the store")
	}
}

func TestRegisterRefusesBadCapabilities(t *testing.T) {
	for _, c := range []struct {
		name string
		caps events.Capabilities
		want string
	}{
		{"unknown credential name", events.Capabilities{Credentials: names("basic", "x.509")}, `capabilities.credentials[1]: "x.509" is neither a number from 1 to 65535 nor one of basic, x509`},
		{"unknown proposal name", events.Capabilities{Proposals: names("commit")}, `capabilities.proposals[0]: "commit" is neither a number from 1 to 65535 nor one of add, update, remove, psk, reinit, external_init, group_context_extensions`},
		{"own credential type missing", events.Capabilities{Credentials: names("x509")}, "capabilities: credentials [x509] must list the KeyPackage's own credential type basic"},
		{"own suite missing", events.Capabilities{CipherSuites: names("2", "0x0a0a")}, "capabilities: cipher_suites [MLS_128_DHKEMP256_AES128GCM_SHA256_P256 0x0a0a] must list the KeyPackage's own suite 1"},
		{"unlisted leaf extension", events.Capabilities{LeafExtensions: []events.Extension{{Type: "0xff00", Data: []byte{1}}}}, "capabilities: leaf_extensions carries 0xff00, which capabilities.extensions [] must then list"},
		{"last_resort as an extension", events.Capabilities{KeyPackageExtensions: []events.Extension{{Type: "last_resort"}}}, "capabilities.key_package_extensions[0]: last_resort is set by the policy's last_resort switch, not as an extension"},
		{"reserved value", events.Capabilities{Extensions: names("0")}, "capabilities.extensions[0]: 0 is reserved"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			caps := c.caps
			expectRefused(t, h, registerEvent(h, "p1", events.Policy{Capabilities: &caps}), c.want)
		})
	}
}

func TestRegisterCapabilitiesApply(t *testing.T) {
	h := newHarness(t)
	caps := &events.Capabilities{Credentials: names("basic", "x509", "0x1a1a"), Extensions: names("0xff00"), Proposals: names("0x0a0a"),
		LeafExtensions: []events.Extension{{Type: "application_id", Data: []byte{3, 'd', 'e', 'v'}}, {Type: "65280"}}}
	mustStep(t, h, registerEvent(h, "p1", events.Policy{Capabilities: caps}))
	o, err := KeyPackageOptions(h.store.pools["p1"])
	if err != nil {
		t.Fatal(err)
	}
	c := o.Capabilities
	if !slices.Equal(c.Credentials, []mls.CredentialType{1, 2, 0x1a1a}) || !slices.Equal(c.Extensions, []mls.ExtensionType{0xff00}) ||
		!slices.Equal(c.Proposals, []mls.ProposalType{0x0a0a}) || len(c.Versions)+len(c.CipherSuites) != 0 || o.Credential != nil {
		t.Errorf("options %+v", o)
	}
	if len(o.LeafExtensions) != 2 || o.LeafExtensions[0].Type != mls.ExtensionApplicationID || string(o.LeafExtensions[0].Data) != "\x03dev" || o.LeafExtensions[1].Type != 0xff00 {
		t.Errorf("leaf extensions %+v", o.LeafExtensions)
	}
}

func TestRegisterX509Chain(t *testing.T) {
	priv, pub, err := mls.NewSignatureKey(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	clear(priv)
	key, _ := mls.SignaturePublicKey(1, pub)
	chain := testcert.New(t, key, testcert.Options{NotBefore: start.Add(-time.Hour), NotAfter: start.Add(30 * 24 * time.Hour)})
	register := func(h *harness, pol events.Policy) events.Event {
		in := registerEvent(h, "p1", pol)
		in.Register.SignatureKey = pub
		return in
	}

	h := newHarness(t)
	mustStep(t, h, register(h, events.Policy{X509Chain: chain.DER, X509TrustAnchors: [][]byte{chain.Root.Raw}}))
	o, err := KeyPackageOptions(h.store.pools["p1"])
	if err != nil || o.Credential == nil || o.Credential.Type != mls.CredentialX509 || !slices.EqualFunc(o.Credential.Certificates, chain.DER, slices.Equal) {
		t.Fatalf("options %+v, %v", o, err)
	}

	other := testcert.New(t, key, testcert.Options{NotBefore: start.Add(-time.Hour), NotAfter: start.Add(time.Hour)})
	for _, c := range []struct {
		name string
		pol  events.Policy
		want string
	}{
		{"garbage", events.Policy{X509Chain: [][]byte{[]byte("pem?")}}, "x509_chain: certificate 0 does not parse"},
		{"credentials without x509", events.Policy{X509Chain: chain.DER, Capabilities: &events.Capabilities{Credentials: names("basic")}}, "capabilities: credentials [basic] must list the KeyPackage's own credential type x509"},
		{"foreign anchor", events.Policy{X509Chain: chain.DER, X509TrustAnchors: [][]byte{other.Root.Raw}}, `x509_chain: the chain does not end at or under a trust anchor ("CN=kpool test root": x509: Ed25519 verification failure)`},
		{"anchors alone", events.Policy{X509TrustAnchors: [][]byte{chain.Root.Raw}}, "x509_trust_anchors without x509_chain"},
		{"bad anchor", events.Policy{X509Chain: chain.DER, X509TrustAnchors: [][]byte{{1}}}, "x509_trust_anchors[0] does not parse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			expectRefused(t, h, register(h, c.pol), c.want)
		})
	}
	// Another key's certificate; and an anchored chain past its validity at the core's time.
	h = newHarness(t)
	in := registerEvent(h, "p1", events.Policy{X509Chain: chain.DER})
	_, in.Register.SignatureKey, _ = mls.NewSignatureKey(1, nil)
	expectRefused(t, h, in, "x509_chain: the leaf certificate's public key (Ed25519) is not the signature key")
	h = newHarness(t)
	h.clock = start.Add(2 * time.Hour)
	expectRefused(t, h, register(h, events.Policy{X509Chain: other.DER, X509TrustAnchors: [][]byte{other.Root.Raw}}), "x509_chain: certificate 0 is valid from 2025-12-31T23:00:00Z to 2026-01-01T01:00:00Z, not at 2026-01-01T02:00:00Z")
}

func TestLastResortOff(t *testing.T) {
	h := newHarness(t)
	r := mustStep(t, h, registerEvent(h, "p1", events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4), LastResort: new(false)}))
	if len(r.Generate) != 1 || r.Generate[0].LastResort || r.Generate[0].Count != 2 {
		t.Fatalf("generate %+v, want 2 regular and no last resort", r.Generate)
	}
	before := snapshot(h.store)
	_, err := h.step(h.generated("p1", true, 0))
	var re *RejectError
	if !errors.As(err, &re) || re.Code != CodeInvalidInput || !strings.Contains(err.Error(), "pool p1 keeps no last-resort KeyPackage (policy last_resort: false)") {
		t.Errorf("last resort for a pool without: %v", err)
	}
	if snapshot(h.store) != before {
		t.Error("the refused KeyPackage changed the store")
	}

	// Turned off on a pool that asked for one: the request is cancelled.
	h = newHarness(t)
	mustStep(t, h, registerEvent(h, "p2", events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)}))
	if !h.store.pools["p2"].LastResortRequested {
		t.Fatal("no last resort requested by default")
	}
	mustStep(t, h, registerEvent(h, "p2", events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4), LastResort: new(false)}))
	if p := h.store.pools["p2"]; p.LastResortRequested {
		t.Error("last resort still requested after last_resort: false")
	}
}

// OpenMLS refuses a KeyPackage at exactly not_before and not_after; the margins that keep
// kpool from offering one in those seconds cannot be set below one second.
func TestConfigLastSecond(t *testing.T) {
	c := DefaultConfig()
	c.ExpiryMargin, c.NotBeforeBackdate = 0, 0
	err := c.Validate()
	for _, want := range []string{
		"not_before_backdate 0s must be at least 1s: OpenMLS refuses a KeyPackage at exactly not_before",
		"expiry_margin 0s must be at least 1s (OpenMLS refuses a KeyPackage at not_after: kpool never offers one in its last second)",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
	c.ExpiryMargin, c.NotBeforeBackdate = time.Second, time.Second
	if err := c.Validate(); err != nil {
		t.Errorf("one-second margins: %v", err)
	}
}

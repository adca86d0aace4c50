package mls

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseCapabilityValue(t *testing.T) {
	for _, c := range []struct {
		kind CapabilityKind
		in   string
		want uint16
	}{
		{KindCredentials, "basic", 1}, {KindCredentials, "X509", 2}, {KindCredentials, "0x0a0a", 0x0a0a},
		{KindExtensions, "last_resort", 0x000a}, {KindExtensions, "application_id", 1}, {KindExtensions, "65280", 0xff00},
		{KindProposals, "group_context_extensions", 7}, {KindVersions, "mls10", 1},
		{KindCipherSuites, "MLS_256_DHKEMP384_AES256GCM_SHA384_P384", 7}, {KindCipherSuites, "0xFAFA", 0xfafa},
	} {
		got, err := ParseCapabilityValue(c.kind, c.in)
		if err != nil || got != c.want {
			t.Errorf("%s %q: %d, %v; want %d", c.kind, c.in, got, err, c.want)
		}
	}
	for _, c := range []struct {
		kind    CapabilityKind
		in, msg string
	}{
		{KindCredentials, "x.509", `credentials: "x.509" is neither a number from 1 to 65535 nor one of basic, x509`},
		{KindProposals, "commit", "nor one of add, update, remove, psk, reinit, external_init, group_context_extensions"},
		{KindExtensions, "65536", `"65536" is neither a number`},
		{KindExtensions, "-1", `"-1" is neither a number`},
		{KindExtensions, "0", "extensions: 0 is reserved"},
		{"colours", "red", `unknown capability list "colours"`},
	} {
		if _, err := ParseCapabilityValue(c.kind, c.in); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s %q: error %v, want %q", c.kind, c.in, err, c.msg)
		}
	}
	if CapabilityName(KindExtensions, 10) != "last_resort" || CapabilityName(KindCredentials, 0x1a1a) != "0x1a1a" {
		t.Error("CapabilityName")
	}
}

// Capabilities as configured, GREASE values included, come back unchanged from the wire.
func TestCapabilitiesRoundTrip(t *testing.T) {
	want := Capabilities{
		Versions: []uint16{1, 0x2a2a}, CipherSuites: []CipherSuite{2, 0x0a0a, 1}, Extensions: []ExtensionType{0xff00, 0x4a4a},
		Proposals: []ProposalType{0x5a5a, 8}, Credentials: []CredentialType{1, 2, 0xeaea},
	}
	kp, _ := generate(t, 1, GenerateOptions{Capabilities: want, LeafExtensions: []Extension{{Type: 0xff00, Data: []byte{1}}, {Type: ExtensionApplicationID, Data: []byte{3, 'd', 'e', 'v'}}}})
	got := checkRoundTrip(t, MarshalMLSMessage(kp), true, testNow, DefaultPolicy()).LeafNode.Capabilities
	if !slices.Equal(got.Versions, want.Versions) || !slices.Equal(got.CipherSuites, want.CipherSuites) || !slices.Equal(got.Extensions, want.Extensions) ||
		!slices.Equal(got.Proposals, want.Proposals) || !slices.Equal(got.Credentials, want.Credentials) {
		t.Errorf("capabilities %+v, want %+v", got, want)
	}
	// last_resort is added to the extensions of a last-resort KeyPackage.
	kp, _ = generate(t, 1, GenerateOptions{Capabilities: want, LastResort: true})
	if got := kp.LeafNode.Capabilities.Extensions; !slices.Equal(got, []ExtensionType{0xff00, 0x4a4a, ExtensionLastResort}) || !kp.IsLastResort() {
		t.Errorf("last resort: extensions %v", got)
	}
}

func TestCheckProfileRefusals(t *testing.T) {
	base := DefaultCapabilities(2, CredentialBasic)
	with := func(f func(c *Capabilities)) Capabilities {
		c := base.WithDefaults(2, CredentialBasic)
		f(&c)
		return c
	}
	for _, c := range []struct {
		name       string
		caps       Capabilities
		leaf, kpEx []Extension
		msg        string
	}{
		{"own suite missing", with(func(c *Capabilities) { c.CipherSuites = []CipherSuite{1} }), nil, nil, "cipher_suites [MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519] must list the KeyPackage's own suite 2"},
		{"own credential missing", with(func(c *Capabilities) { c.Credentials = []CredentialType{CredentialX509} }), nil, nil, "credentials [x509] must list the KeyPackage's own credential type basic"},
		{"version missing", with(func(c *Capabilities) { c.Versions = []uint16{0x0a0a} }), nil, nil, "versions [0x0a0a] must list mls10 (1)"},
		{"repeated value", with(func(c *Capabilities) { c.Proposals = []ProposalType{8, 8} }), nil, nil, "proposals lists 0x0008 twice"},
		{"unlisted leaf extension", base, []Extension{{Type: 0xff00}}, nil, "leaf_extensions carries 0xff00, which capabilities.extensions [] must then list"},
		{"unlisted KeyPackage extension", base, nil, []Extension{{Type: 0xff01}}, "key_package_extensions carries 0xff01, which capabilities.extensions [] must then list"},
		{"GREASE extension", with(func(c *Capabilities) { c.Extensions = []ExtensionType{0x0a0a} }), []Extension{{Type: 0x0a0a}}, nil, "leaf_extensions: 0x0a0a is a GREASE value"},
		{"repeated extension", base, []Extension{{Type: 1}, {Type: 1}}, nil, "leaf_extensions carries application_id twice"},
		{"reserved extension", base, nil, []Extension{{Type: 0}}, "key_package_extensions: extension type 0 is reserved"},
	} {
		err := CheckProfile(2, CredentialBasic, c.caps, c.leaf, c.kpEx)
		if !errors.Is(err, ErrCapabilities) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.msg)
		}
		_, _, gerr := Generate(2, newSigner(t, 2, "p"), nil, GenerateOptions{Now: testNow, Capabilities: c.caps, LeafExtensions: c.leaf, KeyPackageExtensions: c.kpEx})
		if gerr == nil || gerr.Error() != err.Error() {
			t.Errorf("%s: Generate error %v, want %v", c.name, gerr, err)
		}
	}
	// A default extension (application_id) need not be listed.
	if err := CheckProfile(2, CredentialBasic, base, []Extension{{Type: ExtensionApplicationID}}, nil); err != nil {
		t.Error(err)
	}
}

// OpenMLS refuses a KeyPackage whose capabilities do not list its own credential type.
func TestValidateOwnCredentialType(t *testing.T) {
	signer := newSigner(t, 1, "c")
	kp, _, err := Generate(1, signer, []byte("a"), GenerateOptions{Now: testNow, Capabilities: Capabilities{Credentials: []CredentialType{CredentialBasic, CredentialX509}}})
	if err != nil {
		t.Fatal(err)
	}
	kp.LeafNode.Capabilities.Credentials = []CredentialType{CredentialX509}
	resign(t, kp, signer)
	expectInvalid(t, "basic credential, capabilities [x509]", kp, testNow, DefaultPolicy(), ErrCredentialNotInCapabilities)
	if err := Validate(kp, testNow, DefaultPolicy()); err.Error() != "mls: invalid KeyPackage: credential type not listed in capabilities: basic not in [x509]" {
		t.Errorf("message %q", err)
	}
}

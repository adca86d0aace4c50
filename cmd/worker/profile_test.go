package main

import (
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/internal/testcert"
	"github.com/kpool/kpool/mls"
)

func writePEM(t *testing.T, path string, ders ...[]byte) string {
	t.Helper()
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func names(vals ...string) []events.CapabilityValue {
	out := make([]events.CapabilityValue, len(vals))
	for i, v := range vals {
		out[i] = events.CapabilityValue(v)
	}
	return out
}

// The done-when of issue 12: `keypackage generate --credentials basic,x509` makes
// KeyPackages that list both credential types, in every suite; GREASE values
// given on the command line come back out of inspect.
func TestKeypackageGenerateCredentials(t *testing.T) {
	for _, suite := range mls.AllSuites {
		code, out, errs := runCLI(t, "", "keypackage", "generate", "--suite", fmt.Sprint(uint16(suite)), "--credentials", "basic,x509",
			"--extensions", "application_id,0xff00", "--proposals", "0x0a0a", "--leaf-extension", "0xff00=01ff")
		if code != 0 {
			t.Fatalf("suite %d: generate: %d %s", suite, code, errs)
		}
		kp, err := mls.DecodeMLSMessage(mustHex(t, strings.TrimSpace(out)))
		if err != nil {
			t.Fatal(err)
		}
		c := kp.LeafNode.Capabilities
		if !slices.Equal(c.Credentials, []mls.CredentialType{1, 2}) || !slices.Equal(c.Extensions, []mls.ExtensionType{1, 0xff00}) ||
			!slices.Equal(c.Proposals, []mls.ProposalType{0x0a0a}) || len(kp.LeafNode.Extensions) != 1 || hex.EncodeToString(kp.LeafNode.Extensions[0].Data) != "01ff" {
			t.Errorf("suite %d: capabilities %+v, leaf extensions %+v", suite, c, kp.LeafNode.Extensions)
		}
		code, out, _ = runCLI(t, out, "keypackage", "inspect")
		rs := inspectLines(t, out)
		if code != 0 || len(rs) != 1 || !rs[0].OK || !slices.Equal(rs[0].Capabilities.Credentials, names("basic", "x509")) ||
			!slices.Equal(rs[0].Capabilities.Proposals, names("0x0a0a")) || !slices.Equal(rs[0].Capabilities.Extensions, names("application_id", "0xff00")) {
			t.Errorf("suite %d: inspect %d %+v", suite, code, rs)
		}
	}
}

func TestKeypackageGenerateProfileRefusals(t *testing.T) {
	dir := t.TempDir()
	chain := testcert.New(t, mustKey(t, 1, nil), testcert.Options{})
	chainFile := writePEM(t, filepath.Join(dir, "chain.pem"), chain.DER...)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--credentials", "basic,x.509"}, `capabilities.credentials[1]: "x.509" is neither a number from 1 to 65535 nor one of basic, x509`},
		{[]string{"--credentials", "x509"}, "capabilities refused: credentials [x509] must list the KeyPackage's own credential type basic"},
		{[]string{"--cipher-suites", "2"}, "must list the KeyPackage's own suite 1"},
		{[]string{"--leaf-extension", "0xff00=01"}, "leaf_extensions carries 0xff00, which capabilities.extensions [] must then list"},
		{[]string{"--leaf-extension", "application_id:01"}, `--leaf-extension "application_id:01": want TYPE=HEX`},
		{[]string{"--key-package-extension", "last_resort=", "--extensions", "last_resort"}, "last_resort is set by the policy's last_resort switch"},
		{[]string{"--x509-chain", chainFile}, "--x509-chain " + chainFile + ": x509 certificate chain refused: the leaf certificate's public key (Ed25519) is not the signature key"},
		{[]string{"--x509-chain", filepath.Join(dir, "chain.pem"), "--signature-key", chainFile}, "--signature-key " + chainFile + ": invalid private key for the suite"},
	} {
		code, out, errs := runCLI(t, "", append([]string{"keypackage", "generate"}, c.args...)...)
		if code != 2 || out != "" || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and %q", c.args, code, out, errs, c.want)
		}
	}
}

func mustKey(t *testing.T, suite mls.CipherSuite, pub []byte) any {
	t.Helper()
	if pub == nil {
		_, p, err := mls.NewSignatureKey(suite, nil)
		if err != nil {
			t.Fatal(err)
		}
		pub = p
	}
	k, err := mls.SignaturePublicKey(suite, pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pool register with the capability flags, a Wire-style pool without last resort, then
// an x509 credential for the key the worker made; keypackage generate with that key and
// chain, and inspect with and without the right trust anchor.
func TestPoolRegisterProfileFlags(t *testing.T) {
	dir := t.TempDir()
	url, stop := startRun(t, dir)
	defer stop()

	keyFile := filepath.Join(dir, "wire.sig")
	code, out, errs := runCLI(t, "", "pool", "register", "wire", "--nats-url", url, "--identity", "w", "--suite", "2", "--key-out", keyFile,
		"--credentials", "basic,x509", "--extensions", "0xff00", "--proposals", "0x0a0a", "--leaf-extension", "0xff00=01", "--last-resort=false")
	var info natsbus.PoolInfo
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("pool register: %d %s %s", code, out, errs)
	}
	c := info.Policy.Capabilities
	if info.Policy.LastResort == nil || *info.Policy.LastResort || c == nil || !slices.Equal(c.Credentials, names("basic", "x509")) ||
		!slices.Equal(c.Proposals, names("0x0a0a")) || len(c.LeafExtensions) != 1 || string(c.LeafExtensions[0].Data) != "\x01" {
		t.Fatalf("policy in force: %s", out)
	}

	code, _, errs = runCLI(t, "", "pool", "register", "bad", "--nats-url", url, "--identity", "b", "--credentials", "x509")
	if code != 1 || !strings.Contains(errs, "invalid_config") || !strings.Contains(errs, "credentials [x509] must list the KeyPackage's own credential type basic") {
		t.Errorf("bad credentials: exit %d, %s", code, errs)
	}

	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := mls.SignerFromPrivate(2, key)
	if err != nil {
		t.Fatal(err)
	}
	chain := testcert.New(t, mustKey(t, 2, signer.Public()), testcert.Options{})
	chainFile := writePEM(t, filepath.Join(dir, "chain.pem"), chain.DER...)
	rootFile := writePEM(t, filepath.Join(dir, "root.pem"), chain.Root.Raw)
	code, out, errs = runCLI(t, "", "pool", "register", "wire", "--nats-url", url, "--identity", "w", "--suite", "2",
		"--x509-chain", chainFile, "--x509-trust-anchors", rootFile)
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || !slices.Equal(info.Changed, []string{"x509_chain", "x509_trust_anchors"}) || len(info.Policy.X509Chain) != 2 {
		t.Fatalf("pool register --x509-chain: %d %s %s", code, out, errs)
	}
	other := testcert.New(t, mustKey(t, 2, signer.Public()), testcert.Options{})
	code, _, errs = runCLI(t, "", "pool", "register", "wire", "--nats-url", url, "--identity", "w", "--suite", "2",
		"--x509-chain", chainFile, "--x509-trust-anchors", writePEM(t, filepath.Join(dir, "other.pem"), other.Root.Raw))
	if code != 1 || !strings.Contains(errs, "x509_chain: the chain does not end at or under a trust anchor") {
		t.Errorf("foreign anchor: exit %d, %s", code, errs)
	}

	code, out, errs = runCLI(t, "", "keypackage", "generate", "--suite", "2", "--signature-key", keyFile, "--x509-chain", chainFile, "--credentials", "basic,x509")
	if code != 0 {
		t.Fatalf("generate with the pool's key and chain: %d %s", code, errs)
	}
	code, res, _ := runCLI(t, out, "keypackage", "inspect", "--trust-anchors", rootFile)
	rs := inspectLines(t, res)
	if code != 0 || !rs[0].OK || rs[0].CredentialType != 2 || rs[0].Certificates != 2 || rs[0].X509Subject != "CN=kpool test leaf" {
		t.Errorf("inspect with its root: %d %+v", code, rs)
	}
	code, res, _ = runCLI(t, out, "keypackage", "inspect", "--trust-anchors", filepath.Join(dir, "other.pem"))
	rs = inspectLines(t, res)
	if code != 1 || rs[0].OK || !strings.Contains(rs[0].Error, "x509 credential refused: the chain does not end at or under a trust anchor") {
		t.Errorf("inspect with another root: %d %+v", code, rs)
	}
	code, _, errs = runCLI(t, out, "keypackage", "inspect", "--trust-anchors", keyFile)
	if code != 2 || !strings.Contains(errs, "--trust-anchors "+keyFile+": x509 certificate chain refused: not a PEM or DER certificate") {
		t.Errorf("inspect with a key as anchors: %d %s", code, errs)
	}
}

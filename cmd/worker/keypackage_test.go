package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpool/kpool/mls"
)

func inspectLines(t *testing.T, out string) []inspectResult {
	t.Helper()
	var rs []inspectResult
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r inspectResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", l, err)
		}
		rs = append(rs, r)
	}
	return rs
}

func TestKeypackageGenerateInspect(t *testing.T) {
	for _, suite := range []string{"1", "5", "6"} {
		code, out, errs := runCLI(t, "", "keypackage", "generate", "--suite", suite, "--count", "3",
			"--identity", "carol", "--last-resort", "--not-before", "1000", "--not-after", "2000")
		if code != 0 || errs != "" {
			t.Fatalf("generate: %d %s", code, errs)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 {
			t.Fatalf("%d lines, want 3", len(lines))
		}
		for _, l := range lines {
			b, err := hex.DecodeString(l)
			if err != nil {
				t.Fatal(err)
			}
			kp, err := mls.DecodeMLSMessage(b)
			if err != nil || string(kp.LeafNode.Credential.Identity) != "carol" || !kp.IsLastResort() ||
				kp.LeafNode.Lifetime != (mls.Lifetime{NotBefore: 1000, NotAfter: 2000}) || fmt.Sprint(uint16(kp.CipherSuite)) != suite {
				t.Fatalf("generated KeyPackage: %v", err)
			}
		}

		// A bare KeyPackage and a tampered line among the good ones.
		kp, _ := mls.DecodeMLSMessage(mustHex(t, lines[0]))
		bare := hex.EncodeToString(kp.Marshal())
		bad := []byte(lines[2])
		if bad[len(bad)-5] == '0' { // change one hex digit of the KeyPackage signature
			bad[len(bad)-5] = '1'
		} else {
			bad[len(bad)-5] = '0'
		}
		input := lines[0] + "\n\n# comment\n" + bare + "\n" + string(bad) + "\n"
		code, out, _ = runCLI(t, input, "keypackage", "inspect", "-", "--at", "1500")
		rs := inspectLines(t, out)
		if code != 1 || len(rs) != 3 {
			t.Fatalf("inspect: exit %d, %d results", code, len(rs))
		}
		ref, _ := kp.Ref()
		for i, r := range rs[:2] {
			if !r.OK || r.Error != "" || *r.CipherSuite != uint16(kp.CipherSuite) || r.Ref != hex.EncodeToString(ref) ||
				*r.NotBefore != 1000 || *r.NotAfter != 2000 || *r.Identity != "carol" || !*r.LastResort {
				t.Errorf("result %d: %+v", i, r)
			}
		}
		if rs[0].Form != "mls_message" || rs[1].Form != "key_package" || rs[0].Line != 1 || rs[1].Line != 4 {
			t.Errorf("forms/lines: %+v %+v", rs[0], rs[1])
		}
		if rs[2].OK || !strings.Contains(rs[2].Error, "KeyPackage signature does not verify") {
			t.Errorf("tampered line: %+v", rs[2])
		}

		// Outside the lifetime every line fails.
		code, out, _ = runCLI(t, lines[0]+"\n", "keypackage", "inspect", "--at", "2001")
		if rs := inspectLines(t, out); code != 1 || rs[0].OK || !strings.Contains(rs[0].Error, "lifetime") {
			t.Errorf("expired: exit %d, %s", code, out)
		}
	}
}

func TestKeypackageInspectVectorsFile(t *testing.T) {
	var vs []struct {
		KP string `json:"mls_key_package"`
	}
	data, err := os.ReadFile("../../mls/testdata/messages-keypackages.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, v := range vs[:20] {
		lines = append(lines, v.KP)
	}
	file := filepath.Join(t.TempDir(), "kps.hex")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(t, "", "keypackage", "inspect", file, "--at", "1680000000")
	rs := inspectLines(t, out)
	if code != 0 || len(rs) != 20 || errs != "" {
		t.Fatalf("exit %d, %d results, %s", code, len(rs), errs)
	}
	for _, r := range rs {
		if !r.OK || r.Identity == nil || *r.Identity == "" {
			t.Errorf("%+v", r)
		}
	}
}

func TestKeypackageCLIErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"keypackage", "generate", "--suite", "8"}, 2, "not a supported cipher suite (1..7, 77..88)"},
		{[]string{"keypackage", "generate", "--count", "0"}, 2, "must be at least 1"},
		{[]string{"keypackage", "generate", "--not-before", "10", "--not-after", "5"}, 2, "is before"},
		{[]string{"keypackage", "inspect", "a", "b"}, 2, "at most one input file"},
		{[]string{"keypackage", "inspect", "/nonexistent/kps"}, 1, "no such file"},
	} {
		code, out, errs := runCLI(t, "", c.args...)
		if code != c.code || out != "" || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, code, out, errs)
		}
	}
	code, out, _ := runCLI(t, "00010005\n", "keypackage", "inspect")
	if rs := inspectLines(t, out); code != 1 || rs[0].OK || !strings.Contains(rs[0].Error, "truncated") {
		t.Errorf("truncated: %d %s", code, out)
	}
}

func TestKeypackageGeneratePrivateOut(t *testing.T) {
	file := filepath.Join(t.TempDir(), "priv.jsonl")
	code, out, _ := runCLI(t, "", "keypackage", "generate", "--suite", "4", "--count", "2", "--private-out", file)
	if code != 0 {
		t.Fatal(code)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	privLines := strings.Split(strings.TrimSpace(string(data)), "\n")
	kpLines := strings.Split(strings.TrimSpace(out), "\n")
	if len(privLines) != 3 || len(kpLines) != 2 {
		t.Fatalf("%d private lines, %d KeyPackages", len(privLines), len(kpLines))
	}
	var sig struct {
		Suite mls.CipherSuite `json:"cipher_suite"`
		Priv  string          `json:"signature_priv"`
		Pub   string          `json:"signature_key"`
	}
	if err := json.Unmarshal([]byte(privLines[0]), &sig); err != nil || sig.Suite != 4 {
		t.Fatalf("signature key line %q: %v", privLines[0], err)
	}
	signer, err := mls.SignerFromPrivate(sig.Suite, mustHex(t, sig.Priv))
	if err != nil || hex.EncodeToString(signer.Public()) != sig.Pub {
		t.Fatalf("signature_priv does not give signature_key: %v", err)
	}
	for i, l := range kpLines {
		kp, err := mls.DecodeMLSMessage(mustHex(t, l))
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(kp.LeafNode.SignatureKey) != sig.Pub {
			t.Errorf("line %d: KeyPackage not signed with the written signature key", i)
		}
		var p struct {
			Ref            string `json:"ref"`
			InitPriv       string `json:"init_priv"`
			EncryptionPriv string `json:"encryption_priv"`
		}
		if err := json.Unmarshal([]byte(privLines[i+1]), &p); err != nil {
			t.Fatal(err)
		}
		ref, _ := kp.Ref()
		b := mls.PrivateBundle{InitPriv: mustHex(t, p.InitPriv), EncryptionPriv: mustHex(t, p.EncryptionPriv)}
		if p.Ref != hex.EncodeToString(ref) || b.Check(kp) != nil {
			t.Errorf("line %d: private keys do not match the KeyPackage", i)
		}
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeypackageInspectBase64: the base64 that upload messages carry is read with
// --format base64; a line in the other encoding is reported, not guessed.
func TestKeypackageInspectBase64(t *testing.T) {
	code, out, errs := runCLI(t, "", "keypackage", "generate", "--identity", "dave")
	if code != 0 {
		t.Fatalf("generate: exit %d %s", code, errs)
	}
	hexLine := strings.TrimSpace(out)
	b64 := base64.StdEncoding.EncodeToString(mustHex(t, hexLine))
	code, out, errs = runCLI(t, b64+"\n", "keypackage", "inspect", "--format", "base64")
	rs := inspectLines(t, out)
	if code != 0 || len(rs) != 1 || !rs[0].OK || *rs[0].Identity != "dave" || rs[0].Form != "mls_message" {
		t.Fatalf("base64: exit %d %s %s", code, out, errs)
	}
	code, out, _ = runCLI(t, b64+"\n", "keypackage", "inspect")
	if rs := inspectLines(t, out); code != exitFailure || rs[0].OK || !strings.Contains(rs[0].Error, "cannot decode the line") {
		t.Fatalf("base64 read as hex: exit %d %s", code, out)
	}
	code, out, _ = runCLI(t, hexLine+"\n", "keypackage", "inspect", "--format", "base64")
	if rs := inspectLines(t, out); code != exitFailure || rs[0].OK {
		t.Fatalf("hex read as base64: exit %d %s", code, out)
	}
}

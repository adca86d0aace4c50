package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpool/kpool/mls"
)

// `keypackage generate` and `inspect` take the post-quantum suites 77–88: what generate
// writes inspects as valid with its suite and ref, and the private keys it writes with
// --private-out belong to the KeyPackage.
func TestKeypackagePQSuites(t *testing.T) {
	for _, s := range mls.PQSuites {
		suite := fmt.Sprint(uint16(s))
		priv := filepath.Join(t.TempDir(), "priv.jsonl")
		code, out, errs := runCLI(t, "", "keypackage", "generate", "--suite", suite, "--identity", "pq", "--private-out", priv)
		if code != 0 || errs != "" {
			t.Fatalf("suite %s: generate: %d %s", suite, code, errs)
		}
		kp, err := mls.DecodeMLSMessage(mustHex(t, strings.TrimSpace(out)))
		if err != nil || kp.CipherSuite != s {
			t.Fatalf("suite %s: generated %v, %v", suite, kp.CipherSuite, err)
		}
		code, out, _ = runCLI(t, out, "keypackage", "inspect")
		rs := inspectLines(t, out)
		ref, _ := kp.Ref()
		if code != 0 || len(rs) != 1 || !rs[0].OK || rs[0].CipherSuite == nil || *rs[0].CipherSuite != uint16(s) || rs[0].Ref != hex.EncodeToString(ref) {
			t.Fatalf("suite %s: inspect: %d %s", suite, code, out)
		}
		data, err := os.ReadFile(priv)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		var keys struct {
			InitPriv string `json:"init_priv"`
		}
		if len(lines) != 2 || json.Unmarshal([]byte(lines[1]), &keys) != nil {
			t.Fatalf("suite %s: private-out %q", suite, data)
		}
		pub, err := mls.PublicFromPrivate(s, mustHex(t, keys.InitPriv))
		if err != nil || !bytes.Equal(pub, kp.InitKey) {
			t.Fatalf("suite %s: init_priv does not give the init key (%v)", suite, err)
		}
	}
}

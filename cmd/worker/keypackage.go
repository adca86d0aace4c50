package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kpool/kpool/mls"
)

func init() {
	register(command{name: "keypackage generate", summary: "print fresh MLS KeyPackages (hex MLSMessage, one per line)", run: keypackageGenerate})
	register(command{name: "keypackage inspect", summary: "decode and validate hex KeyPackages, one JSON verdict per line", run: keypackageInspect})
}

// keypackageStdin is where `inspect -` reads; tests replace it.
var keypackageStdin io.Reader = os.Stdin

func keypackageGenerate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker keypackage generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	suite := fs.Uint("suite", 1, "cipher suite, 1..7 (RFC 9420 §17.1)")
	count := fs.Int("count", 1, "how many KeyPackages")
	identity := fs.String("identity", "kpool-cli", "basic credential identity")
	lastResort := fs.Bool("last-resort", false, "add the last_resort extension (0x000A)")
	notBefore := fs.Uint64("not-before", 0, "lifetime start, Unix seconds (default now − 1 h)")
	notAfter := fs.Uint64("not-after", 0, "lifetime end, Unix seconds (default now + 84 d)")
	privOut := fs.String("private-out", "", "also write each KeyPackage's ref and private keys as JSON lines to this file (mode 0600)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: worker keypackage generate [--suite N] [--count K] [--identity S] [--last-resort] [--not-before UNIX --not-after UNIX] [--private-out FILE]")
		fmt.Fprintln(stderr, "All KeyPackages of one run share a fresh signature key; without --private-out their private keys are discarded.")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	cs := mls.CipherSuite(*suite)
	switch {
	case len(pos) > 0:
		return kpUsage(stderr, fs, fmt.Sprintf("unexpected argument %q", pos[0]))
	case *suite > 0xffff || !cs.Valid():
		return kpUsage(stderr, fs, fmt.Sprintf("--suite %d is not an RFC 9420 cipher suite (1..7)", *suite))
	case *count < 1:
		return kpUsage(stderr, fs, fmt.Sprintf("--count %d must be at least 1", *count))
	case *notBefore != 0 && *notAfter != 0 && *notAfter < *notBefore:
		return kpUsage(stderr, fs, fmt.Sprintf("--not-after %d is before --not-before %d", *notAfter, *notBefore))
	}

	priv, _, err := mls.NewSignatureKey(cs, nil)
	if err != nil {
		return kpFail(stderr, "keypackage generate", err)
	}
	signer, err := mls.SignerFromPrivate(cs, priv)
	if err != nil {
		return kpFail(stderr, "keypackage generate", err)
	}
	var privW *json.Encoder
	if *privOut != "" {
		f, err := os.OpenFile(*privOut, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return kpFail(stderr, "keypackage generate", err)
		}
		defer f.Close()
		privW = json.NewEncoder(f)
		if err := privW.Encode(map[string]any{"cipher_suite": cs, "signature_priv": hex.EncodeToString(priv), "signature_key": hex.EncodeToString(signer.Public())}); err != nil {
			return kpFail(stderr, "keypackage generate", err)
		}
	}
	opts := mls.GenerateOptions{NotBefore: *notBefore, NotAfter: *notAfter, LastResort: *lastResort, Now: time.Now()}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	for range *count {
		kp, bundle, err := mls.Generate(cs, signer, []byte(*identity), opts)
		if err != nil {
			return kpFail(stderr, "keypackage generate", err)
		}
		fmt.Fprintln(out, hex.EncodeToString(mls.MarshalMLSMessage(kp)))
		if privW != nil {
			ref, _ := kp.Ref()
			if err := privW.Encode(map[string]string{"ref": hex.EncodeToString(ref),
				"init_priv": hex.EncodeToString(bundle.InitPriv), "encryption_priv": hex.EncodeToString(bundle.EncryptionPriv)}); err != nil {
				return kpFail(stderr, "keypackage generate", err)
			}
		}
	}
	if err := out.Flush(); err != nil {
		return kpFail(stderr, "keypackage generate", err)
	}
	return 0
}

// inspectResult is one line of `keypackage inspect` output.
type inspectResult struct {
	Line           int     `json:"line"`
	OK             bool    `json:"ok"`
	Error          string  `json:"error,omitempty"`
	Form           string  `json:"form,omitempty"` // "mls_message" or "key_package"
	CipherSuite    *uint16 `json:"cipher_suite,omitempty"`
	Ref            string  `json:"ref,omitempty"`
	NotBefore      *uint64 `json:"not_before,omitempty"`
	NotAfter       *uint64 `json:"not_after,omitempty"`
	CredentialType uint16  `json:"credential_type,omitempty"`
	Identity       *string `json:"identity,omitempty"`
	IdentityHex    string  `json:"identity_hex,omitempty"` // when the identity is not UTF-8
	LastResort     *bool   `json:"last_resort,omitempty"`
}

func keypackageInspect(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker keypackage inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	at := fs.Int64("at", 0, "validate at this Unix time (default now)")
	maxLifetime := fs.Duration("max-lifetime", mls.DefaultMaxLifetime, "longest accepted lifetime (0: no bound)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: worker keypackage inspect [FILE|-] [--at UNIX] [--max-lifetime D]")
		fmt.Fprintln(stderr, "Reads hex lines (MLSMessage or bare KeyPackage; blank lines and # comments skipped) and prints one JSON object per line. Exit status 1 if any line failed.")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) > 1 {
		return kpUsage(stderr, fs, fmt.Sprintf("give at most one input file (got %d)", len(pos)))
	}
	in := keypackageStdin
	if len(pos) == 1 && pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return kpFail(stderr, "keypackage inspect", err)
		}
		defer f.Close()
		in = f
	}
	when := time.Now()
	if *at != 0 {
		when = time.Unix(*at, 0)
	}
	policy := mls.DefaultPolicy()
	policy.MaxLifetime = *maxLifetime

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	enc := json.NewEncoder(stdout)
	failed := false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := inspectLine(n, line, when, policy)
		failed = failed || !r.OK
		if err := enc.Encode(r); err != nil {
			return kpFail(stderr, "keypackage inspect", err)
		}
	}
	if err := sc.Err(); err != nil {
		return kpFail(stderr, "keypackage inspect", err)
	}
	if failed {
		return 1
	}
	return 0
}

func inspectLine(n int, line string, at time.Time, p mls.Policy) inspectResult {
	r := inspectResult{Line: n}
	b, err := hex.DecodeString(line)
	if err != nil {
		r.Error = "not hex: " + err.Error()
		return r
	}
	kp, err := mls.DecodeAny(b)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Form = "key_package"
	if len(b) >= 4 && b[2] == 0 && b[3] == 5 && len(mls.MarshalMLSMessage(kp)) == len(b) {
		r.Form = "mls_message"
	}
	suite, nb, na, lr := uint16(kp.CipherSuite), kp.LeafNode.Lifetime.NotBefore, kp.LeafNode.Lifetime.NotAfter, kp.IsLastResort()
	r.CipherSuite, r.NotBefore, r.NotAfter, r.LastResort = &suite, &nb, &na, &lr
	r.CredentialType = uint16(kp.LeafNode.Credential.Type)
	if kp.LeafNode.Credential.Type == mls.CredentialBasic {
		if id := kp.LeafNode.Credential.Identity; utf8.Valid(id) {
			s := string(id)
			r.Identity = &s
		} else {
			r.IdentityHex = hex.EncodeToString(id)
		}
	}
	if ref, err := kp.Ref(); err == nil {
		r.Ref = hex.EncodeToString(ref)
	}
	if err := mls.Validate(kp, at, p); err != nil {
		r.Error = err.Error()
		return r
	}
	r.OK = true
	return r
}

func kpUsage(stderr io.Writer, fs *flag.FlagSet, msg string) int {
	fmt.Fprintf(stderr, "%s: %s\n", fs.Name(), msg)
	fs.Usage()
	return 2
}

func kpFail(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "worker %s: %v\n", name, err)
	return 1
}

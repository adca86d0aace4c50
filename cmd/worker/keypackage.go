package main

import (
	"bufio"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func keypackageCmd() *cobra.Command {
	return group("keypackage", "make and check MLS KeyPackages offline",
		keypackageGenerateCmd(), keypackageInspectCmd())
}

func keypackageGenerateCmd() *cobra.Command {
	var o generateOptions
	cmd := &cobra.Command{
		Use:   "generate [--suite N] [--count K] [--identity S] [--last-resort] [--not-before UNIX --not-after UNIX] [--private-out FILE] [--credentials basic,x509 ...] [--signature-key FILE --x509-chain FILE]",
		Short: "print fresh MLS KeyPackages (hex MLSMessage, one per line)",
		Long: "Print fresh MLS KeyPackages, hex MLSMessage, one per line. All KeyPackages of one run\n" +
			"share a fresh signature key (or the one --signature-key gives); without --private-out\n" +
			"their private keys are discarded. The capability flags replace the default lists\n" +
			"(docs/mls.md): --credentials basic,x509 makes KeyPackages an OpenMLS group that requires\n" +
			"x509-capable members accepts.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Flags(), cmd.OutOrStdout()) },
	}
	fs := cmd.Flags()
	fs.UintVar(&o.suite, "suite", 1, "cipher suite: 1..7 (RFC 9420 §17.1) or 77..88 (post-quantum, docs/mls.md)")
	fs.IntVar(&o.count, "count", 1, "how many KeyPackages")
	fs.StringVar(&o.identity, "identity", "kpool-cli", "basic credential identity")
	fs.BoolVar(&o.lastResort, "last-resort", false, "add the last_resort extension (0x000A)")
	fs.Uint64Var(&o.notBefore, "not-before", 0, "lifetime start, Unix seconds (default now − 1 h)")
	fs.Uint64Var(&o.notAfter, "not-after", 0, "lifetime end, Unix seconds (default now + 84 d)")
	fs.StringVar(&o.privOut, "private-out", "", "also write each KeyPackage's ref and private keys as JSON lines to this file (mode 0600)")
	fs.StringVar(&o.signatureKey, "signature-key", "", "sign with this private key (hex, or a --private-out file) instead of a fresh one; needed with --x509-chain")
	o.profile.register(fs)
	return cmd
}

type generateOptions struct {
	suite               uint
	count               int
	identity, privOut   string
	lastResort          bool
	notBefore, notAfter uint64
	signatureKey        string
	profile             profileFlags
}

func (o *generateOptions) run(fs *pflag.FlagSet, stdout io.Writer) error {
	cs := mls.CipherSuite(o.suite)
	switch {
	case o.suite > 0xffff || !cs.Valid():
		return usagef("--suite %d is not a supported cipher suite (1..7, 77..88)", o.suite)
	case o.count < 1:
		return usagef("--count %d must be at least 1", o.count)
	case o.notBefore != 0 && o.notAfter != 0 && o.notAfter < o.notBefore:
		return usagef("--not-after %d is before --not-before %d", o.notAfter, o.notBefore)
	}

	var priv []byte
	var err error
	if o.signatureKey != "" {
		priv, err = readSignatureKey(o.signatureKey)
	} else {
		priv, _, err = mls.NewSignatureKey(cs, nil)
	}
	if err != nil {
		return err
	}
	defer clear(priv)
	signer, err := mls.SignerFromPrivate(cs, priv)
	if err != nil {
		return usagef("--signature-key %s: %s", o.signatureKey, strings.TrimPrefix(err.Error(), "mls: "))
	}
	opts, err := o.profile.generateProfile(fs, cs, signer.Public())
	if err != nil {
		return err
	}
	var privW *json.Encoder
	if o.privOut != "" {
		f, err := os.OpenFile(o.privOut, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		privW = json.NewEncoder(f)
		if err := privW.Encode(map[string]any{"cipher_suite": cs, "signature_priv": hex.EncodeToString(priv), "signature_key": hex.EncodeToString(signer.Public())}); err != nil {
			return err
		}
	}
	opts.NotBefore, opts.NotAfter, opts.LastResort, opts.Now = o.notBefore, o.notAfter, o.lastResort, time.Now()
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	for range o.count {
		kp, bundle, err := mls.Generate(cs, signer, []byte(o.identity), opts)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, hex.EncodeToString(mls.MarshalMLSMessage(kp)))
		if privW != nil {
			ref, _ := kp.Ref()
			if err := privW.Encode(map[string]string{"ref": hex.EncodeToString(ref),
				"init_priv": hex.EncodeToString(bundle.InitPriv), "encryption_priv": hex.EncodeToString(bundle.EncryptionPriv)}); err != nil {
				return err
			}
		}
	}
	return out.Flush()
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
	// The leaf's capabilities, by registered name (numbers in hex otherwise).
	Capabilities *events.Capabilities `json:"capabilities,omitempty"`
	// An x509 credential: how many certificates, and the leaf certificate's subject.
	Certificates int    `json:"certificates,omitempty"`
	X509Subject  string `json:"x509_subject,omitempty"`
}

func keypackageInspectCmd() *cobra.Command {
	var at int64
	var maxLifetime time.Duration
	var format, anchorsFile string
	cmd := &cobra.Command{
		Use:   "inspect [FILE|-] [--format hex|base64] [--at UNIX] [--max-lifetime D] [--trust-anchors FILE]",
		Short: "decode and validate KeyPackages (hex or base64 lines), one JSON verdict per line",
		Long: "Read KeyPackages one per line (MLSMessage or bare KeyPackage, hex by default, or the\n" +
			"base64 that upload messages carry with --format base64; blank lines and # comments are\n" +
			"skipped) from FILE or stdin and print one JSON verdict per line. Exit status 1 if any\n" +
			"line failed. An x509 credential is checked to be well formed and to certify the\n" +
			"signature key; whether its chain is trusted is the application's business, unless\n" +
			"--trust-anchors names the certificates it must end at or under.",
		Args: atMostOne("input file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			decode, ok := lineFormats[format]
			if !ok {
				return usagef("--format %q: hex or base64", format)
			}
			in := cmd.InOrStdin()
			if len(args) == 1 && args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			policy := mls.DefaultPolicy()
			policy.MaxLifetime = maxLifetime
			if anchorsFile != "" {
				data, err := os.ReadFile(anchorsFile)
				if err != nil {
					return err
				}
				if policy.TrustAnchors, err = mls.ParseCertificates(data); err != nil {
					return usagef("--trust-anchors %s: %s", anchorsFile, strings.TrimPrefix(err.Error(), "mls: "))
				}
			}
			return inspectStream(in, cmd.OutOrStdout(), decode, at, policy)
		},
	}
	fs := cmd.Flags()
	fs.Int64Var(&at, "at", 0, "validate at this Unix time (default now)")
	fs.DurationVar(&maxLifetime, "max-lifetime", mls.DefaultMaxLifetime, "longest accepted lifetime (0: no bound)")
	fs.StringVar(&anchorsFile, "trust-anchors", "", "PEM (or one DER) certificates an x509 credential's chain must end at or under")
	fs.StringVar(&format, "format", "hex", "encoding of each line: hex or base64 (standard, padded, as in upload messages)")
	return cmd
}

// lineFormats decode one input line of `keypackage inspect`.
var lineFormats = map[string]func(string) ([]byte, error){
	"hex":    hex.DecodeString,
	"base64": base64.StdEncoding.DecodeString,
}

func inspectStream(in io.Reader, stdout io.Writer, decode func(string) ([]byte, error), at int64, policy mls.Policy) error {
	when := time.Now()
	if at != 0 {
		when = time.Unix(at, 0)
	}

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	enc := json.NewEncoder(stdout)
	failed := false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := inspectLine(n, line, decode, when, policy)
		failed = failed || !r.OK
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if failed {
		return reported{exitFailure} // each failed line says why on stdout
	}
	return nil
}

func inspectLine(n int, line string, decode func(string) ([]byte, error), at time.Time, p mls.Policy) inspectResult {
	r := inspectResult{Line: n}
	b, err := decode(line)
	if err != nil {
		r.Error = "cannot decode the line: " + err.Error()
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
	switch cred := kp.LeafNode.Credential; cred.Type {
	case mls.CredentialBasic:
		if id := cred.Identity; utf8.Valid(id) {
			s := string(id)
			r.Identity = &s
		} else {
			r.IdentityHex = hex.EncodeToString(id)
		}
	case mls.CredentialX509:
		r.Certificates = len(cred.Certificates)
		if len(cred.Certificates) > 0 {
			if leaf, err := x509.ParseCertificate(cred.Certificates[0]); err == nil {
				r.X509Subject = leaf.Subject.String()
			}
		}
	}
	r.Capabilities = capabilityNames(kp.LeafNode.Capabilities)
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

func capabilityNames(c mls.Capabilities) *events.Capabilities {
	var named [5][]events.CapabilityValue
	for i, l := range c.Lists() {
		named[i] = make([]events.CapabilityValue, len(l))
		for j, v := range l {
			named[i][j] = events.CapabilityValue(mls.CapabilityName(mls.CapabilityKinds[i], v))
		}
	}
	return &events.Capabilities{Versions: named[0], CipherSuites: named[1], Extensions: named[2], Proposals: named[3], Credentials: named[4]}
}

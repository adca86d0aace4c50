package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
	"github.com/spf13/pflag"
)

// profileFlags are the capability and credential flags that `pool register` and
// `keypackage generate` share: what the KeyPackages advertise and carry (docs/mls.md).
type profileFlags struct {
	versions, suites, credentials, extensions, proposals []string
	leafExts, kpExts                                     []string // TYPE=HEX
	x509Chain                                            string
}

func (f *profileFlags) register(fs *pflag.FlagSet) {
	list := "comma-separated names or numbers (GREASE values allowed); replaces the default list"
	fs.StringSliceVar(&f.versions, "versions", nil, "capabilities.versions: "+list+" [mls10]")
	fs.StringSliceVar(&f.suites, "cipher-suites", nil, "capabilities.cipher_suites: "+list+" [the KeyPackage's suite]")
	fs.StringSliceVar(&f.credentials, "credentials", nil, "capabilities.credentials, e.g. basic,x509: "+list+" [the credential's type]")
	fs.StringSliceVar(&f.extensions, "extensions", nil, "capabilities.extensions, e.g. application_id,0xff00: "+list+" [none]")
	fs.StringSliceVar(&f.proposals, "proposals", nil, "capabilities.proposals: "+list+" [none]")
	fs.StringArrayVar(&f.leafExts, "leaf-extension", nil, "carry this LeafNode extension, TYPE=HEX (e.g. application_id=03646576); repeatable")
	fs.StringArrayVar(&f.kpExts, "key-package-extension", nil, "carry this KeyPackage extension, TYPE=HEX; repeatable")
	fs.StringVar(&f.x509Chain, "x509-chain", "", "x509 credential: PEM (or one DER) certificate file, leaf first, the leaf certifying the signature key")
}

// capabilities returns what the flags give, on top of base (nil when neither gives any).
func (f *profileFlags) capabilities(fs *pflag.FlagSet, base *events.Capabilities) (*events.Capabilities, error) {
	var c events.Capabilities
	if base != nil {
		c = *base
	}
	given := base != nil
	for _, l := range []struct {
		flag string
		src  []string
		dst  *[]events.CapabilityValue
	}{{"versions", f.versions, &c.Versions}, {"cipher-suites", f.suites, &c.CipherSuites}, {"credentials", f.credentials, &c.Credentials},
		{"extensions", f.extensions, &c.Extensions}, {"proposals", f.proposals, &c.Proposals}} {
		if fs.Changed(l.flag) {
			given = true
			*l.dst = nil
			for _, v := range l.src {
				*l.dst = append(*l.dst, events.CapabilityValue(v))
			}
		}
	}
	for _, x := range []struct {
		flag string
		src  []string
		dst  *[]events.Extension
	}{{"leaf-extension", f.leafExts, &c.LeafExtensions}, {"key-package-extension", f.kpExts, &c.KeyPackageExtensions}} {
		if !fs.Changed(x.flag) {
			continue
		}
		given = true
		*x.dst = nil
		for _, s := range x.src {
			typ, data, ok := strings.Cut(s, "=")
			b, err := hex.DecodeString(data)
			if !ok || typ == "" || err != nil {
				return nil, usagef("--%s %q: want TYPE=HEX, e.g. application_id=03646576", x.flag, s)
			}
			*x.dst = append(*x.dst, events.Extension{Type: events.CapabilityValue(typ), Data: b})
		}
	}
	if !given {
		return nil, nil
	}
	return &c, nil
}

// readCertificates reads a PEM (or single DER) certificate file as DER, in file order.
func readCertificates(flag, path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := mls.ParseCertificates(data)
	if err != nil {
		return nil, usagef("--%s %s: %s", flag, path, strings.TrimPrefix(err.Error(), "mls: "))
	}
	der := make([][]byte, len(certs))
	for i, c := range certs {
		der[i] = c.Raw
	}
	return der, nil
}

// generateProfile turns the flags into mls options for suite and the signer's key, and
// checks them as pool registration does, so a bad combination is a usage error.
func (f *profileFlags) generateProfile(fs *pflag.FlagSet, suite mls.CipherSuite, signatureKey []byte) (mls.GenerateOptions, error) {
	var pol events.Policy
	var err error
	if pol.Capabilities, err = f.capabilities(fs, nil); err != nil {
		return mls.GenerateOptions{}, err
	}
	if f.x509Chain != "" {
		if pol.X509Chain, err = readCertificates("x509-chain", f.x509Chain); err != nil {
			return mls.GenerateOptions{}, err
		}
	}
	o, err := pool.ProfileOptions(pol)
	var ce *pool.ConfigError
	if errors.As(err, &ce) {
		return o, usagef("%s", strings.Join(ce.Problems, "; "))
	}
	cred := mls.CredentialBasic
	if o.Credential != nil {
		cred = o.Credential.Type
		if err := mls.CheckX509Chain(suite, signatureKey, o.Credential.Certificates, nil, time.Time{}); err != nil {
			return o, usagef("--x509-chain %s: %s", f.x509Chain, strings.TrimPrefix(err.Error(), "mls: "))
		}
	}
	if err := mls.CheckProfile(suite, cred, o.Capabilities.WithDefaults(suite, cred), o.LeafExtensions, o.KeyPackageExtensions); err != nil {
		return o, usagef("%s", strings.TrimPrefix(err.Error(), "mls: "))
	}
	return o, nil
}

// readSignatureKey reads a private signature key: the raw bytes `pool register --key-out`
// writes, hex, or the first line --private-out writes (a JSON object with signature_priv).
func readSignatureKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	var first struct {
		Priv string `json:"signature_priv"`
	}
	if json.Unmarshal([]byte(line), &first) == nil && first.Priv != "" {
		line = first.Priv
	}
	if priv, err := hex.DecodeString(strings.TrimSpace(line)); err == nil && len(priv) > 0 {
		return priv, nil
	}
	return data, nil // raw; SignerFromPrivate checks its length for the suite
}

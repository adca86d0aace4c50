package pool

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
)

// KeyPackageOptions turns a pool's policy into what its KeyPackages advertise and carry:
// capabilities, credential and extensions (lifetime, keys and last_resort are the
// generator's). It reads the policy as it is now, so a change applies to KeyPackages
// generated afterwards.
func KeyPackageOptions(p Pool) (mls.GenerateOptions, error) { return ProfileOptions(p.Policy) }

// ProfileOptions reads a policy's capabilities, extensions and credential as mls options
// (names resolved; the lists are not yet checked against a suite: mls.CheckProfile does).
func ProfileOptions(pol events.Policy) (mls.GenerateOptions, error) {
	o, problems := profile(pol)
	if problems != nil {
		return o, &ConfigError{Problems: problems}
	}
	return o, nil
}

// lastResortOn reports whether the pool keeps a last-resort KeyPackage (the default).
func lastResortOn(p *Pool) bool { return p.Policy.LastResort == nil || *p.Policy.LastResort }

// checkProfile refuses a registration (reg, with the policy then in force) whose KeyPackages could not be valid: unknown
// names, a list without the pool's own version, suite or credential type, an extension
// carried but not listed, or an x509 chain that is malformed, does not certify the pool's
// signature key or (with trust anchors) is not vouched for at now.
func checkProfile(pol events.Policy, reg *events.Register, now time.Time) error {
	o, problems := profile(pol)
	if problems != nil {
		return &ConfigError{Problems: problems}
	}
	suite, cred := mls.CipherSuite(reg.CipherSuite), mls.CredentialBasic
	if o.Credential != nil {
		cred = o.Credential.Type
	}
	caps := o.Capabilities.WithDefaults(suite, cred)
	if err := mls.CheckProfile(suite, cred, caps, o.LeafExtensions, o.KeyPackageExtensions); err != nil {
		problems = append(problems, "capabilities: "+strings.TrimPrefix(err.Error(), "mls: "+mls.ErrCapabilities.Error()+": "))
	}
	if len(pol.X509TrustAnchors) > 0 && len(pol.X509Chain) == 0 {
		problems = append(problems, "x509_trust_anchors without x509_chain: anchors vouch for an x509 credential")
	}
	if len(pol.X509Chain) > 0 {
		var anchors []*x509.Certificate
		for i, der := range pol.X509TrustAnchors {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				problems = append(problems, fmt.Sprintf("x509_trust_anchors[%d] does not parse: %v", i, err))
				continue
			}
			anchors = append(anchors, c)
		}
		if len(anchors) == len(pol.X509TrustAnchors) {
			if err := mls.CheckX509Chain(suite, reg.SignatureKey, pol.X509Chain, anchors, now); err != nil {
				problems = append(problems, "x509_chain: "+strings.TrimPrefix(err.Error(), "mls: "+mls.ErrX509.Error()+": "))
			}
		}
	}
	if problems != nil {
		return &ConfigError{Problems: problems}
	}
	return nil
}

// profile parses the policy's capabilities and credential; problems name each bad entry.
func profile(pol events.Policy) (mls.GenerateOptions, []string) {
	var o mls.GenerateOptions
	var problems []string
	if len(pol.X509Chain) > 0 {
		o.Credential = &mls.Credential{Type: mls.CredentialX509, Certificates: pol.X509Chain}
	}
	c := pol.Capabilities
	if c == nil {
		return o, nil
	}
	parse := func(kind mls.CapabilityKind, vals []events.CapabilityValue) []uint16 {
		var out []uint16
		for i, v := range vals {
			n, err := mls.ParseCapabilityValue(kind, string(v))
			if err != nil {
				problems = append(problems, fmt.Sprintf("capabilities.%s[%d]: %s", kind, i, strings.TrimPrefix(err.Error(), "mls: "+string(kind)+": ")))
				continue
			}
			out = append(out, n)
		}
		return out
	}
	o.Capabilities = mls.CapabilitiesFromLists([5][]uint16{
		parse(mls.KindVersions, c.Versions), parse(mls.KindCipherSuites, c.CipherSuites), parse(mls.KindExtensions, c.Extensions),
		parse(mls.KindProposals, c.Proposals), parse(mls.KindCredentials, c.Credentials),
	})
	exts := func(field string, in []events.Extension) []mls.Extension {
		var out []mls.Extension
		for i, e := range in {
			n, err := mls.ParseCapabilityValue(mls.KindExtensions, string(e.Type))
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("capabilities.%s[%d].type: %s", field, i, strings.TrimPrefix(err.Error(), "mls: extensions: ")))
			case mls.ExtensionType(n) == mls.ExtensionLastResort:
				problems = append(problems, fmt.Sprintf("capabilities.%s[%d]: last_resort is set by the policy's last_resort switch, not as an extension", field, i))
			default:
				out = append(out, mls.Extension{Type: mls.ExtensionType(n), Data: e.Data})
			}
		}
		return out
	}
	o.LeafExtensions = exts("leaf_extensions", c.LeafExtensions)
	o.KeyPackageExtensions = exts("key_package_extensions", c.KeyPackageExtensions)
	return o, problems
}

// InForce is the policy a pool runs with: every Config field, whether it keeps a last
// resort, and its capabilities and credential as registered (nil capabilities: the
// defaults).
func InForce(p Pool) events.Policy {
	pol := p.Config.Policy()
	pol.LastResort = new(lastResortOn(&p))
	pol.Capabilities = p.Policy.Capabilities
	pol.X509Chain, pol.X509TrustAnchors = p.Policy.X509Chain, p.Policy.X509TrustAnchors
	if isClient(&p) {
		pol.DeleteAlertAfter = new(events.Duration(deleteAlertAfter(p.Config)))
	}
	return pol
}

// ProfileChanged names the fields beyond Config (by their JSON names) whose values
// differ between the pools' policies.
func ProfileChanged(a, b Pool) []string {
	var names []string
	same := func(x, y any) bool { jx, _ := json.Marshal(x); jy, _ := json.Marshal(y); return bytes.Equal(jx, jy) }
	if !same(a.Policy.Capabilities, b.Policy.Capabilities) {
		names = append(names, "capabilities")
	}
	if lastResortOn(&a) != lastResortOn(&b) {
		names = append(names, "last_resort")
	}
	if !same(a.Policy.X509Chain, b.Policy.X509Chain) {
		names = append(names, "x509_chain")
	}
	if !same(a.Policy.X509TrustAnchors, b.Policy.X509TrustAnchors) {
		names = append(names, "x509_trust_anchors")
	}
	return names
}

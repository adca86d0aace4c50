package mls

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Registered values (RFC 9420 §17 and draft-ietf-mls-extensions for last_resort) that a
// capability list may name. Anything else is given as a number.
const (
	ExtensionApplicationID        ExtensionType = 0x0001
	ExtensionRatchetTree          ExtensionType = 0x0002
	ExtensionRequiredCapabilities ExtensionType = 0x0003
	ExtensionExternalPub          ExtensionType = 0x0004
	ExtensionExternalSenders      ExtensionType = 0x0005
)

// CapabilityKind names one list of RFC 9420 §7.2 Capabilities.
type CapabilityKind string

const (
	KindVersions     CapabilityKind = "versions"
	KindCipherSuites CapabilityKind = "cipher_suites"
	KindExtensions   CapabilityKind = "extensions"
	KindProposals    CapabilityKind = "proposals"
	KindCredentials  CapabilityKind = "credentials"
)

// CapabilityKinds are the five lists in wire order; Lists and CapabilitiesFromLists use it.
var CapabilityKinds = [5]CapabilityKind{KindVersions, KindCipherSuites, KindExtensions, KindProposals, KindCredentials}

// Lists returns the capability lists as plain numbers, in CapabilityKinds order.
func (c Capabilities) Lists() [5][]uint16 {
	return [5][]uint16{slices.Clone(c.Versions), u16(c.CipherSuites), u16(c.Extensions), u16(c.Proposals), u16(c.Credentials)}
}

// CapabilitiesFromLists is the inverse of Lists.
func CapabilitiesFromLists(l [5][]uint16) Capabilities {
	return Capabilities{Versions: slices.Clone(l[0]), CipherSuites: retype[CipherSuite](l[1]), Extensions: retype[ExtensionType](l[2]),
		Proposals: retype[ProposalType](l[3]), Credentials: retype[CredentialType](l[4])}
}

type namedValue struct {
	name  string
	value uint16
}

// registry lists the names each kind accepts, in registry order.
var registry = map[CapabilityKind][]namedValue{
	KindVersions: {{"mls10", 1}},
	KindCipherSuites: {
		{"MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", 1}, {"MLS_128_DHKEMP256_AES128GCM_SHA256_P256", 2},
		{"MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", 3}, {"MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448", 4},
		{"MLS_256_DHKEMP521_AES256GCM_SHA512_P521", 5}, {"MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448", 6},
		{"MLS_256_DHKEMP384_AES256GCM_SHA384_P384", 7},
	},
	KindExtensions: {
		{"application_id", 1}, {"ratchet_tree", 2}, {"required_capabilities", 3}, {"external_pub", 4},
		{"external_senders", 5}, {"last_resort", uint16(ExtensionLastResort)},
	},
	KindProposals: {
		{"add", 1}, {"update", 2}, {"remove", 3}, {"psk", 4}, {"reinit", 5}, {"external_init", 6},
		{"group_context_extensions", 7},
	},
	KindCredentials: {{"basic", 1}, {"x509", 2}},
}

// ParseCapabilityValue reads one entry of a capability list: a registered name of the kind
// (case-insensitive), a decimal number or a 0x-prefixed hex number. GREASE values and
// unregistered numbers are accepted; 0 is reserved in every registry and refused.
func ParseCapabilityValue(kind CapabilityKind, s string) (uint16, error) {
	names, ok := registry[kind]
	if !ok {
		return 0, fmt.Errorf("mls: unknown capability list %q (want versions, cipher_suites, extensions, proposals or credentials)", kind)
	}
	t := strings.TrimSpace(s)
	for _, n := range names {
		if strings.EqualFold(t, n.name) {
			return n.value, nil
		}
	}
	base, digits := 10, t
	if rest, ok := strings.CutPrefix(strings.ToLower(t), "0x"); ok {
		base, digits = 16, rest
	}
	v, err := strconv.ParseUint(digits, base, 16)
	if err != nil || digits == "" || digits[0] == '+' || digits[0] == '-' {
		return 0, fmt.Errorf("mls: %s: %q is neither a number from 1 to 65535 nor one of %s", kind, s, allowedNames(kind))
	}
	if v == 0 {
		return 0, fmt.Errorf("mls: %s: 0 is reserved", kind)
	}
	return uint16(v), nil
}

// CapabilityName is the registered name of v in kind's registry, or its hex number.
func CapabilityName(kind CapabilityKind, v uint16) string {
	for _, n := range registry[kind] {
		if n.value == v {
			return n.name
		}
	}
	return fmt.Sprintf("0x%04x", v)
}

func allowedNames(kind CapabilityKind) string {
	var names []string
	for _, n := range registry[kind] {
		names = append(names, n.name)
	}
	return strings.Join(names, ", ")
}

// IsGrease reports whether v is an RFC 9420 §13.5 GREASE value (0x0A0A, 0x1A1A, …, 0xEAEA).
func IsGrease(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>12 == (v>>4)&0x0f && v>>12 != 0x0f
}

// DefaultCapabilities are what a KeyPackage of suite with credential type cred lists when
// nothing else is asked: mls10, its own suite, its own credential type, no extensions
// and no proposals beyond the defaults RFC 9420 §7.2 lets it omit.
func DefaultCapabilities(suite CipherSuite, cred CredentialType) Capabilities {
	return Capabilities{
		Versions:     []uint16{ProtocolVersionMLS10},
		CipherSuites: []CipherSuite{suite},
		Extensions:   []ExtensionType{},
		Proposals:    []ProposalType{},
		Credentials:  []CredentialType{cred},
	}
}

// WithDefaults returns c with each empty list replaced by the default one.
func (c Capabilities) WithDefaults(suite CipherSuite, cred CredentialType) Capabilities {
	d := DefaultCapabilities(suite, cred)
	pick := func(l, def []uint16) []uint16 {
		if len(l) == 0 {
			return def
		}
		return slices.Clone(l)
	}
	return Capabilities{
		Versions:     pick(c.Versions, d.Versions),
		CipherSuites: retype[CipherSuite](pick(u16(c.CipherSuites), u16(d.CipherSuites))),
		Extensions:   retype[ExtensionType](pick(u16(c.Extensions), u16(d.Extensions))),
		Proposals:    retype[ProposalType](pick(u16(c.Proposals), u16(d.Proposals))),
		Credentials:  retype[CredentialType](pick(u16(c.Credentials), u16(d.Credentials))),
	}
}

func u16[T ~uint16](l []T) []uint16 { return retype[uint16](l) }

func retype[T, F ~uint16](l []F) []T {
	if l == nil {
		return nil
	}
	out := make([]T, len(l))
	for i, v := range l {
		out[i] = T(v)
	}
	return out
}

// CheckProfile reports the first reason a KeyPackage of suite with credential type cred,
// these capabilities and these extensions could not be valid (RFC 9420 §7.2, §10.1): the
// version, suite and credential type must be listed, every non-default extension carried
// must be listed, no extension type may appear twice or be a GREASE value, and no list may
// repeat a value. The error wraps ErrCapabilities.
func CheckProfile(suite CipherSuite, cred CredentialType, c Capabilities, leafExts, kpExts []Extension) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("mls: %w: %s", ErrCapabilities, fmt.Sprintf(format, a...))
	}
	for i, vals := range c.Lists() {
		for j, v := range vals {
			if slices.Contains(vals[:j], v) {
				return bad("%s lists %s twice", CapabilityKinds[i], CapabilityName(CapabilityKinds[i], v))
			}
		}
	}
	switch {
	case !slices.Contains(c.Versions, ProtocolVersionMLS10):
		return bad("versions %s must list mls10 (1), the KeyPackage's own version", names(KindVersions, c.Versions))
	case !slices.Contains(c.CipherSuites, suite):
		return bad("cipher_suites %s must list the KeyPackage's own suite %d", names(KindCipherSuites, u16(c.CipherSuites)), suite)
	case !slices.Contains(c.Credentials, cred):
		return bad("credentials %s must list the KeyPackage's own credential type %s", names(KindCredentials, u16(c.Credentials)), CapabilityName(KindCredentials, uint16(cred)))
	}
	for _, x := range []struct {
		where string
		exts  []Extension
	}{{"leaf_extensions", leafExts}, {"key_package_extensions", kpExts}} {
		for i, e := range x.exts {
			name := CapabilityName(KindExtensions, uint16(e.Type))
			switch {
			case e.Type == 0:
				return bad("%s: extension type 0 is reserved", x.where)
			case IsGrease(uint16(e.Type)):
				return bad("%s: %s is a GREASE value; GREASE belongs in capabilities, not in extensions", x.where, name)
			case slices.ContainsFunc(x.exts[:i], func(f Extension) bool { return f.Type == e.Type }):
				return bad("%s carries %s twice", x.where, name)
			case !isDefaultExtension(e.Type) && !slices.Contains(c.Extensions, e.Type):
				return bad("%s carries %s, which capabilities.extensions %s must then list", x.where, name, names(KindExtensions, u16(c.Extensions)))
			}
		}
	}
	return nil
}

func names(kind CapabilityKind, l []uint16) string {
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = CapabilityName(kind, v)
	}
	return "[" + strings.Join(s, " ") + "]"
}

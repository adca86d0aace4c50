package events

import (
	"encoding/json"
	"strconv"
)

// Capabilities is what a pool's KeyPackages list in their leaf capabilities (RFC 9420
// §7.2) and the extensions they carry. Each list, when non-empty, replaces its default
// (versions [mls10], cipher_suites [the pool's suite], credentials [the pool's credential
// type], no extensions, no proposals); an empty or absent list keeps the default.
type Capabilities struct {
	Versions     []CapabilityValue `json:"versions,omitempty"`
	CipherSuites []CapabilityValue `json:"cipher_suites,omitempty"`
	Extensions   []CapabilityValue `json:"extensions,omitempty"`
	Proposals    []CapabilityValue `json:"proposals,omitempty"`
	Credentials  []CapabilityValue `json:"credentials,omitempty"`
	// Extensions carried by every KeyPackage of the pool, in its leaf (e.g. application_id)
	// or in the KeyPackage itself. last_resort is the policy's last_resort switch, not this.
	LeafExtensions       []Extension `json:"leaf_extensions,omitempty"`
	KeyPackageExtensions []Extension `json:"key_package_extensions,omitempty"`
}

// CapabilityValue is one entry of a capability list: a registered name ("x509",
// "last_resort") or a number (2, "0x000a"). JSON gives it as a string or a number.
type CapabilityValue string

// UnmarshalJSON reads a string or a non-negative integer.
func (v *CapabilityValue) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*v = CapabilityValue(s)
		return nil
	}
	var n uint64
	if err := json.Unmarshal(b, &n); err != nil {
		return &FieldError{Field: "capabilities", Reason: "an entry must be a name such as \"x509\" or a number such as 2"}
	}
	*v = CapabilityValue(strconv.FormatUint(n, 10))
	return nil
}

// Extension is an MLS extension: its type (a name or a number, as a capability entry)
// and its extension_data, base64 in JSON.
type Extension struct {
	Type CapabilityValue `json:"type"`
	Data []byte          `json:"data,omitempty"`
}

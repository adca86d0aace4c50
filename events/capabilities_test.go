package events

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeCapabilities(t *testing.T) {
	body := `{"id":"r1","type":"pool_registered","time":"2030-01-01T00:00:00Z","pool":"p","register":{"identity":"a","cipher_suite":1,"signature_key":"AQ==",` +
		`"policy":{"last_resort":false,"capabilities":{"credentials":["basic",2,"0x0a0a"],"leaf_extensions":[{"type":"application_id","data":"A2Rldg=="}]},"x509_chain":["MAA="]}}}`
	e, err := Decode([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	p := e.Register.Policy
	c := p.Capabilities
	if p.LastResort == nil || *p.LastResort || c == nil || len(c.Credentials) != 3 || c.Credentials[1] != "2" || c.Credentials[2] != "0x0a0a" ||
		len(c.LeafExtensions) != 1 || c.LeafExtensions[0].Type != "application_id" || string(c.LeafExtensions[0].Data) != "\x03dev" || len(p.X509Chain) != 1 {
		t.Fatalf("policy %+v capabilities %+v", p, c)
	}
	for _, bad := range []struct{ policy, want string }{
		{`{"capabilities":{"credentials":[-1]}}`, `an entry must be a name such as "x509" or a number such as 2`},
		{`{"capabilities":{"credentials":[true]}}`, `an entry must be a name such as "x509" or a number such as 2`},
		{`{"capabilities":{"colours":["red"]}}`, `unknown field "register.policy.capabilities.colours"`},
	} {
		in := strings.Replace(body, body[strings.Index(body, `"policy":`)+len(`"policy":`):len(body)-2], bad.policy, 1)
		if _, err := Decode([]byte(in)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want %q", bad.policy, err, bad.want)
		}
	}
}

// A later register changes only what it gives: capabilities as a whole, last_resort,
// the chain and the anchors each on their own.
func TestMergeProfileFields(t *testing.T) {
	old := Policy{Capabilities: &Capabilities{Credentials: []CapabilityValue{"basic", "x509"}}, LastResort: new(false),
		X509Chain: [][]byte{{1}}, X509TrustAnchors: [][]byte{{2}}}
	if got := old.Merge(Policy{Target: new(3)}); got.Capabilities != old.Capabilities || *got.LastResort || len(got.X509Chain) != 1 || len(got.X509TrustAnchors) != 1 {
		t.Errorf("merge of a target changed the profile: %+v", got)
	}
	got := old.Merge(Policy{Capabilities: &Capabilities{Proposals: []CapabilityValue{"0x0a0a"}}, LastResort: new(true), X509Chain: [][]byte{{3}}})
	if len(got.Capabilities.Credentials) != 0 || len(got.Capabilities.Proposals) != 1 || !*got.LastResort || got.X509Chain[0][0] != 3 || got.X509TrustAnchors[0][0] != 2 {
		t.Errorf("merge %+v", got)
	}
	var fe *FieldError
	var v CapabilityValue
	if err := v.UnmarshalJSON([]byte(`1.5`)); !errors.As(err, &fe) || fe.Field != "capabilities" {
		t.Errorf("1.5: %v", err)
	}
}

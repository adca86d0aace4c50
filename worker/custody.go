package worker

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
)

// Client custody at the edge: a client's `submitted` KeyPackage is decoded and validated
// here, before the core sees it, with the pool's registered identity, suite, signature key
// and capabilities, at the core's time. A valid one reaches the core with its validated
// public data in Generated (journaled like that, so a replay needs no MLS code); an
// invalid one is refused with a specific code, dead-lettered, and reported to the client
// on <prefix>.client.<pool>.rejected. Nothing of it is uploaded.

// Codes of refused submissions (besides the core's over_cap, not_asked, conflict, …).
const (
	CodeInternalField       = "internal_field"      // a client set a field only the worker sets
	CodeInvalidKeyPackage   = "invalid_keypackage"  // does not decode, or fails an RFC 9420 check
	CodeWrongSuite          = "wrong_suite"         // not the pool's cipher suite
	CodeWrongSignatureKey   = "wrong_signature_key" // not signed with the pool's registered key
	CodeWrongIdentity       = "wrong_identity"      // the credential is not the pool's identity
	CodeBadSignature        = "bad_signature"       // a signature does not verify
	CodeLifetimeTooLong     = "lifetime_too_long"   // longer than the pool's max_lifetime
	CodeExpired             = "expired"             // not_after is not after the core's time
	CodeNotYetValid         = "not_yet_valid"       // not_before beyond the core's time + max skew
	CodeInitKeyIsEncryption = "init_equals_encryption_key"
	CodeMissingCapability   = "missing_capability" // capabilities lack what the pool requires
	CodeBadCredential       = "bad_credential"     // an x509 chain refused
)

// checkSubmission validates a client's KeyPackage against its pool as the view shows it.
// The returned event carries the validated data in Generated. err is an *edgeError
// (refusal) or an internal failure of the view.
func (w *Worker) checkSubmission(v pool.View, ev events.Event) (events.Event, error) {
	refuse := func(code, ref, format string, a ...any) (events.Event, error) {
		return ev, &edgeError{code: code, ref: ref, reason: fmt.Sprintf(format, a...)}
	}
	if ev.Generated != nil {
		return refuse(CodeInternalField, "", "generated is set by the worker after validation; a client submits key_package only")
	}
	p, ok, err := v.Pool(ev.Pool)
	if err != nil {
		return ev, err
	}
	if !ok {
		return refuse(pool.CodeUnknownPool, "", "no pool %q is registered", ev.Pool)
	}
	if p.Custody != events.CustodyClient {
		return refuse(pool.CodeCustody, "", "pool %s holds its own private keys (custody kpool); submitted is for client-custody pools", p.ID)
	}
	meta, err := v.Meta()
	if err != nil {
		return ev, err
	}
	at := meta.Time
	if ev.Time.After(at) {
		at = ev.Time.UTC()
	}
	kp, err := mls.DecodeAny(ev.KeyPackage)
	if err != nil {
		return refuse(CodeInvalidKeyPackage, "", "key_package does not decode as an MLSMessage(KeyPackage) or KeyPackage: %v", err)
	}
	suite := mls.CipherSuite(p.CipherSuite)
	if kp.CipherSuite != suite {
		return refuse(CodeWrongSuite, "", "cipher suite 0x%04x; pool %s uses %d", uint16(kp.CipherSuite), p.ID, p.CipherSuite)
	}
	refBytes, err := kp.Ref()
	if err != nil {
		return refuse(CodeInvalidKeyPackage, "", "KeyPackageRef: %v", err)
	}
	ref := hex.EncodeToString(refBytes)
	l := &kp.LeafNode
	if !bytes.Equal(l.SignatureKey, p.SignatureKey) {
		return refuse(CodeWrongSignatureKey, ref, "the leaf's signature key is not the one pool %s is registered with", p.ID)
	}
	if err := credentialIs(p, l.Credential); err != nil {
		return refuse(CodeWrongIdentity, ref, "%v", err)
	}
	policy := mls.Policy{MaxLifetime: p.Config.MaxLifetime}
	for _, der := range p.Policy.X509TrustAnchors {
		if c, err := x509.ParseCertificate(der); err == nil { // registration checked them
			policy.TrustAnchors = append(policy.TrustAnchors, c)
		}
	}
	checkAt := at
	// A client clock a little ahead of kpool's is tolerated up to the worker's max skew.
	if nb := time.Unix(int64(l.Lifetime.NotBefore), 0); !checkAt.After(nb) && nb.Before(at.Add(w.cfg.MaxSkew)) {
		checkAt = nb.Add(time.Second)
	}
	if err := mls.Validate(kp, checkAt, policy); err != nil {
		code := validationCode(err, kp, at)
		return refuse(code, ref, "%v", err)
	}
	if err := hasCapabilities(p, kp); err != nil {
		return refuse(CodeMissingCapability, ref, "%v", err)
	}
	ev.Generated = &events.Generated{Ref: ref, KeyPackage: mls.MarshalMLSMessage(kp),
		NotBefore: int64(l.Lifetime.NotBefore), NotAfter: int64(l.Lifetime.NotAfter), LastResort: kp.IsLastResort()}
	ev.KeyPackage = nil // the journal keeps the validated MLSMessage once
	if err := events.Validate(ev); err != nil {
		return refuse(CodeInvalidKeyPackage, ref, "%v", err)
	}
	return ev, nil
}

func validationCode(err error, kp *mls.KeyPackage, at time.Time) string {
	switch {
	case errors.Is(err, mls.ErrSignature):
		return CodeBadSignature
	case errors.Is(err, mls.ErrLifetimeTooLong):
		return CodeLifetimeTooLong
	case errors.Is(err, mls.ErrLifetime):
		if uint64(max(at.Unix(), 0)) >= kp.LeafNode.Lifetime.NotAfter {
			return CodeExpired
		}
		return CodeNotYetValid
	case errors.Is(err, mls.ErrInitKeyEqualsEncryptionKey):
		return CodeInitKeyIsEncryption
	case errors.Is(err, mls.ErrSuiteNotInCapabilities), errors.Is(err, mls.ErrCredentialNotInCapabilities):
		return CodeMissingCapability
	case errors.Is(err, mls.ErrX509Credential):
		return CodeBadCredential
	}
	return CodeInvalidKeyPackage
}

// credentialIs checks the leaf's credential names the pool: its identity in a basic
// credential, or (a pool registered with an x509 chain) that chain's leaf certificate.
func credentialIs(p pool.Pool, c mls.Credential) error {
	if len(p.Policy.X509Chain) > 0 {
		if c.Type != mls.CredentialX509 || len(c.Certificates) == 0 || !bytes.Equal(c.Certificates[0], p.Policy.X509Chain[0]) {
			return fmt.Errorf("the credential is not the x509 certificate pool %s is registered with", p.ID)
		}
		return nil
	}
	if c.Type != mls.CredentialBasic {
		return fmt.Errorf("credential type %d; pool %s has a basic credential", c.Type, p.ID)
	}
	if string(c.Identity) != p.Identity {
		return fmt.Errorf("the basic credential names identity %s, not the pool's %s", strconv.QuoteToASCII(truncate(string(c.Identity), 80)), strconv.QuoteToASCII(p.Identity))
	}
	return nil
}

// hasCapabilities checks that the KeyPackage advertises every capability the pool's
// policy lists (GREASE values excepted: they are random by design).
func hasCapabilities(p pool.Pool, kp *mls.KeyPackage) error {
	opts, err := pool.KeyPackageOptions(p)
	if err != nil {
		return err
	}
	want, got := opts.Capabilities.Lists(), kp.LeafNode.Capabilities.Lists()
	for i, kind := range mls.CapabilityKinds {
		for _, v := range want[i] {
			if !mls.IsGrease(v) && !slices.Contains(got[i], v) {
				return fmt.Errorf("capabilities.%s lacks %s, which pool %s requires", kind, mls.CapabilityName(kind, v), p.ID)
			}
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// clientRejected is the outbox message telling a client why its submission was refused.
// Its id is derived from the stream sequence, so a re-read input reports once.
func clientRejected(ev events.Event, seq uint64, cause error) (events.Outbound, bool) {
	if ev.Type != events.TypeSubmitted || events.ValidPoolID(ev.Pool) != nil {
		return events.Outbound{}, false
	}
	code, reason := codeOf(cause)
	body := events.ClientRejected{Pool: ev.Pool, RequestID: ev.RequestID, EventID: ev.ID, Code: code, Reason: reason}
	var ee *edgeError
	var re *pool.RejectError
	switch {
	case errors.As(cause, &ee):
		body.Ref = ee.ref
	case errors.As(cause, &re):
		body.Ref = re.Ref
	}
	data, _ := json.Marshal(body) // a plain struct
	return events.Outbound{ID: "rejected-" + strconv.FormatUint(seq, 10), Kind: events.KindClientRejected, Pool: ev.Pool, Body: data}, true
}

// submissionRefused reports whether a refused input should be told to the client: only a
// submission for a registered client pool.
func submissionRefused(v pool.View, ev events.Event) bool {
	if ev.Type != events.TypeSubmitted {
		return false
	}
	p, ok, err := v.Pool(ev.Pool)
	return err == nil && ok && p.Custody == events.CustodyClient
}

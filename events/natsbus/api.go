package natsbus

import (
	"fmt"
	"strings"

	"github.com/kpool/kpool/events"
)

// ServiceName is the NATS micro service name the worker registers (discovery via
// $SRV.PING/INFO/STATS.kpool).
const ServiceName = "kpool"

// API endpoint verbs. An endpoint that acts on one pool takes the pool id as its last
// subject token (<prefix>.api.<verb>.<pool>), so NATS permissions can scope a caller to its
// own pools.
const (
	VerbRegister  = "pool.register"
	VerbStatus    = "pool.status"
	VerbList      = "pool.list"
	VerbReplenish = "pool.replenish"
	VerbGet       = "keypackage.get"
	VerbTake      = "keypackage.take"
)

// APISubject is the subject of an endpoint; pool is empty for pool.list.
func APISubject(s events.Subjects, verb, pool string) string {
	if pool == "" {
		return s.API() + "." + verb
	}
	return s.API() + "." + verb + "." + pool
}

// PoolFromAPISubject returns the last token of an API subject: the pool id.
func PoolFromAPISubject(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// API error codes, sent in the Nats-Service-Error-Code header with a human-readable
// Nats-Service-Error description. Codes from the core (unknown_pool, unknown_ref,
// wrong_pool, invalid_transition, invalid_config, conflict, over_cap, invalid_input) and
// from event validation (invalid_field, ...) pass through unchanged.
const (
	CodeBadRequest       = "bad_request"       // the request body is not the JSON the endpoint expects
	CodeInvalidPoolID    = "invalid_pool_id"   // the pool token is not [A-Za-z0-9_-]{1,64}
	CodeInvalidRecipient = "invalid_recipient" // recipient_key is not a public key of the pool's HPKE KEM
	CodeUnavailable      = "unavailable"       // the worker is shutting down or its store failed; retry
	CodeInternal         = "internal"
)

// RegisterRequest creates a pool, or updates the policy of an existing one.
type RegisterRequest struct {
	Identity    string        `json:"identity"`     // the MLS credential identity (basic credential)
	CipherSuite uint16        `json:"cipher_suite"` // cipher suite: 1-7 (RFC 9420) or 77-88 (post-quantum)
	Policy      events.Policy `json:"policy,omitzero"`
	// RecipientKey is an HPKE public key of the cipher suite's KEM. When kpool generates
	// the pool's signature key, the response carries the private key sealed to it.
	RecipientKey []byte `json:"recipient_key,omitempty"`
	// ID makes the call idempotent: the same id is applied once. Optional.
	ID string `json:"id,omitempty"`
	// Custody is who holds the pool's private keys: "kpool" (the default) or "client".
	// It cannot change after registration.
	Custody string `json:"custody,omitempty"`
	// SignatureKey (custody client, required on creation) is the client's own signature
	// public key; kpool never sees the private half.
	SignatureKey []byte `json:"signature_key,omitempty"`
}

// Sealed is HPKE base-mode output (RFC 9180 single-shot Seal): the KEM encapsulation and
// the AEAD ciphertext. The info string binds it to its purpose; see SealInfo*.
type Sealed struct {
	Enc        []byte `json:"enc"`
	Ciphertext []byte `json:"ciphertext"`
}

// PoolInfo describes a pool.
type PoolInfo struct {
	Pool         string `json:"pool"`
	Identity     string `json:"identity"`
	CipherSuite  uint16 `json:"cipher_suite"`
	SignatureKey []byte `json:"signature_key"` // public
	Created      bool   `json:"created"`       // this call created the pool
	Custody      string `json:"custody"`       // "kpool" or "client"
	// Policy is the policy in force after the call, every field given.
	Policy events.Policy `json:"policy,omitzero"`
	// Changed names the policy fields this call changed (empty when it created the pool or
	// changed nothing).
	Changed []string `json:"changed"`
	// SealedSignatureKey is the pool's private signature key sealed to the request's
	// recipient_key; only in the response of the call that created the pool.
	SealedSignatureKey *Sealed        `json:"sealed_signature_key,omitempty"`
	Status             *events.Status `json:"status,omitempty"`
}

// PoolList is the answer of pool.list.
type PoolList struct {
	Pools []events.Status `json:"pools"`
}

// ReplenishRequest asks a pool to top up now. Optional body.
type ReplenishRequest struct {
	ID string `json:"id,omitempty"`
}

// GetRequest names a KeyPackage.
type GetRequest struct {
	Ref string `json:"ref"`
}

// KeyPackageInfo is the public data and state of a KeyPackage.
type KeyPackageInfo struct {
	Pool       string `json:"pool"`
	Ref        string `json:"ref"`
	State      string `json:"state"`
	KeyPackage []byte `json:"key_package"` // MLSMessage(mls_key_package) bytes
	NotBefore  int64  `json:"not_before"`
	NotAfter   int64  `json:"not_after"`
	LastResort bool   `json:"last_resort"`
	Used       bool   `json:"used,omitempty"`
	Attempt    int    `json:"attempt"`
	Reason     string `json:"reason,omitempty"`
	// CredentialType and Capabilities are read from the KeyPackage itself (RFC 9420 §7.2),
	// so they show what it was generated with, whatever the pool's policy says now.
	CredentialType uint16        `json:"credential_type,omitempty"`
	Capabilities   *Capabilities `json:"capabilities,omitempty"`
}

// Capabilities are a KeyPackage's leaf capabilities as numbers, GREASE values included.
type Capabilities struct {
	Versions     []uint16 `json:"versions"`
	CipherSuites []uint16 `json:"cipher_suites"`
	Extensions   []uint16 `json:"extensions"`
	Proposals    []uint16 `json:"proposals"`
	Credentials  []uint16 `json:"credentials"`
}

// TakeRequest asks for the private half of a KeyPackage named in a Welcome. The
// KeyPackage is consumed: its private keys are erased after they are handed over.
type TakeRequest struct {
	Ref          string `json:"ref"`
	RecipientKey []byte `json:"recipient_key,omitempty"` // HPKE public key of the pool's cipher suite KEM
	// CipherSuite, when set, must be the pool's: the worker refuses before consuming
	// anything, so a key for the wrong suite never costs a KeyPackage.
	CipherSuite uint16 `json:"cipher_suite,omitempty"`
	ID          string `json:"id,omitempty"` // optional idempotency id for the consumed event
}

// TakeResponse carries the private bundle sealed to the recipient key.
type TakeResponse struct {
	Pool        string `json:"pool"`
	Ref         string `json:"ref"`
	CipherSuite uint16 `json:"cipher_suite"`
	Sealed      Sealed `json:"sealed"`
}

// SealInfoSignatureKey is the HPKE info for a pool's sealed signature private key.
func SealInfoSignatureKey(pool string) []byte {
	return fmt.Appendf(nil, "kpool signature key v1 %s", pool)
}

// SealInfoTake is the HPKE info for a KeyPackage's sealed private bundle.
func SealInfoTake(pool, ref string) []byte {
	return fmt.Appendf(nil, "kpool take v1 %s %s", pool, ref)
}

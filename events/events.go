// Package events is kpool's wire contract: the inbound event envelope, the outbound
// messages, subjects, validation and the NDJSON log format. Other services import it;
// it depends on the standard library only.
package events

import (
	"crypto/sha256"
	"encoding/json"
	"time"
)

// Type names an inbound input to the core.
type Type string

// Inbound event types published by other services (and the worker's own ticker).
const (
	TypeUploadAck      Type = "upload_ack"
	TypeUploadRejected Type = "upload_rejected"
	TypeClaimed        Type = "claimed"
	TypeConsumed       Type = "consumed"
	TypeExpiryTick     Type = "expiry_tick"
	TypeReplenish      Type = "replenish"

	// Client custody (docs/client-custody.md): the MLS client that holds a pool's keys
	// reports what it made, what it deleted and what it holds.
	TypeSubmitted Type = "submitted" // a KeyPackage the client generated (public part)
	TypeDeleted   Type = "deleted"   // the client deleted these refs from its storage
	TypeInventory Type = "inventory" // every ref the client holds for the pool
)

// Inputs the worker produces itself. They are journaled like any event so that a replay
// needs neither randomness nor private keys.
const (
	// TypeGenerated carries the public half of a KeyPackage the worker minted.
	TypeGenerated Type = "generated"
	// TypePoolRegistered creates a pool (or updates its policy).
	TypePoolRegistered Type = "pool_registered"
	// TypeGenerationFailed: the worker could not generate KeyPackages for a pool (reason).
	TypeGenerationFailed Type = "generation_failed"
)

// PublicTypes are the types other services may publish on the events subjects.
var PublicTypes = []Type{TypeUploadAck, TypeUploadRejected, TypeClaimed, TypeConsumed, TypeExpiryTick, TypeReplenish,
	TypeSubmitted, TypeDeleted, TypeInventory}

// Event is the envelope of every input. Fields beyond id/type/time/pool are per type.
type Event struct {
	ID   string    `json:"id"`
	Type Type      `json:"type"`
	Time time.Time `json:"time"`
	Pool string    `json:"pool,omitempty"`

	// upload_ack, upload_rejected, claimed, consumed
	Ref string `json:"ref,omitempty"` // hex KeyPackageRef
	// upload_rejected
	Reason string `json:"reason,omitempty"`
	Retry  bool   `json:"retry,omitempty"`

	// submitted: the client's KeyPackage (MLSMessage or bare KeyPackage; base64 in JSON)
	// and the generate request it answers, if any.
	KeyPackage []byte `json:"key_package,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	// deleted, inventory: hex KeyPackageRefs
	Refs []string `json:"refs,omitzero"` // [] stays [] (an empty inventory)

	// generated; on submitted, what the worker's validation found (set by the worker
	// only, never accepted from a client)
	Generated *Generated `json:"generated,omitempty"`
	Register  *Register  `json:"register,omitempty"`
}

// Digest identifies an event's content for deduplication.
type Digest [sha256.Size]byte

// Digest hashes everything of the event but its time: the same id, type, pool and payload
// is the same event even when a publisher stamped its retry with a new time.
func (e Event) Digest() Digest {
	e.Time = time.Time{}
	data, err := json.Marshal(e)
	if err != nil {
		panic("events: an Event always marshals: " + err.Error())
	}
	return sha256.Sum256(data)
}

// MsgID is the Nats-Msg-Id to publish the event with: ids are unique per pool, so
// JetStream's duplicate window must not let one pool's id drop another pool's event.
func (e Event) MsgID() string { return e.Pool + "/" + e.ID }

// Generated is the public data of a KeyPackage the worker generated. Never private keys.
type Generated struct {
	Ref        string `json:"ref"`         // hex KeyPackageRef
	KeyPackage []byte `json:"key_package"` // serialized MLSMessage(mls_key_package)
	NotBefore  int64  `json:"not_before"`  // unix seconds
	NotAfter   int64  `json:"not_after"`   // unix seconds
	LastResort bool   `json:"last_resort,omitempty"`
}

// Register creates a pool for (identity, cipher suite) or updates its policy.
type Register struct {
	Identity     string `json:"identity"`
	CipherSuite  uint16 `json:"cipher_suite"`
	SignatureKey []byte `json:"signature_key"` // public signature key of the pool
	// Custody is who holds the pool's private keys: "kpool" (empty: the default) or
	// "client". It cannot change after registration.
	Custody string `json:"custody,omitempty"`
	Policy  Policy `json:"policy,omitzero"`
}

// Policy holds per-pool overrides of the worker's default pool configuration. A nil field
// is not given: it keeps the default on creation and the value in force on a later
// register, so re-registering with only {"target":10} changes the target and nothing else.
// A field given as 0 is 0 (low_watermark: 0 is a valid choice).
type Policy struct {
	Target             *int      `json:"target,omitempty"`
	LowWatermark       *int      `json:"low_watermark,omitempty"`
	HardCap            *int      `json:"hard_cap,omitempty"`
	Lifetime           *Duration `json:"lifetime,omitempty"`
	NotBeforeBackdate  *Duration `json:"not_before_backdate,omitempty"`
	MaxLifetime        *Duration `json:"max_lifetime,omitempty"`
	ExpiryMargin       *Duration `json:"expiry_margin,omitempty"`
	DeleteGrace        *Duration `json:"delete_grace,omitempty"`
	UploadTimeout      *Duration `json:"upload_timeout,omitempty"`
	MaxUploadAttempts  *int      `json:"max_upload_attempts,omitempty"`
	TombstoneRetention *Duration `json:"tombstone_retention,omitempty"`

	// What the pool's KeyPackages advertise and carry (docs/mls.md); given, it replaces
	// the capabilities in force as a whole. Nil on creation: the defaults.
	Capabilities *Capabilities `json:"capabilities,omitempty"`
	// LastResort false: the pool keeps no last-resort KeyPackage (docs/mls.md: Wire). Nil on creation: true.
	LastResort *bool `json:"last_resort,omitempty"`
	// X509Chain gives the pool an x509 credential instead of a basic one: DER
	// certificates, leaf first, the leaf certifying the pool's signature key. A later
	// register may replace the chain (renewal), not remove it.
	X509Chain [][]byte `json:"x509_chain,omitempty"`
	// X509TrustAnchors (DER), when given, must vouch for the chain at registration.
	X509TrustAnchors [][]byte `json:"x509_trust_anchors,omitempty"`
	// DeleteAlertAfter (client custody): a delete instruction unconfirmed this long
	// raises a delete_unconfirmed alert. Nil: 24h.
	DeleteAlertAfter *Duration `json:"delete_alert_after,omitempty"`
}

// Merge returns p with every field that o gives replaced by o's value.
func (p Policy) Merge(o Policy) Policy {
	pick(&p.Target, o.Target)
	pick(&p.LowWatermark, o.LowWatermark)
	pick(&p.HardCap, o.HardCap)
	pick(&p.Lifetime, o.Lifetime)
	pick(&p.NotBeforeBackdate, o.NotBeforeBackdate)
	pick(&p.MaxLifetime, o.MaxLifetime)
	pick(&p.ExpiryMargin, o.ExpiryMargin)
	pick(&p.DeleteGrace, o.DeleteGrace)
	pick(&p.UploadTimeout, o.UploadTimeout)
	pick(&p.MaxUploadAttempts, o.MaxUploadAttempts)
	pick(&p.TombstoneRetention, o.TombstoneRetention)
	pick(&p.Capabilities, o.Capabilities)
	pick(&p.LastResort, o.LastResort)
	pick(&p.DeleteAlertAfter, o.DeleteAlertAfter)
	if o.X509Chain != nil {
		p.X509Chain = o.X509Chain
	}
	if o.X509TrustAnchors != nil {
		p.X509TrustAnchors = o.X509TrustAnchors
	}
	return p
}

func pick[T any](dst **T, v *T) {
	if v != nil {
		c := *v
		*dst = &c
	}
}

// Custody kinds.
const (
	CustodyKpool  = "kpool"
	CustodyClient = "client"
)

// Duration is a time.Duration that reads and writes JSON as a string such as "90s", "36h"
// or "84d" (d = 24h, for the long lifetimes pools use).
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "84d", "36h", "90s" and the like.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &FieldError{Field: "duration", Reason: "must be a string such as \"84d\" or \"36h\""}
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

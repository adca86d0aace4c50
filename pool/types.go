// Package pool is kpool's pure core: pools of KeyPackages, their policy and counters,
// and Step, which applies one input and returns what changed. No I/O, no wall clock,
// no randomness: state is read through a View and changes come back as a Ready.
package pool

import (
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// KeyPackage is the stored snapshot of one KeyPackage (public data only).
type KeyPackage struct {
	Ref        string    `json:"ref"`
	Pool       string    `json:"pool"`
	State      fsm.State `json:"state"`
	KeyPackage []byte    `json:"key_package"` // MLSMessage bytes
	NotBefore  int64     `json:"not_before"`
	NotAfter   int64     `json:"not_after"`
	LastResort bool      `json:"last_resort,omitempty"`
	Used       bool      `json:"used,omitempty"`  // a last-resort KeyPackage that was claimed
	Attempt    int       `json:"attempt"`         // upload attempts so far
	Fresh      bool      `json:"fresh,omitempty"` // available and counted toward the watermark
	Deadline   time.Time `json:"deadline"`        // next timed action; key of the expiry index
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	Reason     string    `json:"reason,omitempty"` // why it was deleted or expired

	// Fixed at generation so a later policy change does not move existing timers.
	ExpiresAt  time.Time `json:"expires_at"`     // not_after − expiry_margin: no longer offered
	FreshUntil time.Time `json:"fresh_until"`    // not_after − 2×expiry_margin: stops counting toward the watermark
	Bucket     int64     `json:"bucket"`         // key in Pool.Expiries while live
	Held       bool      `json:"held,omitempty"` // kept available past ExpiresAt as the pool's last one

	// Client custody: a deleted KeyPackage whose deletion the client has not confirmed.
	DeletePending bool      `json:"delete_pending,omitempty"`
	DeleteSends   int       `json:"delete_sends,omitempty"`   // delete instructions sent so far
	DeleteAlerted bool      `json:"delete_alerted,omitempty"` // delete_unconfirmed raised
	DeletedAt     time.Time `json:"deleted_at,omitzero"`
}

// Pool is the stored record of one pool: identity, policy, counters and status sequence.
type Pool struct {
	ID             string        `json:"id"`
	Identity       string        `json:"identity"`
	CipherSuite    uint16        `json:"cipher_suite"`
	SignatureKey   []byte        `json:"signature_key"`
	Policy         events.Policy `json:"policy,omitzero"` // overrides as registered
	Config         Config        `json:"config"`          // effective configuration
	Counts         events.Counts `json:"counts"`
	Fresh          int           `json:"fresh"` // available and valid at now + expiry margin
	StatusSeq      uint64        `json:"status_seq"`
	LastResort     string        `json:"last_resort,omitempty"` // ref of the current last-resort KeyPackage
	LastResortUsed bool          `json:"last_resort_used,omitempty"`
	// GenerationError is the last generation failure the edge reported, cleared by the
	// next generated KeyPackage.
	GenerationError string            `json:"generation_error,omitempty"`
	Extra           map[string]string `json:"extra,omitempty"` // reserved; keep the record forward compatible

	// Subset of Counts for last-resort KeyPackages (they are outside the watermark).
	LastResortCounts events.Counts `json:"last_resort_counts"`
	// Ref of a replacement last resort that is generated but not yet acknowledged.
	LastResortPending string `json:"last_resort_pending,omitempty"`
	// The current last resort passed its fresh time: a replacement is due.
	LastResortStale bool `json:"last_resort_stale,omitempty"`
	// A last-resort generate request is outstanding.
	LastResortRequested bool `json:"last_resort_requested,omitempty"`
	// Regular KeyPackages asked of the edge and not yet fed back as `generated`.
	Requested int `json:"requested"`
	// Ref of the regular KeyPackage held past its margin as the pool's last available.
	Held string `json:"held,omitempty"`
	// Tombstones currently stored (Counts.Deleted is cumulative).
	Tombstones int `json:"tombstones"`
	// Live KeyPackages per expiry bucket (unix seconds of the bucket start): gives the
	// next expiry without scanning the pool.
	Expiries map[int64]int `json:"expiries,omitempty"`
	// Claim-storm window: claims since ClaimWindowStart (window = upload_timeout).
	ClaimWindowStart time.Time `json:"claim_window_start"`
	ClaimWindowCount int       `json:"claim_window_count"`
	ClaimStormRaised bool      `json:"claim_storm_raised,omitempty"`
	CreatedAt        time.Time `json:"created_at"`

	// Custody is events.CustodyClient for a pool whose MLS client holds the private keys;
	// empty: kpool holds them.
	Custody string `json:"custody,omitempty"`
	// Client custody: when the outstanding demand is asked again (zero: nothing asked),
	// how many times it was asked since the client last submitted, and how many deleted
	// KeyPackages the client has not confirmed deleting.
	ClientAsk     time.Time `json:"client_ask,omitzero"`
	ClientAsks    int       `json:"client_asks,omitempty"`
	DeletePending int       `json:"delete_pending,omitempty"`
}

// Config is a pool's effective policy.
type Config struct {
	Target             int           `json:"target"`
	LowWatermark       int           `json:"low_watermark"`
	HardCap            int           `json:"hard_cap"`
	Lifetime           time.Duration `json:"lifetime"`
	NotBeforeBackdate  time.Duration `json:"not_before_backdate"`
	MaxLifetime        time.Duration `json:"max_lifetime"`
	ExpiryMargin       time.Duration `json:"expiry_margin"`
	DeleteGrace        time.Duration `json:"delete_grace"`
	UploadTimeout      time.Duration `json:"upload_timeout"`
	MaxUploadAttempts  int           `json:"max_upload_attempts"`
	TombstoneRetention time.Duration `json:"tombstone_retention"`
	// DeleteAlertAfter (client custody; 0: 24h) is how long a delete instruction may go
	// unconfirmed before a delete_unconfirmed alert.
	DeleteAlertAfter time.Duration `json:"delete_alert_after,omitempty"`
}

// Meta is the core's global state.
type Meta struct {
	Seq  uint64    `json:"seq"`  // sequence number of the last applied input
	Time time.Time `json:"time"` // largest event time seen
}

// IndexEntry is one entry of the ordered expiry index: the KeyPackage ref is due for its
// next timed action at At.
type IndexEntry struct {
	At  time.Time
	Ref string
}

// View is read-only access to the state the core steps on. The persistence layer
// implements it over a bbolt transaction (which sees the writes of earlier steps in the
// same transaction); MemStore implements it in memory for tests and replay.
type View interface {
	Meta() (Meta, error)
	Pool(id string) (Pool, bool, error)
	KeyPackage(ref string) (KeyPackage, bool, error)
	// Due calls fn for index entries with At <= until, in (At, Ref) order, until fn
	// returns false.
	Due(until time.Time, fn func(IndexEntry) bool) error
	// Seen reports whether an event id was already applied in a pool ("" for inputs of
	// no pool), with the digest (events.Event.Digest) of the input it was applied with.
	Seen(pool, eventID string) (digest events.Digest, ok bool, err error)
}

// RefLister is implemented by Views that can list a pool's KeyPackage refs (tombstones
// included): the core needs it only for a client's inventory, which is reconciled
// against the whole pool.
type RefLister interface {
	PoolRefs(pool string, fn func(ref string) bool) error
}

// GenerateRequest asks the edge to mint KeyPackages for a pool and feed each back as a
// `generated` input.
type GenerateRequest struct {
	Pool       string `json:"pool"`
	Count      int    `json:"count"`
	LastResort bool   `json:"last_resort,omitempty"`
}

// Ready is everything one Step changed. The persistence layer writes it in one
// transaction; nothing here is a private key.
type Ready struct {
	Seq         uint64       // sequence number assigned to the input (0 when not applied)
	Input       events.Event // the input, as journaled
	Meta        Meta         // new global state
	Pools       []Pool       // changed pool records, full
	KeyPackages []KeyPackage // changed KeyPackage records, full (deleted = tombstone)
	Purge       []string     // tombstones to remove entirely
	IndexDel    []IndexEntry // expiry index entries to remove
	IndexPut    []IndexEntry // expiry index entries to add
	Erase       []string     // refs whose private keys must be erased now
	Outbox      []events.Outbound
	Generate    []GenerateRequest
	Transitions []events.Transition
	Duplicate   bool // the event id was already applied: nothing changed
}

package events

import "time"

// Kind names an outbound message family; each has its own subject (see Subjects).
type Kind string

// Outbound message kinds.
const (
	KindUpload     Kind = "upload"
	KindWithdraw   Kind = "withdraw"
	KindStatus     Kind = "status"
	KindTransition Kind = "transitions"
	KindAlert      Kind = "alerts"
)

// Outbound is one message the core wants published. It is stored in the outbox in the
// same transaction as the state change that caused it, and relayed to NATS afterwards
// with ID as Nats-Msg-Id so a re-send is deduplicated by the server.
type Outbound struct {
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	Pool string `json:"pool"`
	Body []byte `json:"body"` // JSON of Upload, Withdraw, Status, Transition or Alert
}

// Upload asks the delivery service to publish a KeyPackage.
type Upload struct {
	Pool       string `json:"pool"`
	Ref        string `json:"ref"`
	KeyPackage []byte `json:"key_package"` // MLSMessage bytes; base64 in JSON
	NotAfter   int64  `json:"not_after"`   // unix seconds
	LastResort bool   `json:"last_resort"`
	Attempt    int    `json:"attempt"`
}

// Withdraw asks the delivery service to stop offering a KeyPackage.
type Withdraw struct {
	Pool   string `json:"pool"`
	Ref    string `json:"ref"`
	Reason string `json:"reason,omitempty"`
}

// Transition records one KeyPackage state change (or a refused one, with Error set).
type Transition struct {
	Pool    string    `json:"pool"`
	Ref     string    `json:"ref"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Event   string    `json:"event"`
	EventID string    `json:"event_id"`
	Time    time.Time `json:"time"`
	Error   string    `json:"error,omitempty"`
}

// Alert kinds.
const (
	AlertDepleted         = "depleted"
	AlertLow              = "low"
	AlertLastResortUsed   = "last_resort_used"
	AlertUploadFailed     = "upload_failed"
	AlertClaimStorm       = "claim_storm"
	AlertUploadRejected   = "upload_rejected"
	AlertGenerationFailed = "generation_failed"
)

// Alert tells operators something needs attention.
type Alert struct {
	Pool   string    `json:"pool"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
	Time   time.Time `json:"time"`
}

// Health of a pool.
const (
	HealthHealthy  = "healthy"
	HealthLow      = "low"
	HealthDepleted = "depleted"
	// HealthGenerationFailing: the worker cannot generate this pool's KeyPackages; the
	// status's generation_error says why.
	HealthGenerationFailing = "generation_failing"
)

// Counts per KeyPackage state; always all present (explicit zeros).
type Counts struct {
	Created   int `json:"created"`
	Available int `json:"available"`
	Claimed   int `json:"claimed"`
	Expired   int `json:"expired"`
	Deleted   int `json:"deleted"`
}

// Status is a pool's published health.
type Status struct {
	Pool           string     `json:"pool"`
	Identity       string     `json:"identity"`
	CipherSuite    uint16     `json:"cipher_suite"`
	Seq            uint64     `json:"seq"` // per-pool, increases with every published status
	Time           time.Time  `json:"time"`
	Health         string     `json:"health"`
	Counts         Counts     `json:"counts"`
	AvailableFresh int        `json:"available_fresh"` // available and valid at now + expiry margin
	Target         int        `json:"target"`
	LowWatermark   int        `json:"low_watermark"`
	HardCap        int        `json:"hard_cap"`
	LastResortRef  string     `json:"last_resort_ref"`
	LastResortUsed bool       `json:"last_resort_used"`
	NextExpiry     *time.Time `json:"next_expiry"`
	// GenerationError is why the worker cannot generate this pool's KeyPackages (empty
	// once a KeyPackage was generated again).
	GenerationError string `json:"generation_error,omitempty"`
	// Custody is "client" for a pool whose MLS client holds the keys (absent: kpool).
	Custody string `json:"custody,omitempty"`
	// DeletePending (client custody): delete instructions the client has not confirmed.
	DeletePending int `json:"delete_pending,omitempty"`
}

// DeadLetter reports an input that was rejected, and why. Published on the dead-letter
// subject; the rejected message is acked so it is never redelivered forever.
type DeadLetter struct {
	Subject string    `json:"subject"`
	EventID string    `json:"event_id,omitempty"`
	Code    string    `json:"code"`           // stable machine-readable reason, e.g. "invalid_transition"
	Reason  string    `json:"reason"`         // human-readable
	Data    string    `json:"data,omitempty"` // the rejected payload, truncated
	Time    time.Time `json:"time"`
}

// Client-custody message kinds: instructions to the MLS client that holds a pool's keys,
// on <prefix>.client.<pool>.<kind> (see Subjects.Client).
const (
	KindClientGenerate Kind = "client.generate"
	KindClientDelete   Kind = "client.delete"
	KindClientRejected Kind = "client.rejected"
)

// AlertDeleteUnconfirmed: a client did not confirm a delete instruction in time.
const AlertDeleteUnconfirmed = "delete_unconfirmed"

// ClientGenerate is a client pool's current demand: generate Count KeyPackages (one of
// them with the last_resort extension when LastResort) and submit them. Each message
// replaces the previous one (Count 0: nothing is wanted now).
type ClientGenerate struct {
	Pool        string `json:"pool"`
	RequestID   string `json:"request_id"`
	Count       int    `json:"count"`
	CipherSuite uint16 `json:"cipher_suite"`
	MaxNotAfter int64  `json:"max_not_after"` // unix seconds: not_after beyond this is refused
	LastResort  bool   `json:"last_resort"`
}

// ClientDelete tells the client to delete these KeyPackages (and their private keys)
// from its storage and to confirm with a `deleted` event.
type ClientDelete struct {
	Pool string   `json:"pool"`
	Refs []string `json:"refs"`
}

// ClientRejected tells the client that a submission was refused, and why.
type ClientRejected struct {
	Pool      string `json:"pool"`
	Ref       string `json:"ref,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	EventID   string `json:"event_id,omitempty"`
	Code      string `json:"code"`
	Reason    string `json:"reason"`
}

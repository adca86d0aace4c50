// Package fsm is the KeyPackage lifecycle on github.com/looplab/fsm. It holds no I/O,
// no clock and no randomness: a machine is restored from a stored state on demand,
// fired once, and dropped.
package fsm

// State of one KeyPackage.
type State string

// The lifecycle states (see docs/state-diagram.md).
const (
	Created   State = "created"
	Available State = "available"
	Claimed   State = "claimed"
	Expired   State = "expired"
	Deleted   State = "deleted"
)

// Event drives a transition.
type Event string

// The lifecycle events.
const (
	UploadAck      Event = "upload_ack"
	UploadRejected Event = "upload_rejected"
	Claim          Event = "claimed"
	Consume        Event = "consumed"
	Expire         Event = "expire"
	Delete         Event = "delete"
)

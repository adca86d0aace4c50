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

// States lists every state in lifecycle order.
var States = []State{Created, Available, Claimed, Expired, Deleted}

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
	// UploadFailed drops a KeyPackage whose uploads were never acknowledged.
	UploadFailed Event = "upload_failed"
	// Lose retires a client-custody KeyPackage its client no longer holds (inventory,
	// or a deletion the client reported itself): no Welcome for it can be processed.
	Lose Event = "lost"
)

// Live reports whether a KeyPackage in state s still counts toward the hard cap.
func (s State) Live() bool { return s == Created || s == Available || s == Claimed }

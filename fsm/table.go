package fsm

// Kind selects which KeyPackages a transition row applies to: last-resort KeyPackages
// are reusable, so some events leave them where they are.
type Kind int

// Row kinds.
const (
	Any        Kind = iota // every KeyPackage
	Regular                // only KeyPackages without the last_resort extension
	LastResort             // only last-resort KeyPackages
)

func (k Kind) String() string {
	switch k {
	case Regular:
		return "regular"
	case LastResort:
		return "last resort"
	}
	return "any"
}

// Transition is one row of the lifecycle table. Guard and Effect document what the pool
// checks before firing and does after; the fsm itself only moves the state.
type Transition struct {
	Event  Event
	From   []State
	To     State
	Kind   Kind
	Guard  string
	Effect string
}

// SelfLoop reports whether the row keeps the state (looplab/fsm reports those as
// NoTransitionError, which Fire treats as success).
func (t Transition) SelfLoop() bool { return len(t.From) == 1 && t.From[0] == t.To }

// Table is the whole lifecycle. docs/state-diagram.md is generated from it.
var Table = []Transition{
	{Event: UploadAck, From: []State{Created}, To: Available, Kind: Any,
		Guard:  "the delivery service acknowledged the upload",
		Effect: "counts as available; fresh (toward the watermark) while now < not_after − 2×margin; a held last available KeyPackage (or the previous last resort) is expired"},
	{Event: UploadRejected, From: []State{Created}, To: Deleted, Kind: Any,
		Guard:  "retry=false, or retry=true with max_upload_attempts used",
		Effect: "private keys erased; `upload_rejected` alert with the DS's reason; refill re-evaluated"},
	{Event: UploadFailed, From: []State{Created}, To: Deleted, Kind: Any,
		Guard:  "upload_timeout passed after the last of max_upload_attempts uploads",
		Effect: "private keys erased; `upload_failed` alert"},
	{Event: Claim, From: []State{Available}, To: Claimed, Kind: Regular,
		Guard:  "the DS handed it out",
		Effect: "never offered again; keys kept until consumed or not_after + delete_grace; claim-storm window counted"},
	{Event: Claim, From: []State{Available}, To: Available, Kind: LastResort,
		Guard:  "the DS handed out the last resort",
		Effect: "stays available, marked used; `last_resort_used` alert; a replacement last resort is requested"},
	{Event: Consume, From: []State{Available, Claimed, Expired}, To: Deleted, Kind: Regular,
		Guard:  "the owner took the private keys (`take`)",
		Effect: "private keys erased in the same step; tombstone kept for tombstone_retention"},
	{Event: Consume, From: []State{Available}, To: Available, Kind: LastResort,
		Guard:  "the owner took the last resort's private keys",
		Effect: "stays available (reusable), marked used; a replacement is requested"},
	{Event: Consume, From: []State{Expired}, To: Deleted, Kind: LastResort,
		Guard:  "the owner took a retired last resort's private keys",
		Effect: "private keys erased; tombstone kept"},
	{Event: Expire, From: []State{Created, Available, Claimed}, To: Expired, Kind: Any,
		Guard:  "now ≥ not_after − margin (an available one that is the pool's last is held until a replacement is acked or now ≥ not_after); or a last resort replaced by an acked one",
		Effect: "no longer counted; created and available ones get a Withdraw message; keys kept until not_after + delete_grace"},
	{Event: Lose, From: []State{Created, Available, Claimed, Expired}, To: Deleted, Kind: Any,
		Guard:  "client custody: the client no longer holds it (absent from its inventory, or reported deleted)",
		Effect: "created and available ones get a Withdraw message; counted as deleted with reason lost; refill re-evaluated"},
	{Event: Delete, From: []State{Expired}, To: Deleted, Kind: Any,
		Guard:  "now ≥ not_after + delete_grace",
		Effect: "private keys erased; tombstone purged at deleted_at + tombstone_retention"},
}

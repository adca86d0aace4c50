package pool

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// TestProperty drives thousands of random event sequences through the core. After
// every step the harness checks the invariants and that the view was not touched;
// afterwards the same inputs are replayed into an empty store and must give
// byte-identical Readys (or the same rejections).
func TestProperty(t *testing.T) {
	runs, steps := 2000, 80
	switch {
	case testing.Short():
		runs = 200
	case raceEnabled:
		runs, steps = 1000, 50
	}
	for seed := range uint64(runs) {
		inputs, outputs := randomRun(t, seed, steps)
		h := newHarness(t)
		h.viewCheck = 0
		for i, in := range inputs {
			if got := encodeStep(h.step(in)); got != outputs[i] {
				t.Fatalf("seed %d step %d (%s %s): replay differs:\n%s\nvs\n%s", seed, i, in.ID, in.Type, got, outputs[i])
			}
		}
	}
}

func encodeStep(r Ready, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	b, jerr := json.Marshal(r)
	if jerr != nil {
		return "marshal: " + jerr.Error()
	}
	return string(b)
}

// randomRun plays one random sequence and returns its inputs and encoded outputs.
func randomRun(t *testing.T, seed uint64, steps int) ([]events.Event, []string) {
	rng := rand.New(rand.NewPCG(seed, 0x6b706f6f6c))
	h := newHarness(t)
	h.viewCheck = 7 // a full snapshot is costly; every 7th step still covers all step kinds
	pools := []string{"p1", "p2"}
	var inputs []events.Event
	var outputs []string
	step := func(in events.Event) {
		r, err := h.step(in)
		inputs = append(inputs, in)
		outputs = append(outputs, encodeStep(r, err))
	}
	register := func(pool string) {
		in := h.event(events.TypePoolRegistered, pool)
		target := 1 + rng.IntN(6)
		in.Register = &events.Register{Identity: "id-" + pool, CipherSuite: 1, SignatureKey: []byte("key-" + pool), Policy: events.Policy{
			Target: new(target), LowWatermark: new(rng.IntN(target + 1)), HardCap: new(target + rng.IntN(4)),
			Lifetime: new(events.Duration(time.Duration(8+rng.IntN(20)) * 24 * time.Hour)), ExpiryMargin: new(events.Duration(time.Duration(1+rng.IntN(3)) * 24 * time.Hour)),
			DeleteGrace: new(events.Duration(time.Duration(rng.IntN(3)) * 24 * time.Hour)), UploadTimeout: new(events.Duration(time.Duration(1+rng.IntN(60)) * time.Minute)),
			MaxUploadAttempts: new(1 + rng.IntN(3)), TombstoneRetention: new(events.Duration(time.Duration(1+rng.IntN(5)) * 24 * time.Hour)),
			MaxLifetime: new(events.Duration(50 * 24 * time.Hour)),
		}}
		if pool == "p2" { // client custody: asks, submissions, deletions, inventories
			in.Register.Custody = events.CustodyClient
		}
		step(in)
	}
	// pick returns a random KeyPackage of pool in one of states (nil if none).
	pick := func(pool string, states ...fsm.State) *KeyPackage {
		var c []KeyPackage
		for _, k := range h.store.KeyPackages(pool) {
			for _, s := range states {
				if k.State == s {
					c = append(c, k)
				}
			}
		}
		if len(c) == 0 {
			return nil
		}
		k := c[rng.IntN(len(c))]
		return &k
	}
	for _, p := range pools {
		register(p)
	}
	for range steps {
		pool := pools[rng.IntN(len(pools))]
		p := h.store.pools[pool]
		refEvent := func(typ events.Type, states ...fsm.State) {
			if k := pick(pool, states...); k != nil {
				in := h.event(typ, pool)
				in.Ref = k.Ref
				if typ == events.TypeUploadRejected {
					in.Reason, in.Retry = "nope", rng.IntN(2) == 0
				}
				step(in)
			}
		}
		switch n := rng.IntN(100); {
		case n < 22: // the edge answers a generate request
			if p.LastResortRequested || p.Requested > 0 || rng.IntN(10) == 0 {
				in := h.generated(pool, p.LastResortRequested && rng.IntN(2) == 0, 0)
				if p.Custody == events.CustodyClient { // the client answers, validated by the edge
					g := in.Generated
					in = h.event(events.TypeSubmitted, pool)
					in.Generated = g
				}
				step(in)
			}
		case n < 42:
			refEvent(events.TypeUploadAck, fsm.Created)
		case n < 47:
			refEvent(events.TypeUploadRejected, fsm.Created)
		case n < 60:
			refEvent(events.TypeClaimed, fsm.Available)
		case n < 67:
			refEvent(events.TypeConsumed, fsm.Available, fsm.Claimed, fsm.Expired)
		case n < 80: // time passes
			h.clock = h.clock.Add(time.Duration(rng.IntN(4*24*60)) * time.Minute)
			step(h.event(events.TypeExpiryTick, ""))
		case n < 83:
			step(h.event(events.TypeReplenish, pool))
		case n < 86: // a redelivered event
			if len(inputs) > 0 {
				step(inputs[rng.IntN(len(inputs))])
			}
		case n < 90: // any event in any state, possibly late or for the other pool
			types := []events.Type{events.TypeUploadAck, events.TypeClaimed, events.TypeConsumed, events.TypeUploadRejected}
			in := h.event(types[rng.IntN(len(types))], pools[rng.IntN(len(pools))])
			in.Time = h.clock.Add(-time.Duration(rng.IntN(120)) * time.Minute)
			in.Reason = "late"
			if k := pick(pool, fsm.States...); k != nil {
				in.Ref = k.Ref
			} else {
				in.Ref = refOf(fmt.Sprint("ghost", rng.IntN(3)))
			}
			step(in)
		case n < 93:
			register(pool)
		case n < 96: // the client confirms deletions (some of live ones: lost) or reports its inventory
			typ := events.TypeDeleted
			if rng.IntN(2) == 0 {
				typ = events.TypeInventory
			}
			in := h.event(typ, pool)
			in.Refs = []string{}
			for _, k := range h.store.KeyPackages(pool) {
				if rng.IntN(3) > 0 && (typ == events.TypeInventory) == k.State.Live() {
					in.Refs = append(in.Refs, k.Ref)
				}
			}
			if rng.IntN(4) == 0 {
				in.Refs = append(in.Refs, refOf(fmt.Sprint("stray", len(inputs))))
			}
			step(in)
		default: // a tick stamped in the past
			in := h.event(events.TypeExpiryTick, pool)
			in.Time = h.clock.Add(-time.Hour)
			step(in)
		}
	}
	return inputs, outputs
}

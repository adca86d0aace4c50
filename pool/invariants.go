package pool

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// ErrInvariant is matched by every invariant violation.
var ErrInvariant = errors.New("invariant violated")

func violation(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvariant, fmt.Sprintf(format, a...))
}

// CheckPool checks one pool record against its stored KeyPackages (tombstones
// included) at time now: counters equal a recount, no available KeyPackage past its
// margin (unless held as the last, and then not past not_after), the hard cap holds,
// no timer is overdue. The persistence layer can call it with an iterator over a bucket.
func CheckPool(p Pool, now time.Time, kps iter.Seq[KeyPackage]) error {
	var all, lr events.Counts
	fresh, tombs := 0, 0
	expiries := map[int64]int{}
	held, pending := "", 0
	lrFound, pendingFound := p.LastResort == "", p.LastResortPending == ""
	for k := range kps {
		if k.Ref == p.LastResort {
			if !k.LastResort || k.State != fsm.Available {
				return violation("pool %s: current last resort %s is %s (last resort %v)", p.ID, k.Ref, k.State, k.LastResort)
			}
			lrFound = true
		}
		if k.Ref == p.LastResortPending {
			if !k.LastResort || k.State != fsm.Created {
				return violation("pool %s: pending last resort %s is %s (last resort %v)", p.ID, k.Ref, k.State, k.LastResort)
			}
			pendingFound = true
		}
		if k.Pool != p.ID {
			return violation("pool %s: KeyPackage %s belongs to %s", p.ID, k.Ref, k.Pool)
		}
		if k.DeletePending {
			if k.State != fsm.Deleted || !isClient(&p) {
				return violation("KeyPackage %s awaits a delete confirmation in state %s (custody %s)", k.Ref, k.State, CustodyName(p))
			}
			pending++
		}
		if k.State == fsm.Deleted {
			tombs++
		} else if n := counter(&all, k.State); n != nil {
			*n++
			if k.LastResort {
				*counter(&lr, k.State)++
			}
		} else {
			return violation("KeyPackage %s has unknown state %q", k.Ref, k.State)
		}
		if k.State.Live() {
			expiries[k.Bucket]++
		}
		if !k.Deadline.After(now) {
			return violation("KeyPackage %s (%s) has an overdue deadline %s at %s", k.Ref, k.State, k.Deadline, now)
		}
		if k.Fresh {
			if k.State != fsm.Available || !now.Before(k.FreshUntil) {
				return violation("KeyPackage %s marked fresh in state %s at %s (fresh until %s)", k.Ref, k.State, now, k.FreshUntil)
			}
			if !k.LastResort {
				fresh++
			}
		}
		if k.State == fsm.Available && !now.Before(k.ExpiresAt) {
			if !k.Held || !now.Before(time.Unix(k.NotAfter, 0)) {
				return violation("KeyPackage %s is available past not_after − margin (%s) at %s", k.Ref, k.ExpiresAt, now)
			}
		}
		if k.Held {
			if k.State != fsm.Available {
				return violation("KeyPackage %s held in state %s", k.Ref, k.State)
			}
			if !k.LastResort {
				if held != "" {
					return violation("pool %s holds two KeyPackages: %s and %s", p.ID, held, k.Ref)
				}
				held = k.Ref
			}
		}
	}
	if !lrFound || !pendingFound {
		return violation("pool %s: last resort %q or pending %q not stored", p.ID, p.LastResort, p.LastResortPending)
	}
	all.Deleted, lr.Deleted = p.Counts.Deleted, p.LastResortCounts.Deleted
	if all != p.Counts || lr != p.LastResortCounts {
		return violation("pool %s counts %+v (last resort %+v), recount %+v (%+v)", p.ID, p.Counts, p.LastResortCounts, all, lr)
	}
	if tombs != p.Tombstones || p.Counts.Deleted < tombs {
		return violation("pool %s: %d tombstones stored, record says %d (deleted %d)", p.ID, tombs, p.Tombstones, p.Counts.Deleted)
	}
	if fresh != p.Fresh {
		return violation("pool %s: fresh %d, recount %d", p.ID, p.Fresh, fresh)
	}
	if !maps.Equal(expiries, p.Expiries) && (len(expiries) != 0 || len(p.Expiries) != 0) {
		return violation("pool %s: expiry buckets %v, recount %v", p.ID, p.Expiries, expiries)
	}
	if held != p.Held {
		return violation("pool %s: held %q, recount %q", p.ID, p.Held, held)
	}
	if p.Requested < 0 || reserved(&p) > p.Config.HardCap {
		return violation("pool %s: live %d + requested %d (+ last resort %v) over hard_cap %d", p.ID, live(p.Counts), p.Requested, p.LastResortRequested, p.Config.HardCap)
	}
	if pending != p.DeletePending {
		return violation("pool %s: delete_pending %d, recount %d", p.ID, p.DeletePending, pending)
	}
	if !isClient(&p) && !p.ClientAsk.IsZero() {
		return violation("pool %s (custody kpool) has a client re-ask timer", p.ID)
	}
	if isClient(&p) && demand(&p) > 0 && !p.ClientAsk.After(now) {
		return violation("pool %s asks its client for %d KeyPackages but its re-ask %s is not after %s", p.ID, demand(&p), p.ClientAsk, now)
	}
	if p.LastResortCounts.Available > 1+b2i(p.LastResortPending != "") {
		return violation("pool %s: %d last resorts available", p.ID, p.LastResortCounts.Available)
	}
	return nil
}

// CheckReady checks what a Ready does to the state in v before it is applied: deleted
// is terminal, status sequence numbers never go back, the global sequence advances by
// one and time never goes back.
func CheckReady(v View, r Ready) error {
	if r.Duplicate {
		return nil
	}
	meta, err := v.Meta()
	if err != nil {
		return err
	}
	if r.Seq != meta.Seq+1 || r.Meta.Seq != r.Seq || r.Meta.Time.Before(meta.Time) {
		return violation("meta %d@%s after %d@%s", r.Meta.Seq, r.Meta.Time, meta.Seq, meta.Time)
	}
	for _, k := range r.KeyPackages {
		old, ok, err := v.KeyPackage(k.Ref)
		if err != nil {
			return err
		}
		if ok && old.State == fsm.Deleted && k.State != fsm.Deleted {
			return violation("KeyPackage %s left deleted for %s", k.Ref, k.State)
		}
		if ok && (old.Pool != k.Pool || old.LastResort != k.LastResort) {
			return violation("KeyPackage %s changed pool or kind", k.Ref)
		}
	}
	last := map[string]uint64{}
	for _, p := range r.Pools {
		old, ok, err := v.Pool(p.ID)
		if err != nil {
			return err
		}
		if ok && p.StatusSeq < old.StatusSeq {
			return violation("pool %s status seq went back from %d to %d", p.ID, old.StatusSeq, p.StatusSeq)
		}
		last[p.ID] = old.StatusSeq
	}
	for _, o := range r.Outbox {
		if o.Kind != events.KindStatus {
			continue
		}
		var s events.Status
		if err := json.Unmarshal(o.Body, &s); err != nil {
			return err
		}
		if s.Seq <= last[o.Pool] {
			return violation("pool %s status seq %d after %d", o.Pool, s.Seq, last[o.Pool])
		}
		last[o.Pool] = s.Seq
	}
	return nil
}

// CheckInvariants checks every pool of m and its expiry index: each KeyPackage has
// exactly one entry, at its deadline.
func CheckInvariants(m *MemStore) error {
	for _, p := range m.Pools() {
		if err := CheckPool(p, m.meta.Time, func(yield func(KeyPackage) bool) {
			for _, k := range m.kps {
				if k.Pool == p.ID && !yield(k) {
					return
				}
			}
		}); err != nil {
			return err
		}
	}
	n, timers := 0, 0
	var bad error
	m.index.ascend(time.Unix(1<<40, 0), func(e IndexEntry) bool {
		n++
		if id, ok := ClientTimerPool(e.Ref); ok {
			if p, ok := m.pools[id]; !ok || !p.ClientAsk.Equal(e.At) {
				bad = violation("index entry %s@%s does not match a client pool's re-ask", e.Ref, e.At)
				return false
			}
			timers++
			return true
		}
		k, ok := m.kps[e.Ref]
		if !ok || !k.Deadline.Equal(e.At) {
			bad = violation("index entry %s@%s does not match a KeyPackage deadline", e.Ref, e.At)
			return false
		}
		return true
	})
	if bad != nil {
		return bad
	}
	asks := 0
	for _, p := range m.pools {
		asks += b2i(!p.ClientAsk.IsZero())
	}
	if n != len(m.kps)+asks || timers != asks {
		return violation("%d index entries for %d KeyPackages and %d client re-ask timers", n, len(m.kps), asks)
	}
	for _, k := range m.kps {
		if _, ok := m.pools[k.Pool]; !ok {
			return violation("KeyPackage %s in unknown pool %s", k.Ref, k.Pool)
		}
	}
	return nil
}

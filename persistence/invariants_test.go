package persistence

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/pool"
)

// storeProblems checks what a crash must never break, reading every record (tests
// only): the journal is 1..Meta.Seq without gaps or repeated event ids, every dedup id
// points at its journal entry, pool counters match the pool's records, the expiry index
// and the records agree (each record has one entry, at its deadline), pool.CheckPool
// holds for every pool, and every live KeyPackage has its private keys (decrypting to
// the bundle the test stored) while deleted ones have none. For the real core's records.
func storeProblems(s *Store) []string {
	var bad []string
	add := func(f string, a ...any) { bad = append(bad, fmt.Sprintf(f, a...)) }
	meta, err := s.Meta()
	if err != nil {
		return []string{err.Error()}
	}
	ids := map[string]uint64{}
	next := uint64(1)
	if err := s.Journal(0, 0, func(seq uint64, ev events.Event) error {
		if seq != next {
			add("journal: seq %d follows %d", seq, next-1)
		}
		next = seq + 1
		if prev, dup := ids[ev.ID]; dup {
			add("journal: event %s at %d and %d", ev.ID, prev, seq)
		}
		ids[ev.ID] = seq
		return nil
	}); err != nil {
		add("journal: %v", err)
	}
	if next-1 != meta.Seq {
		add("journal ends at %d, Meta.Seq is %d", next-1, meta.Seq)
	}
	index := map[string]time.Time{}
	s.View(func(v pool.View) error {
		tv := v.(*txView)
		tv.seen.ForEach(func(k, val []byte) error {
			if ids[string(k)] != seqOf(val) {
				add("seen %s → %d, journal has it at %d", k, seqOf(val), ids[string(k)])
			}
			return nil
		})
		if n := tv.seen.Stats().KeyN; n != len(ids) {
			add("seen holds %d ids, journal %d", n, len(ids))
		}
		return v.Due(time.Unix(1<<40, 0), func(e pool.IndexEntry) bool {
			if _, dup := index[e.Ref]; dup {
				add("index: %s twice", e.Ref)
			}
			index[e.Ref] = e.At
			return true
		})
	})
	pools, err := s.Pools()
	if err != nil {
		return append(bad, err.Error())
	}
	nkp := 0
	for _, p := range pools {
		var kps []pool.KeyPackage
		s.KeyPackages(p.ID, func(kp pool.KeyPackage) bool {
			nkp++
			kps = append(kps, kp)
			if at, ok := index[kp.Ref]; !ok || !at.Equal(kp.Deadline) {
				add("kp %s: index %v (%v), record deadline %v", kp.Ref, at, ok, kp.Deadline)
			}
			sec, err := s.Secret(kp.Ref)
			switch {
			case kp.State.Live() && (err != nil || !bytes.Equal(sec, secretOf(kp.Ref))):
				add("kp %s %s: private keys %v", kp.Ref, kp.State, err)
			case kp.State == fsm.Deleted && err == nil:
				add("kp %s deleted but its private keys remain", kp.Ref)
			}
			return true
		})
		if err := pool.CheckPool(p, meta.Time, slices.Values(kps)); err != nil {
			add("%v", err)
		}
		if sec, err := s.Secret(PoolSecretID(p.ID)); err != nil || !bytes.Equal(sec, secretOf(PoolSecretID(p.ID))) {
			add("pool %s: signature key %v", p.ID, err)
		}
	}
	if nkp != len(index) {
		add("index holds %d entries for %d records", len(index), nkp)
	}
	return bad
}

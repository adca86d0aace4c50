package pool

import (
	"fmt"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
)

func tick(id string, at time.Time) events.Event {
	return events.Event{ID: id, Type: events.TypeExpiryTick, Time: at}
}

// stepApply runs one input through the core into m and reports whether it was a duplicate.
func stepApply(t *testing.T, m *MemStore, in events.Event) bool {
	t.Helper()
	r, err := (&Core{}).Step(m, in)
	if err != nil {
		t.Fatalf("%s: %v", in.ID, err)
	}
	m.Apply(r)
	return r.Duplicate
}

func seen(m *MemStore, id string) bool { _, ok, _ := m.Seen("", id); return ok }

// The retention rule is persistence's: ids of inputs whose event time is more than the
// retention before the latest event time are forgotten, in sequence order, stopping
// at the first input still retained.
func TestMemStoreJournalRetention(t *testing.T) {
	m := NewMemStore()
	m.SetJournalRetention(24 * time.Hour)
	for i := range 5 {
		stepApply(t, m, tick(fmt.Sprint("a", i), start.Add(time.Duration(i)*time.Hour)))
	}
	stepApply(t, m, tick("recent", start.Add(20*time.Hour)))
	stepApply(t, m, tick("late-old", start.Add(time.Hour))) // an old event time after a recent one
	for i := range 5 {
		if !seen(m, fmt.Sprint("a", i)) {
			t.Fatalf("a%d forgotten while everything is within 24h of %s", i, start.Add(20*time.Hour))
		}
	}
	stepApply(t, m, tick("now", start.Add(30*time.Hour)))
	for i := range 5 {
		if seen(m, fmt.Sprint("a", i)) {
			t.Errorf("a%d (event time %dh) kept at 30h with a 24h retention", i, i)
		}
	}
	// "recent" is retained, so pruning stops there and keeps "late-old" behind it.
	for _, id := range []string{"recent", "late-old", "now"} {
		if !seen(m, id) {
			t.Errorf("%s forgotten", id)
		}
	}
	if m.SeenLen() != 3 || len(m.journal) != 3 {
		t.Fatalf("%d ids, %d journaled inputs; want 3 and 3", m.SeenLen(), len(m.journal))
	}
	// A forgotten id is applied again; a retained one is still a duplicate.
	if stepApply(t, m, tick("a0", start.Add(30*time.Hour))) {
		t.Error("a0 was forgotten but still deduplicated")
	}
	if !stepApply(t, m, tick("recent", start.Add(30*time.Hour))) {
		t.Error("recent was not deduplicated")
	}
}

// A re-applied id is kept when the older input that first applied it is pruned.
func TestMemStoreRetentionKeepsReappliedID(t *testing.T) {
	m := NewMemStore()
	m.SetJournalRetention(time.Hour)
	stepApply(t, m, tick("x", start))
	stepApply(t, m, tick("y", start.Add(2*time.Hour))) // prunes x
	if seen(m, "x") {
		t.Fatal("x kept past the retention")
	}
	stepApply(t, m, tick("x", start.Add(2*time.Hour)))
	stepApply(t, m, tick("z", start.Add(2*time.Hour+30*time.Minute)))
	if !seen(m, "x") {
		t.Fatal("x re-applied at 2h was forgotten at 2h30 with a 1h retention")
	}
}

// Without a retention every id stays, as with persistence's default.
func TestMemStoreKeepsIDsByDefault(t *testing.T) {
	m := NewMemStore()
	for i := range 100 {
		stepApply(t, m, tick(fmt.Sprint("t", i), start.Add(time.Duration(i)*24*time.Hour)))
	}
	if m.SeenLen() != 100 || m.journal != nil {
		t.Fatalf("%d ids, journal %d; want 100 and none", m.SeenLen(), len(m.journal))
	}
	if !stepApply(t, m, tick("t0", start.Add(100*24*time.Hour))) {
		t.Fatal("t0 applied twice")
	}
}

// Memory follows the retention, not the number of inputs.
func TestMemStoreRetentionBounded(t *testing.T) {
	m := NewMemStore()
	m.SetJournalRetention(time.Hour)
	maxCap := 0
	for i := range 20_000 {
		stepApply(t, m, tick(fmt.Sprint("t", i), start.Add(time.Duration(i)*time.Minute)))
		maxCap = max(maxCap, cap(m.journal))
	}
	if m.SeenLen() != 61 || len(m.journal) != 61 {
		t.Fatalf("%d ids and %d journaled inputs after 20 000 one-minute ticks, want 61 (one hour's)", m.SeenLen(), len(m.journal))
	}
	if maxCap > 1024 {
		t.Fatalf("journal queue grew to capacity %d for 61 retained inputs", maxCap)
	}
}

// The erased set forgets a KeyPackage with its tombstone.
func TestMemStoreForgetsErasedOnPurge(t *testing.T) {
	m := NewMemStore()
	ref := refOf("k1")
	m.Apply(Ready{Seq: 1, Input: tick("a", start), Meta: Meta{Seq: 1, Time: start},
		KeyPackages: []KeyPackage{{Ref: ref, Pool: "p1", State: "deleted", Deadline: start.Add(time.Hour)}},
		IndexPut:    []IndexEntry{{At: start.Add(time.Hour), Ref: ref}}, Erase: []string{ref}})
	if !m.Erased(ref) {
		t.Fatal("erase not recorded")
	}
	m.Apply(Ready{Seq: 2, Input: tick("b", start.Add(time.Hour)), Meta: Meta{Seq: 2, Time: start.Add(time.Hour)},
		Purge: []string{ref}, IndexDel: []IndexEntry{{At: start.Add(time.Hour), Ref: ref}}})
	if m.Erased(ref) || len(m.erased) != 0 || len(m.kps) != 0 || m.IndexLen() != 0 {
		t.Fatalf("after purge: erased %v (%d refs), %d records, %d index entries", m.Erased(ref), len(m.erased), len(m.kps), m.IndexLen())
	}
}

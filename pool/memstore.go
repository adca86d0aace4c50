package pool

import (
	"maps"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
)

// MemStore is an in-memory View for tests, replay and benchmarks. Apply writes a Ready
// exactly as the persistence layer does: puts and deletes, no logic.
//
// Event ids are remembered for deduplication under the persistence layer's journal
// retention rule (see SetJournalRetention); by default, like persistence with
// JournalRetention 0, every id is kept.
type MemStore struct {
	meta   Meta
	pools  map[string]Pool
	kps    map[string]KeyPackage
	index  orderedIndex
	seen   map[seenKey]seenEntry // (pool, event id) → the input that applied it
	erased map[string]bool       // stored KeyPackages whose private keys were ordered erased

	retention time.Duration
	journal   []journaled // applied inputs still retained, in seq order (only with a retention)
}

type seenKey struct{ pool, id string }

type seenEntry struct {
	seq    uint64
	digest events.Digest
}

// journaled is what the retention rule needs of one applied input.
type journaled struct {
	seq uint64
	key seenKey
	at  time.Time // the event's time, as journaled
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{pools: map[string]Pool{}, kps: map[string]KeyPackage{}, seen: map[seenKey]seenEntry{}, erased: map[string]bool{}}
}

// SetJournalRetention makes the store forget event ids as persistence does with
// Options.JournalRetention = d: after each Apply, applied inputs are visited in sequence
// order and dropped while their event time is more than d before the store's time
// (Meta.Time, the largest event time seen); the first one still inside d stops the
// pruning, so what is kept is a contiguous suffix. A dropped input's id is forgotten
// unless a later input re-applied it. A duplicate of a forgotten id is then applied
// again, exactly as it would be by a worker configured with the same retention. d <= 0
// keeps every id (the default). Call it before the first Apply.
func (m *MemStore) SetJournalRetention(d time.Duration) { m.retention = d }

var _ View = (*MemStore)(nil)

// Meta implements View.
func (m *MemStore) Meta() (Meta, error) { return m.meta, nil }

// Pool implements View.
func (m *MemStore) Pool(id string) (Pool, bool, error) {
	p, ok := m.pools[id]
	return p, ok, nil
}

// KeyPackage implements View.
func (m *MemStore) KeyPackage(ref string) (KeyPackage, bool, error) {
	k, ok := m.kps[ref]
	return k, ok, nil
}

// Due implements View.
func (m *MemStore) Due(until time.Time, fn func(IndexEntry) bool) error {
	m.index.ascend(until, fn)
	return nil
}

// PoolRefs implements RefLister by scanning the store (tests and replay only).
func (m *MemStore) PoolRefs(pool string, fn func(ref string) bool) error {
	for _, ref := range slices.Sorted(maps.Keys(m.kps)) {
		if m.kps[ref].Pool == pool && !fn(ref) {
			return nil
		}
	}
	return nil
}

// Seen implements View.
func (m *MemStore) Seen(pool, id string) (events.Digest, bool, error) {
	s, ok := m.seen[seenKey{pool, id}]
	return s.digest, ok, nil
}

// Apply writes r. A duplicate changes nothing.
//
// The store keeps r's records as they are, maps and byte slices included, without
// copying: Step never writes to what it read from a View (it copies a pool's Expiries
// before changing them), and callers must not change a Ready after applying it.
func (m *MemStore) Apply(r Ready) {
	if r.Duplicate {
		return
	}
	key := seenKey{r.Input.Pool, r.Input.ID}
	if r.Input.ID != "" {
		m.seen[key] = seenEntry{seq: r.Seq, digest: r.Input.Digest()}
	}
	m.meta = r.Meta
	for _, p := range r.Pools {
		m.pools[p.ID] = p
	}
	for _, k := range r.KeyPackages {
		m.kps[k.Ref] = k
	}
	for _, ref := range r.Purge {
		delete(m.kps, ref)
		delete(m.erased, ref) // nothing left to ask about: the record is gone
	}
	for _, e := range r.IndexDel {
		m.index.del(e)
	}
	for _, e := range r.IndexPut {
		m.index.put(e)
	}
	for _, ref := range r.Erase {
		m.erased[ref] = true
	}
	if m.retention > 0 {
		m.journal = append(m.journal, journaled{seq: r.Seq, key: key, at: r.Input.Time})
		m.prune()
	}
}

// prune applies the retention rule (see SetJournalRetention).
func (m *MemStore) prune() {
	if m.meta.Time.IsZero() {
		return
	}
	cutoff := m.meta.Time.Add(-m.retention)
	n := 0
	for _, j := range m.journal {
		if !j.at.Before(cutoff) {
			break
		}
		if s, ok := m.seen[j.key]; ok && s.seq == j.seq {
			delete(m.seen, j.key)
		}
		n++
	}
	if n == 0 {
		return
	}
	// Drop the pruned prefix; copy down when it is most of the backing array, so the
	// queue's memory follows what is retained rather than the log's length.
	m.journal = m.journal[n:]
	if cap(m.journal) > 64 && len(m.journal) < cap(m.journal)/4 {
		m.journal = slices.Clone(m.journal)
	}
}

// Pools returns every pool, by id.
func (m *MemStore) Pools() []Pool {
	var out []Pool
	for _, id := range slices.Sorted(maps.Keys(m.pools)) {
		out = append(out, m.pools[id])
	}
	return out
}

// KeyPackages returns a pool's stored KeyPackages (tombstones included), by ref. It
// scans the store: for tests and tools, never for Step.
func (m *MemStore) KeyPackages(pool string) []KeyPackage {
	var out []KeyPackage
	for _, ref := range slices.Sorted(maps.Keys(m.kps)) {
		if k := m.kps[ref]; k.Pool == pool {
			out = append(out, k)
		}
	}
	return out
}

// Erased reports whether the private keys of a stored KeyPackage were ordered erased
// (false once its tombstone is purged: the store keeps nothing of it).
func (m *MemStore) Erased(ref string) bool { return m.erased[ref] }

// IndexLen is the number of expiry index entries.
func (m *MemStore) IndexLen() int { return m.index.n }

// SeenLen is the number of event ids remembered for deduplication.
func (m *MemStore) SeenLen() int { return len(m.seen) }

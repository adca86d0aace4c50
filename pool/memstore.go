package pool

import (
	"maps"
	"slices"
	"time"
)

// MemStore is an in-memory View for tests, replay and benchmarks. Apply writes a Ready
// exactly as the persistence layer does: puts and deletes, no logic.
type MemStore struct {
	meta   Meta
	pools  map[string]Pool
	kps    map[string]KeyPackage
	index  orderedIndex
	seen   map[string]bool
	erased map[string]bool
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{pools: map[string]Pool{}, kps: map[string]KeyPackage{}, seen: map[string]bool{}, erased: map[string]bool{}}
}

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

// Seen implements View.
func (m *MemStore) Seen(id string) (bool, error) { return m.seen[id], nil }

// Apply writes r. A duplicate changes nothing.
func (m *MemStore) Apply(r Ready) {
	if r.Duplicate {
		return
	}
	m.seen[r.Input.ID] = true
	m.meta = r.Meta
	for _, p := range r.Pools {
		p.Expiries = maps.Clone(p.Expiries)
		m.pools[p.ID] = p
	}
	for _, k := range r.KeyPackages {
		m.kps[k.Ref] = k
	}
	for _, ref := range r.Purge {
		delete(m.kps, ref)
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

// Erased reports whether the private keys of ref were ordered erased.
func (m *MemStore) Erased(ref string) bool { return m.erased[ref] }

// IndexLen is the number of expiry index entries.
func (m *MemStore) IndexLen() int { return m.index.n }

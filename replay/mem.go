package replay

import (
	"context"
	"errors"
	"maps"
	"slices"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// MemTarget replays into a pool.MemStore: the fast path, used without --data, by
// --verify and by the golden tests.
type MemTarget struct {
	Core  *pool.Core
	Store *pool.MemStore
	// refs lists each pool's KeyPackage refs, kept from the Readys, so a dump costs
	// O(KeyPackages) and not a scan of the store per pool.
	refs map[string]map[string]struct{}
}

// NewMem returns an empty in-memory target.
func NewMem(core *pool.Core) *MemTarget {
	return &MemTarget{Core: core, Store: pool.NewMemStore(), refs: map[string]map[string]struct{}{}}
}

// Step runs the core on the store and applies what it returns.
func (m *MemTarget) Step(_ context.Context, ev events.Event) (pool.Ready, error, error) {
	r, err := m.Core.Step(m.Store, ev)
	if err != nil {
		if errors.Is(err, pool.ErrRejected) {
			return pool.Ready{}, err, nil
		}
		return pool.Ready{}, nil, err
	}
	// Look up the pools of purged refs before Apply removes them.
	for _, ref := range r.Purge {
		if k, ok, _ := m.Store.KeyPackage(ref); ok {
			delete(m.refs[k.Pool], ref)
		}
	}
	m.Store.Apply(r)
	for _, k := range r.KeyPackages {
		set := m.refs[k.Pool]
		if set == nil {
			set = map[string]struct{}{}
			m.refs[k.Pool] = set
		}
		set[k.Ref] = struct{}{}
	}
	return r, nil, nil
}

// JournalEntry: a memory target always starts empty, so there is nothing to resume.
func (m *MemTarget) JournalEntry(uint64) (events.Event, bool, error) {
	return events.Event{}, false, nil
}

// Meta, Pools and KeyPackages make the target a Source.
func (m *MemTarget) Meta() (pool.Meta, error)    { return m.Store.Meta() }
func (m *MemTarget) Pools() ([]pool.Pool, error) { return m.Store.Pools(), nil }
func (m *MemTarget) KeyPackages(id string, fn func(pool.KeyPackage) error) error {
	for _, ref := range slices.Sorted(maps.Keys(m.refs[id])) {
		if k, ok, _ := m.Store.KeyPackage(ref); ok {
			if err := fn(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close does nothing.
func (m *MemTarget) Close() error { return nil }

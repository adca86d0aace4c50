package pool

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// txn is one Step's overlay on a View: records read are copied, changed in place and
// written back as a Ready. Nothing reaches the View; a rejected input just drops it.
type txn struct {
	v    View
	in   events.Event
	seq  uint64
	now  time.Time
	meta Meta

	pools     map[string]*Pool
	before    map[string]*events.Status // status of each pool as loaded (nil: new pool)
	kps       map[string]*KeyPackage
	deadlines map[string]time.Time // index key of each loaded KeyPackage as stored
	stored    map[string]bool      // the KeyPackage exists in the View
	purged    map[string]bool

	erase    []string
	outbox   []events.Outbound
	generate []GenerateRequest
	trans    []events.Transition
	err      error
}

func newTxn(v View, in events.Event, meta Meta, now time.Time) *txn {
	return &txn{
		v: v, in: in, meta: meta, seq: meta.Seq + 1, now: now,
		pools: map[string]*Pool{}, before: map[string]*events.Status{},
		kps: map[string]*KeyPackage{}, deadlines: map[string]time.Time{},
		stored: map[string]bool{}, purged: map[string]bool{},
	}
}

// pool loads a pool into the overlay (copying what a View might share).
func (t *txn) pool(id string) (*Pool, bool, error) {
	if p, ok := t.pools[id]; ok {
		return p, true, nil
	}
	p, ok, err := t.v.Pool(id)
	if err != nil || !ok {
		return nil, false, err
	}
	p.Expiries = maps.Clone(p.Expiries)
	p.Extra = maps.Clone(p.Extra)
	p.SignatureKey = slices.Clone(p.SignatureKey)
	t.pools[id] = &p
	st := t.status(&p)
	t.before[id] = &st
	return &p, true, nil
}

func (t *txn) addPool(p *Pool) { t.pools[p.ID] = p; t.before[p.ID] = nil }

// kp loads a KeyPackage into the overlay.
func (t *txn) kp(ref string) (*KeyPackage, bool, error) {
	if t.purged[ref] {
		return nil, false, nil
	}
	if k, ok := t.kps[ref]; ok {
		return k, true, nil
	}
	k, ok, err := t.v.KeyPackage(ref)
	if err != nil || !ok {
		return nil, false, err
	}
	k.KeyPackage = slices.Clone(k.KeyPackage)
	t.kps[ref] = &k
	t.deadlines[ref] = k.Deadline
	t.stored[ref] = true
	return &k, true, nil
}

func (t *txn) addKP(k *KeyPackage) { t.kps[k.Ref] = k }

func (t *txn) purge(k *KeyPackage) { t.purged[k.Ref] = true }

// emit appends an outbox message with a deterministic id "<seq>-<n>".
func (t *txn) emit(kind events.Kind, pool string, body any) {
	b, err := json.Marshal(body)
	if err != nil { // plain structs: cannot fail, but never panic in the core
		t.err = fmt.Errorf("pool: encoding %s message: %w", kind, err)
		return
	}
	t.outbox = append(t.outbox, events.Outbound{ID: fmt.Sprintf("%d-%d", t.seq, len(t.outbox)+1), Kind: kind, Pool: pool, Body: b})
}

func (t *txn) alert(pool, kind, detail string) {
	t.emit(events.KindAlert, pool, events.Alert{Pool: pool, Kind: kind, Detail: detail, Time: t.now})
}

func (t *txn) transition(k *KeyPackage, from, to fsm.State, ev string) {
	tr := events.Transition{Pool: k.Pool, Ref: k.Ref, From: string(from), To: string(to), Event: ev, EventID: t.in.ID, Time: t.now}
	t.trans = append(t.trans, tr)
	t.emit(events.KindTransition, k.Pool, tr)
}

func (t *txn) eraseKeys(ref string) {
	if !slices.Contains(t.erase, ref) {
		t.erase = append(t.erase, ref)
	}
}

// ready turns the overlay into a write set: full records, index changes, deletions.
func (t *txn) ready() Ready {
	r := Ready{
		Seq: t.seq, Input: t.in, Meta: Meta{Seq: t.seq, Time: t.now},
		Erase: t.erase, Outbox: t.outbox, Generate: t.generate, Transitions: t.trans,
	}
	for _, id := range slices.Sorted(maps.Keys(t.pools)) {
		r.Pools = append(r.Pools, *t.pools[id])
	}
	for _, ref := range slices.Sorted(maps.Keys(t.kps)) {
		k := t.kps[ref]
		old, had := t.deadlines[ref]
		if t.purged[ref] {
			if t.stored[ref] {
				r.Purge = append(r.Purge, ref)
				r.IndexDel = append(r.IndexDel, IndexEntry{At: old, Ref: ref})
			}
			continue
		}
		r.KeyPackages = append(r.KeyPackages, *k)
		if had && old.Equal(k.Deadline) {
			continue
		}
		if had {
			r.IndexDel = append(r.IndexDel, IndexEntry{At: old, Ref: ref})
		}
		r.IndexPut = append(r.IndexPut, IndexEntry{At: k.Deadline, Ref: ref})
	}
	return r
}

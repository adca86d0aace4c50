package persistence

import (
	"bytes"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// The committer is a two-stage pipeline. The step stage runs the core for a batch on a
// view made of a read snapshot of the committed file plus an overlay of the writes of
// the batches stepped but not yet committed; the commit stage writes each batch in one
// bbolt transaction and fsyncs it. So the core works on batch k+1 while batch k is
// being written and synced, and a step sees exactly what it would see inside the write
// transaction: every earlier input's effect.

// op is one overlay opinion about a key: a value, or a deletion, made by batch `batch`.
type op[T any] struct {
	v     T
	del   bool
	batch uint64
}

// overlay holds the latest opinion per key of every batch not yet known to be in the
// snapshot the step stage reads.
type overlay struct {
	kps     map[string]op[pool.KeyPackage]
	pools   map[string]op[pool.Pool]
	secrets map[string]op[[]byte] // sealed
	seen    map[string]op[[]byte] // seenKey → seenValue
	expiry  map[string]op[struct{}]
	due     []string              // expiry keys put in the overlay, unordered (may repeat)
	dueMin  string                // the smallest key in due: Due skips the walk when it is not due
	outbox  map[string]op[uint64] // outbound id → outbox key
}

func newOverlay() *overlay {
	return &overlay{
		kps: map[string]op[pool.KeyPackage]{}, pools: map[string]op[pool.Pool]{},
		secrets: map[string]op[[]byte]{}, seen: map[string]op[[]byte]{},
		expiry: map[string]op[struct{}]{}, outbox: map[string]op[uint64]{},
	}
}

// maxPoolCache bounds the decoded pool records kept between batches: a busy pool is
// decoded once, and a worker with very many pools does not hold them all.
const maxPoolCache = 4096

// trim forgets the opinions of batches up to `committed`: the snapshot now has them.
// Committed pool records move to the decoded cache.
func (o *overlay) trim(committed uint64, cache map[string]pool.Pool) {
	if len(cache) > maxPoolCache {
		clear(cache)
	}
	for k, e := range o.pools {
		if e.batch <= committed {
			cache[k] = e.v
			delete(o.pools, k)
		}
	}
	trimMap(o.kps, committed)
	trimMap(o.secrets, committed)
	trimMap(o.seen, committed)
	trimMap(o.expiry, committed)
	trimMap(o.outbox, committed)
	o.due = slices.DeleteFunc(o.due, func(k string) bool { _, ok := o.expiry[k]; return !ok })
	o.dueMin = ""
	if len(o.due) > 0 {
		o.dueMin = slices.Min(o.due)
	}
}

func trimMap[T any](m map[string]op[T], committed uint64) {
	for k, e := range m {
		if e.batch <= committed {
			delete(m, k)
		}
	}
}

func (o *overlay) putExpiry(k string, batch uint64) {
	if e, ok := o.expiry[k]; !ok || e.del {
		if len(o.due) == 0 || k < o.dueMin {
			o.dueMin = k
		}
		o.due = append(o.due, k)
	}
	o.expiry[k] = op[struct{}]{batch: batch}
}

// ovView is the step stage's pool.View: overlay first, then the read snapshot.
type ovView struct {
	r      *txView
	ov     *overlay
	meta   *pool.Meta
	cache  map[string]pool.Pool // committed pool records, decoded
	batch  uint64
	outSeq *uint64 // last outbox key assigned
}

// outboxKey assigns the outbox key of message id: the key of a message with that id
// still queued, else the next one.
func (v *ovView) outboxKey(id string) uint64 {
	if e, ok := v.ov.outbox[id]; ok && !e.del {
		return e.v
	}
	if _, ok := v.ov.outbox[id]; !ok {
		if k := v.r.outboxIDs.Get([]byte(id)); k != nil {
			return seqOf(k)
		}
	}
	*v.outSeq++
	v.ov.outbox[id] = op[uint64]{v: *v.outSeq, batch: v.batch}
	return *v.outSeq
}

var _ pool.View = (*ovView)(nil)

func (v *ovView) Meta() (pool.Meta, error) { return *v.meta, nil }

// Pool shares maps and slices with the overlay and cache: the core copies what it
// changes (pool.txn.pool).
func (v *ovView) Pool(id string) (pool.Pool, bool, error) {
	if e, ok := v.ov.pools[id]; ok {
		return e.v, !e.del, nil
	}
	if p, ok := v.cache[id]; ok {
		return p, true, nil
	}
	p, ok, err := v.r.Pool(id)
	if ok && err == nil {
		v.cache[id] = p
	}
	return p, ok, err
}

func (v *ovView) KeyPackage(ref string) (pool.KeyPackage, bool, error) {
	if e, ok := v.ov.kps[ref]; ok {
		if e.del {
			return pool.KeyPackage{}, false, nil
		}
		return e.v, true, nil
	}
	return v.r.KeyPackage(ref)
}

// hasKP reports whether a record exists for ref, without decoding it.
func (v *ovView) hasKP(ref string) bool {
	if e, ok := v.ov.kps[ref]; ok {
		return !e.del
	}
	return v.r.kps.Get([]byte(ref)) != nil
}

func (v *ovView) Seen(poolID, id string) (events.Digest, bool, error) {
	if e, ok := v.ov.seen[string(seenKey(poolID, id))]; ok {
		_, d, _ := parseSeen(e.v)
		return d, !e.del, nil
	}
	return v.r.Seen(poolID, id)
}

func (v *ovView) hasSecret(id string) bool {
	if e, ok := v.ov.secrets[id]; ok {
		return !e.del
	}
	return v.r.hasSecret(id)
}

func (v *ovView) sealed(id string) []byte {
	if e, ok := v.ov.secrets[id]; ok {
		if e.del {
			return nil
		}
		return e.v
	}
	return v.r.secrets.Get([]byte(id))
}

// Due merges the snapshot's due entries with the overlay's, dropping those the
// overlay deleted. The overlay holds only recent puts, which are rarely due: the core
// asks on every step, so the puts are walked only when the smallest of them is due
// (every key sorts at or after dueMin, and so does its time prefix).
func (v *ovView) Due(until time.Time, fn func(pool.IndexEntry) bool) error {
	end := timeKey(until)
	isDue := func(k string) bool { return bytes.Compare([]byte(k[:min(len(k), timeKeyLen)]), end) <= 0 }
	var extra []string // overlay puts that are due: usually none, they are recent
	if len(v.ov.due) > 0 && isDue(v.ov.dueMin) {
		for _, k := range v.ov.due {
			if isDue(k) {
				if e, ok := v.ov.expiry[k]; ok && !e.del {
					extra = append(extra, k)
				}
			}
		}
	}
	slices.Sort(extra)
	extra = slices.Compact(extra)
	emit := func(k string) (bool, error) {
		at, ref, ok := parseIndexKey([]byte(k))
		if !ok {
			return false, errMalformedIndex(k)
		}
		return fn(pool.IndexEntry{At: at, Ref: ref}), nil
	}
	c := v.r.expiry.Cursor()
	bk, _ := c.First()
	for {
		var next string
		switch {
		case bk != nil && bytes.Compare(bk[:min(len(bk), timeKeyLen)], end) > 0:
			bk = nil
			continue
		case bk == nil && len(extra) == 0:
			return nil
		case bk == nil || (len(extra) > 0 && extra[0] < string(bk)):
			next, extra = extra[0], extra[1:]
		default:
			next = string(bk)
			bk, _ = c.Next()
			if len(extra) > 0 && extra[0] == next {
				extra = extra[1:] // in both: once
			}
			if e, ok := v.ov.expiry[next]; ok && e.del {
				continue
			}
		}
		more, err := emit(next)
		if err != nil || !more {
			return err
		}
	}
}

package persistence

import (
	"encoding/json"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// batchWrites is what the commit stage writes for one batch: the last opinion per key
// of the batch's accepted steps, plus the journal and outbox appends in order.
type batchWrites struct {
	kps     map[string][]byte // JSON record; nil: purge
	poolKPs map[string]bool   // per-pool index key: put (true) or delete
	pools   map[string][]byte
	expiry  map[string]bool // index key: put (true) or delete
	secrets map[string][]byte
	seen    map[string]uint64
	journal []journalEntry
	outbox  []outboxEntry
	outSeq  uint64 // the outbox bucket's sequence after this batch
	meta    []byte
	acks    []string
}

// Everything is encoded by the step stage, which has time to spare while the commit
// stage writes and syncs: the commit stage only puts bytes, as fast as bbolt can.
type journalEntry struct {
	seq  uint64
	data []byte
}

// outboxEntry carries the key the step stage assigned: a new one from its counter, or
// the key of a message with the same id still queued (replaced in place).
type outboxEntry struct {
	id   string
	key  uint64
	data []byte
}

func newBatchWrites() *batchWrites {
	return &batchWrites{
		kps: map[string][]byte{}, poolKPs: map[string]bool{}, pools: map[string][]byte{},
		expiry: map[string]bool{}, secrets: map[string][]byte{}, seen: map[string]uint64{},
	}
}

func (w *batchWrites) empty() bool {
	return len(w.kps)+len(w.poolKPs)+len(w.pools)+len(w.expiry)+len(w.secrets)+len(w.seen)+
		len(w.journal)+len(w.outbox)+len(w.acks)+len(w.meta) == 0
}

// validate checks, before anything of this step is recorded, that the Ready can be
// stored: the sequence follows the last one and no live KeyPackage lacks its keys.
func (v *ovView) validate(in Input, r pool.Ready, allowMissing bool) error {
	if r.Seq != 0 && r.Seq != v.meta.Seq+1 {
		return &InputError{EventID: r.Input.ID, Err: ErrSequence,
			Reason: fmt.Sprintf("step assigned %d, last applied is %d", r.Seq, v.meta.Seq)}
	}
	if allowMissing {
		return nil
	}
	erased := make(map[string]bool, len(r.Erase))
	for _, ref := range r.Erase {
		erased[ref] = true
	}
	for _, kp := range r.KeyPackages {
		if !kp.State.Live() { // live ones may be handed out or taken: keys required
			continue
		}
		_, given := in.Secrets[kp.Ref]
		if erased[kp.Ref] || (!given && !v.hasSecret(kp.Ref)) {
			return &InputError{EventID: in.Event.ID, Ref: kp.Ref, Err: ErrMissingSecret,
				Reason: fmt.Sprintf("KeyPackage would be %s without stored private keys", kp.State)}
		}
	}
	return nil
}

// checkKeys refuses, before anything is recorded, a step whose keys bbolt would refuse
// at commit time, so that a bad input cannot fail the other inputs of its batch.
func checkKeys(in Input, r pool.Ready) error {
	check := func(what, k string) error {
		switch {
		case k == "":
			return fmt.Errorf("%s: %w", what, berrors.ErrKeyRequired)
		case len(k)+timeKeyLen+65 > bolt.MaxKeySize:
			return fmt.Errorf("%s: %w", what, berrors.ErrKeyTooLarge)
		}
		return nil
	}
	for id := range in.Secrets {
		if err := check("secret id", id); err != nil {
			return err
		}
	}
	for _, kp := range r.KeyPackages {
		if err := check("keypackage ref", kp.Ref); err != nil {
			return err
		}
		if err := check("keypackage pool", kp.Pool); err != nil {
			return err
		}
	}
	for _, p := range r.Pools {
		if err := check("pool id", p.ID); err != nil {
			return err
		}
	}
	for _, o := range r.Outbox {
		if err := check("outbound id", o.ID); err != nil {
			return err
		}
	}
	if r.Seq != 0 {
		return check("event id", r.Input.ID)
	}
	return nil
}

// record adds one accepted step to the overlay (for the steps after it) and to the
// batch (for the commit stage). Order matters: secrets first, so that an erasure in the
// same Ready wins; index deletes before puts, so a moved entry ends up present.
func (v *ovView) record(w *batchWrites, seal *sealer, in Input, r pool.Ready) error {
	o, b := v.ov, v.batch
	for id, plain := range in.Secrets {
		sealed, err := seal.seal([]byte(id), plain)
		if err != nil {
			return err
		}
		w.secrets[id] = sealed
		o.secrets[id] = op[[]byte]{v: sealed, batch: b}
	}
	for _, kp := range r.KeyPackages {
		data, err := json.Marshal(kp)
		if err != nil {
			return fmt.Errorf("keypackage %s: %w", kp.Ref, err)
		}
		if !v.hasKP(kp.Ref) { // new: add it to its pool's index
			w.poolKPs[string(poolKPKey(kp.Pool, kp.Ref))] = true
		}
		w.kps[kp.Ref] = data
		o.kps[kp.Ref] = op[pool.KeyPackage]{v: kp, batch: b}
	}
	for _, ref := range r.Purge {
		kp, ok, err := v.KeyPackage(ref)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		w.poolKPs[string(poolKPKey(kp.Pool, ref))] = false
		w.kps[ref], w.secrets[ref] = nil, nil
		o.kps[ref] = op[pool.KeyPackage]{del: true, batch: b}
		o.secrets[ref] = op[[]byte]{del: true, batch: b}
	}
	for _, e := range r.IndexDel {
		k := string(indexKey(e.At, e.Ref))
		w.expiry[k] = false
		o.expiry[k] = op[struct{}]{del: true, batch: b}
	}
	for _, e := range r.IndexPut {
		k := string(indexKey(e.At, e.Ref))
		w.expiry[k] = true
		o.putExpiry(k, b)
	}
	for _, ref := range r.Erase {
		w.secrets[ref] = nil
		o.secrets[ref] = op[[]byte]{del: true, batch: b}
	}
	for _, p := range r.Pools {
		data, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("pool %s: %w", p.ID, err)
		}
		w.pools[p.ID] = data
		o.pools[p.ID] = op[pool.Pool]{v: p, batch: b}
	}
	for _, m := range r.Outbox {
		w.outbox = append(w.outbox, outboxEntry{m.ID, v.outboxKey(m.ID), encodeOutbound(m)})
	}
	w.outSeq = *v.outSeq
	if r.Seq != 0 {
		if r.Input.ID != "" {
			w.seen[r.Input.ID] = r.Seq
			o.seen[r.Input.ID] = op[uint64]{v: r.Seq, batch: b}
		}
		data, err := json.Marshal(r.Input)
		if err != nil {
			return fmt.Errorf("journal entry %d: %w", r.Seq, err)
		}
		w.journal = append(w.journal, journalEntry{r.Seq, data})
	}
	if r.Seq != 0 || r.Meta != (pool.Meta{}) {
		data, err := json.Marshal(r.Meta)
		if err != nil {
			return err
		}
		*v.meta, w.meta = r.Meta, data
	}
	return nil
}

// writeBatch is the commit stage's work: plain puts and deletes, then outbox acks and
// journal pruning.
func writeBatch(tx *bolt.Tx, w *batchWrites, retention int64, pruneLimit int) error {
	v := newTxView(tx)
	for id, sealed := range w.secrets {
		if err := putOrDelete(v.secrets, []byte(id), sealed, sealed != nil); err != nil {
			return err
		}
	}
	for ref, data := range w.kps {
		if err := putOrDelete(v.kps, []byte(ref), data, data != nil); err != nil {
			return err
		}
	}
	for k, put := range w.poolKPs {
		if err := putOrDelete(v.poolKPs, []byte(k), nil, put); err != nil {
			return err
		}
	}
	for k, put := range w.expiry {
		if err := putOrDelete(v.expiry, []byte(k), nil, put); err != nil {
			return err
		}
	}
	for id, data := range w.pools {
		if err := v.pools.Put([]byte(id), data); err != nil {
			return err
		}
	}
	for id, seq := range w.seen {
		if err := v.seen.Put([]byte(id), seqKey(seq)); err != nil {
			return err
		}
	}
	for _, j := range w.journal {
		if err := v.journal.Put(seqKey(j.seq), j.data); err != nil {
			return err
		}
	}
	for _, o := range w.outbox {
		// Both puts also for a replacement: an ack may have removed the id meanwhile.
		k := seqKey(o.key)
		if err := v.outbox.Put(k, o.data); err != nil {
			return err
		}
		if err := v.outboxIDs.Put([]byte(o.id), k); err != nil {
			return err
		}
	}
	if w.outSeq > v.outbox.Sequence() {
		if err := v.outbox.SetSequence(w.outSeq); err != nil {
			return err
		}
	}
	if w.meta != nil {
		if err := v.meta.Put(kApplied, w.meta); err != nil {
			return err
		}
		v.cachedMeta = nil // pruneJournal reads the new one
	}
	if err := v.ackOutbox(w.acks); err != nil {
		return err
	}
	return v.pruneJournal(retention, pruneLimit)
}

func putOrDelete(b *bolt.Bucket, k, val []byte, put bool) error {
	if put {
		return b.Put(k, val)
	}
	return b.Delete(k)
}

// ackOutbox removes confirmed messages; unknown ids are ignored (already acked).
func (v *txView) ackOutbox(ids []string) error {
	for _, id := range ids {
		k := v.outboxIDs.Get([]byte(id))
		if k == nil {
			continue
		}
		if err := v.outbox.Delete(k); err != nil {
			return err
		}
		if err := v.outboxIDs.Delete([]byte(id)); err != nil {
			return err
		}
	}
	return nil
}

// pruneJournal drops up to limit journal entries older than the retention, with the
// dedup ids they recorded. Entries are visited in sequence order and pruning stops at
// the first one still retained, so the kept journal is always a contiguous suffix.
func (v *txView) pruneJournal(retention int64, limit int) error {
	if retention <= 0 {
		return nil
	}
	m, err := v.Meta()
	if err != nil {
		return err
	}
	if m.Time.IsZero() {
		return nil
	}
	cutoff := unixNano(m.Time) - retention
	c := v.journal.Cursor()
	for k, val := c.First(); k != nil && limit > 0; k, val = c.First() {
		var ev events.Event
		if err := json.Unmarshal(val, &ev); err != nil {
			return fmt.Errorf("journal entry %d: %w", seqOf(k), err)
		}
		if unixNano(ev.Time) >= cutoff {
			return nil
		}
		if s := v.seen.Get([]byte(ev.ID)); s != nil && seqOf(s) == seqOf(k) {
			if err := v.seen.Delete([]byte(ev.ID)); err != nil {
				return err
			}
		}
		if err := c.Delete(); err != nil {
			return err
		}
		limit--
	}
	return nil
}

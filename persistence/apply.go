package persistence

import (
	"encoding/json"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// batchWrites is what the commit stage writes for one batch: puts and deletes in the
// order the steps made them, every value already encoded by the step stage (which has
// time to spare while the commit stage writes and syncs), so the commit stage only
// hands bytes to bbolt.
type batchWrites struct {
	ops    []kvOp
	outSeq uint64 // the outbox bucket's sequence after this batch
	acks   []string
}

type kvOp struct {
	bucket   int // index in allBuckets
	key, val []byte
	del      bool
}

// Indexes of the buckets in allBuckets.
const (
	iMeta = iota
	iPools
	iKPs
	iPoolKPs
	iExpiry
	iSecrets
	iSeen
	iJournal
	iOutbox
	iOutboxIDs
	nBuckets
)

func newBatchWrites() *batchWrites { return &batchWrites{} }

func (w *batchWrites) empty() bool { return len(w.ops)+len(w.acks) == 0 }

func (w *batchWrites) put(b int, k, v []byte) { w.ops = append(w.ops, kvOp{bucket: b, key: k, val: v}) }
func (w *batchWrites) del(b int, k []byte)    { w.ops = append(w.ops, kvOp{bucket: b, key: k, del: true}) }

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
		w.put(iSecrets, []byte(id), sealed)
		o.secrets[id] = op[[]byte]{v: sealed, batch: b}
	}
	for _, kp := range r.KeyPackages {
		data, err := json.Marshal(kp)
		if err != nil {
			return fmt.Errorf("keypackage %s: %w", kp.Ref, err)
		}
		if !v.hasKP(kp.Ref) { // new: add it to its pool's index
			w.put(iPoolKPs, poolKPKey(kp.Pool, kp.Ref), nil)
		}
		w.put(iKPs, []byte(kp.Ref), data)
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
		w.del(iPoolKPs, poolKPKey(kp.Pool, ref))
		w.del(iKPs, []byte(ref))
		w.del(iSecrets, []byte(ref))
		o.kps[ref] = op[pool.KeyPackage]{del: true, batch: b}
		o.secrets[ref] = op[[]byte]{del: true, batch: b}
	}
	for _, e := range r.IndexDel {
		k := indexKey(e.At, e.Ref)
		w.del(iExpiry, k)
		o.expiry[string(k)] = op[struct{}]{del: true, batch: b}
	}
	for _, e := range r.IndexPut {
		k := indexKey(e.At, e.Ref)
		w.put(iExpiry, k, nil)
		o.putExpiry(string(k), b)
	}
	for _, ref := range r.Erase {
		w.del(iSecrets, []byte(ref))
		o.secrets[ref] = op[[]byte]{del: true, batch: b}
	}
	for _, p := range r.Pools {
		data, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("pool %s: %w", p.ID, err)
		}
		w.put(iPools, []byte(p.ID), data)
		o.pools[p.ID] = op[pool.Pool]{v: p, batch: b}
	}
	for _, m := range r.Outbox {
		// Both puts also for a replacement: an ack may have removed the id meanwhile.
		k := seqKey(v.outboxKey(m.ID))
		w.put(iOutbox, k, encodeOutbound(m))
		w.put(iOutboxIDs, []byte(m.ID), k)
	}
	w.outSeq = *v.outSeq
	if r.Seq != 0 {
		if r.Input.ID != "" {
			k := seenKey(r.Input.Pool, r.Input.ID)
			w.put(iSeen, k, seenValue(r.Seq, r.Input.Digest()))
			o.seen[string(k)] = op[[]byte]{v: seenValue(r.Seq, r.Input.Digest()), batch: b}
		}
		data, err := json.Marshal(r.Input)
		if err != nil {
			return fmt.Errorf("journal entry %d: %w", r.Seq, err)
		}
		w.put(iJournal, seqKey(r.Seq), data)
	}
	if r.Seq != 0 || r.Meta != (pool.Meta{}) {
		data, err := json.Marshal(r.Meta)
		if err != nil {
			return err
		}
		*v.meta = r.Meta
		w.put(iMeta, kApplied, data)
	}
	return nil
}

// writeBatch is the commit stage's work: plain puts and deletes, then outbox acks and
// journal pruning.
func writeBatch(tx *bolt.Tx, w *batchWrites, retention int64, pruneLimit int) error {
	var bs [nBuckets]*bolt.Bucket
	for i, name := range allBuckets {
		bs[i] = tx.Bucket(name)
	}
	for _, o := range w.ops {
		var err error
		if o.del {
			err = bs[o.bucket].Delete(o.key)
		} else {
			err = bs[o.bucket].Put(o.key, o.val)
		}
		if err != nil {
			return fmt.Errorf("%s %x: %w", allBuckets[o.bucket], o.key, err)
		}
	}
	v := newTxView(tx)
	if w.outSeq > v.outbox.Sequence() {
		if err := v.outbox.SetSequence(w.outSeq); err != nil {
			return err
		}
	}
	if err := v.ackOutbox(w.acks); err != nil {
		return err
	}
	return v.pruneJournal(retention, pruneLimit)
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
		key := seenKey(ev.Pool, ev.ID)
		if seq, _, ok := parseSeen(v.seen.Get(key)); ok && seq == seqOf(k) {
			if err := v.seen.Delete(key); err != nil {
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

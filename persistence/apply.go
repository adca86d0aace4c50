package persistence

import (
	"encoding/json"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// validate checks, before anything of this step is written, that the Ready can be
// stored: the sequence follows the stored one and no live KeyPackage lacks its keys.
func (v *txView) validate(in Input, r pool.Ready, allowMissing bool) error {
	if r.Seq != 0 {
		m, err := v.Meta()
		if err != nil {
			return err
		}
		if r.Seq != m.Seq+1 {
			return &InputError{EventID: r.Input.ID, Err: ErrSequence,
				Reason: fmt.Sprintf("step assigned %d, last applied is %d", r.Seq, m.Seq)}
		}
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

// write stores one accepted step (pool records and Meta at flush). Order matters: secrets first, so that an erasure in
// the same Ready wins; index deletes before puts, so a moved entry ends up present.
func (v *txView) write(seal *sealer, in Input, r pool.Ready) error {
	for id, plain := range in.Secrets {
		sealed, err := seal.seal([]byte(id), plain)
		if err != nil {
			return err
		}
		if err := v.secrets.Put([]byte(id), sealed); err != nil {
			return err
		}
	}
	for _, kp := range r.KeyPackages {
		if err := putJSON(v.kps, []byte(kp.Ref), kp); err != nil {
			return fmt.Errorf("keypackage %s: %w", kp.Ref, err)
		}
		pk := poolKPKey(kp.Pool, kp.Ref)
		if v.poolKPs.Get(pk) == nil {
			if err := v.poolKPs.Put(pk, nil); err != nil {
				return err
			}
		}
	}
	for _, ref := range r.Purge {
		if err := v.purge(ref); err != nil {
			return err
		}
	}
	for _, e := range r.IndexDel {
		if err := v.expiry.Delete(indexKey(e.At, e.Ref)); err != nil {
			return err
		}
	}
	for _, e := range r.IndexPut {
		if err := v.expiry.Put(indexKey(e.At, e.Ref), nil); err != nil {
			return err
		}
	}
	for _, ref := range r.Erase {
		if err := v.secrets.Delete([]byte(ref)); err != nil {
			return err
		}
	}
	for _, p := range r.Pools {
		v.setPool(p) // written by flush, once per transaction
	}
	for _, o := range r.Outbox {
		if err := v.putOutbox(o); err != nil {
			return err
		}
	}
	if r.Seq != 0 {
		if r.Input.ID != "" {
			if err := v.seen.Put([]byte(r.Input.ID), seqKey(r.Seq)); err != nil {
				return err
			}
		}
		if err := putJSON(v.journal, seqKey(r.Seq), r.Input); err != nil {
			return err
		}
	}
	if r.Seq != 0 || r.Meta != (pool.Meta{}) {
		v.setMeta(r.Meta)
	}
	return nil
}

// purge removes a tombstone entirely: record, per-pool index entry and any leftover
// ciphertext.
func (v *txView) purge(ref string) error {
	kp, ok, err := v.KeyPackage(ref)
	if err != nil || !ok {
		return err
	}
	if err := v.poolKPs.Delete(poolKPKey(kp.Pool, ref)); err != nil {
		return err
	}
	if err := v.secrets.Delete([]byte(ref)); err != nil {
		return err
	}
	return v.kps.Delete([]byte(ref))
}

// putOutbox appends a message; re-emitting an id that is still queued replaces it in
// place, so one id is published once per confirmation.
func (v *txView) putOutbox(o events.Outbound) error {
	data := encodeOutbound(o)
	if k := v.outboxIDs.Get([]byte(o.ID)); k != nil {
		return v.outbox.Put(k, data)
	}
	n, err := v.outbox.NextSequence()
	if err != nil {
		return err
	}
	k := seqKey(n)
	if err := v.outbox.Put(k, data); err != nil {
		return err
	}
	return v.outboxIDs.Put([]byte(o.ID), k)
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

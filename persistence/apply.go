package persistence

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// validate checks, before anything of this step is recorded, that the Ready can be
// stored: the sequence follows the last one and no live KeyPackage lacks its keys.
func (v *txView) validate(in Input, r pool.Ready, allowMissing bool) error {
	meta, err := v.Meta()
	if err != nil {
		return err
	}
	if r.Seq != 0 && r.Seq != meta.Seq+1 {
		return &InputError{EventID: r.Input.ID, Err: ErrSequence,
			Reason: fmt.Sprintf("step assigned %d, last applied is %d", r.Seq, meta.Seq)}
	}
	if allowMissing {
		return nil
	}
	erased := make(map[string]bool, len(r.Erase))
	for _, ref := range r.Erase {
		erased[ref] = true
	}
	clientPools := map[string]bool{} // client custody: kpool holds no keys for them
	for _, p := range r.Pools {
		clientPools[p.ID] = p.Custody == events.CustodyClient
		if _, given := in.Secrets[PoolSecretID(p.ID)]; given && clientPools[p.ID] {
			return &InputError{EventID: in.Event.ID, Err: ErrClientSecret,
				Reason: "a signature private key given for client-custody pool " + p.ID}
		}
	}
	for _, kp := range r.KeyPackages {
		if !kp.State.Live() { // live ones may be handed out or taken: keys required
			continue
		}
		client, known := clientPools[kp.Pool]
		if !known {
			p, _, err := v.Pool(kp.Pool)
			if err != nil {
				return err
			}
			client = p.Custody == events.CustodyClient
			clientPools[kp.Pool] = client
		}
		if client {
			if _, given := in.Secrets[kp.Ref]; given {
				return &InputError{EventID: in.Event.ID, Ref: kp.Ref, Err: ErrClientSecret,
					Reason: "private keys given for a KeyPackage of a client-custody pool"}
			}
			continue
		}
		_, given := in.Secrets[kp.Ref]
		given = given || slices.Contains(in.Erased, kp.Ref)
		if erased[kp.Ref] || (!given && !v.hasSecret(kp.Ref)) {
			return &InputError{EventID: in.Event.ID, Ref: kp.Ref, Err: ErrMissingSecret,
				Reason: fmt.Sprintf("KeyPackage would be %s without stored private keys", kp.State)}
		}
	}
	return nil
}

// checkKeys refuses, before anything is recorded, a step whose keys bbolt would refuse,
// so that a bad input is refused on its own instead of failing its whole batch.
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

// record writes one accepted step into the transaction, where the next step sees it.
// Order matters: secrets first, so that an erasure in the same Ready wins; index deletes
// before puts, so a moved entry ends up present.
func (v *txView) record(seal *sealer, in Input, r pool.Ready) error {
	for _, id := range in.Erased {
		if err := v.secrets.Put([]byte(id), erasedMarker); err != nil {
			return err
		}
	}
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
		data, err := json.Marshal(kp)
		if err != nil {
			return fmt.Errorf("keypackage %s: %w", kp.Ref, err)
		}
		if v.kps.Get([]byte(kp.Ref)) == nil { // new: add it to its pool's index
			if err := v.poolKPs.Put(poolKPKey(kp.Pool, kp.Ref), nil); err != nil {
				return err
			}
		}
		if err := v.kps.Put([]byte(kp.Ref), data); err != nil {
			return err
		}
	}
	for _, ref := range r.Purge {
		kp, ok, err := v.KeyPackage(ref)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := deleteAll(v.poolKPs.Delete(poolKPKey(kp.Pool, ref)), v.kps.Delete([]byte(ref)), v.secrets.Delete([]byte(ref))); err != nil {
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
		data, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("pool %s: %w", p.ID, err)
		}
		if err := v.pools.Put([]byte(p.ID), data); err != nil {
			return err
		}
	}
	for _, m := range r.Outbox {
		if err := v.putOutbox(m); err != nil {
			return err
		}
	}
	if r.Seq != 0 {
		if r.Input.ID != "" {
			if err := v.seen.Put(seenKey(r.Input.Pool, r.Input.ID), seenValue(r.Seq, r.Input.Digest())); err != nil {
				return err
			}
		}
		data, err := json.Marshal(r.Input)
		if err != nil {
			return fmt.Errorf("journal entry %d: %w", r.Seq, err)
		}
		if err := v.journal.Put(seqKey(r.Seq), data); err != nil {
			return err
		}
	}
	if r.Seq != 0 || r.Meta != (pool.Meta{}) {
		data, err := json.Marshal(r.Meta)
		if err != nil {
			return err
		}
		if err := v.meta.Put(kApplied, data); err != nil {
			return err
		}
		m := r.Meta
		v.cachedMeta = &m
	}
	return nil
}

func deleteAll(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// putOutbox adds a message under the next outbox key, or replaces the one with its id.
func (v *txView) putOutbox(m events.Outbound) error {
	if v.quiet {
		return nil
	}
	k := v.outboxIDs.Get([]byte(m.ID))
	if k == nil {
		seq, err := v.outbox.NextSequence()
		if err != nil {
			return err
		}
		k = seqKey(seq)
		if err := v.outboxIDs.Put([]byte(m.ID), k); err != nil {
			return err
		}
	} else {
		k = append([]byte(nil), k...)
	}
	return v.outbox.Put(k, encodeOutbound(m))
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

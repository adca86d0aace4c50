package persistence

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// View runs fn with a read-only pool.View of the committed state.
func (s *Store) View(fn func(pool.View) error) error {
	return s.view(func(tx *bolt.Tx) error { return fn(newTxView(tx)) })
}

// Meta is the last applied sequence and time.
func (s *Store) Meta() (m pool.Meta, err error) {
	err = s.View(func(v pool.View) error { m, err = v.Meta(); return err })
	return m, err
}

// Pool reads one pool record.
func (s *Store) Pool(id string) (p pool.Pool, ok bool, err error) {
	err = s.View(func(v pool.View) error { p, ok, err = v.Pool(id); return err })
	return p, ok, err
}

// Pools reads every pool record, in id order. Counters and status come from these
// records, so start-up reads them and never the KeyPackages.
func (s *Store) Pools() ([]pool.Pool, error) {
	var out []pool.Pool
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bPools).ForEach(func(k, val []byte) error {
			var p pool.Pool
			if err := json.Unmarshal(val, &p); err != nil {
				return fmt.Errorf("pool record %q: %w", k, err)
			}
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// KeyPackage reads one KeyPackage record (public data; tombstones included).
func (s *Store) KeyPackage(ref string) (kp pool.KeyPackage, ok bool, err error) {
	err = s.View(func(v pool.View) error { kp, ok, err = v.KeyPackage(ref); return err })
	return kp, ok, err
}

// KeyPackages calls fn for the pool's KeyPackage records in ref order, until fn
// returns false. It reads the per-pool index, not every pool's records.
func (s *Store) KeyPackages(poolID string, fn func(pool.KeyPackage) bool) error {
	prefix := poolKPKey(poolID, "")
	return s.view(func(tx *bolt.Tx) error {
		v := newTxView(tx)
		c := v.poolKPs.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			ref := string(k[len(prefix):])
			kp, ok, err := v.KeyPackage(ref)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("pool %s index names ref %s without a record", poolID, ref)
			}
			if !fn(kp) {
				return nil
			}
		}
		return nil
	})
}

// Journal calls fn for the journaled inputs with from <= seq <= to (to == 0: no upper
// bound), in sequence order.
func (s *Store) Journal(from, to uint64, fn func(seq uint64, ev events.Event) error) error {
	return s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bJournal).Cursor()
		for k, val := c.Seek(seqKey(from)); k != nil; k, val = c.Next() {
			seq := seqOf(k)
			if to != 0 && seq > to {
				return nil
			}
			var ev events.Event
			if err := json.Unmarshal(val, &ev); err != nil {
				return fmt.Errorf("journal entry %d: %w", seq, err)
			}
			if err := fn(seq, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// Outbox calls fn for every unconfirmed outbound message, oldest first. At start-up
// the worker publishes them again (same ids, so NATS deduplicates).
func (s *Store) Outbox(fn func(events.Outbound) error) error {
	return s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bOutbox).ForEach(func(k, val []byte) error {
			o, err := decodeOutbound(val)
			if err != nil {
				return fmt.Errorf("outbox entry %d: %w", seqOf(k), err)
			}
			return fn(o)
		})
	})
}

// OutboxAfter calls fn for the outbox messages whose key (their place in the outbox,
// increasing) is above after, oldest first, so a relay can follow the outbox with a
// cursor instead of reading it from its start each time.
func (s *Store) OutboxAfter(after uint64, fn func(key uint64, o events.Outbound) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bOutbox).Cursor()
		for k, val := c.Seek(seqKey(after + 1)); k != nil; k, val = c.Next() {
			o, err := decodeOutbound(val)
			if err != nil {
				return fmt.Errorf("outbox entry %d: %w", seqOf(k), err)
			}
			if err := fn(seqOf(k), o); err != nil {
				return err
			}
		}
		return nil
	})
}

// AckOutbox removes messages the publisher confirmed, in its own transaction (the
// worker folds them into its writer's next transaction when it can).
func (s *Store) AckOutbox(ids ...string) error {
	return s.update(func(tx *bolt.Tx) error { return newTxView(tx).ackOutbox(ids) })
}

// Secret decrypts the private material stored under id (hex ref, or PoolSecretID).
// The caller should clear the returned slice after use.
func (s *Store) Secret(id string) (plain []byte, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		plain, err = s.secretIn(newTxView(tx), id)
		return err
	})
	return plain, err
}

// HasSecret reports whether private material is stored under id, without decrypting.
func (s *Store) HasSecret(id string) (ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error { ok = newTxView(tx).hasSecret(id); return nil })
	return ok, err
}

// HasKey reports whether the store was opened with its key file (secrets readable).
func (s *Store) HasKey() bool { return s.seal != nil }

func (s *Store) secretIn(v *txView, id string) ([]byte, error) {
	return s.secretFrom(v.secrets.Get([]byte(id)), id)
}

func (s *Store) secretFrom(sealed []byte, id string) ([]byte, error) {
	if s.seal == nil {
		return nil, &SecretError{ID: id, Err: ErrNoKey}
	}
	if sealed == nil {
		return nil, &SecretError{ID: id, Err: ErrNotFound}
	}
	if erasedInCluster(sealed) {
		return nil, &SecretError{ID: id, Err: ErrErasedInCluster}
	}
	plain, err := s.seal.open([]byte(id), sealed)
	if err != nil {
		return nil, &SecretError{ID: id, Err: ErrCorruptSecret}
	}
	return plain, nil
}

// InputSeq is the stream sequence of the last input the writer applied (0: none yet).
func (s *Store) InputSeq() (seq uint64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		seq = seqOf(tx.Bucket(bMeta).Get(kInputSeq))
		return nil
	})
	return seq, err
}

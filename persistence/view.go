package persistence

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// txView implements pool.View over a bbolt transaction: the committed state, for reads
// (API, tools) and as the snapshot under the committer's overlay (overlay.go).
type txView struct {
	tx                                               *bolt.Tx
	meta, pools, kps, poolKPs, expiry, secrets, seen *bolt.Bucket
	journal, outbox, outboxIDs                       *bolt.Bucket
	cachedMeta                                       *pool.Meta
	quiet                                            bool // Batch.SetQuiet
}

var _ pool.View = (*txView)(nil)

func newTxView(tx *bolt.Tx) *txView {
	return &txView{
		tx:        tx,
		meta:      tx.Bucket(bMeta),
		pools:     tx.Bucket(bPools),
		kps:       tx.Bucket(bKPs),
		poolKPs:   tx.Bucket(bPoolKPs),
		expiry:    tx.Bucket(bExpiry),
		secrets:   tx.Bucket(bSecrets),
		seen:      tx.Bucket(bSeen),
		journal:   tx.Bucket(bJournal),
		outbox:    tx.Bucket(bOutbox),
		outboxIDs: tx.Bucket(bOutboxIDs),
	}
}

// Meta returns the last applied sequence and time (zero for a new database).
func (v *txView) Meta() (pool.Meta, error) {
	if v.cachedMeta != nil {
		return *v.cachedMeta, nil
	}
	var m pool.Meta
	if b := v.meta.Get(kApplied); b != nil {
		if err := json.Unmarshal(b, &m); err != nil {
			return m, fmt.Errorf("meta record: %w", err)
		}
	}
	v.cachedMeta = &m
	return m, nil
}

func (v *txView) Pool(id string) (pool.Pool, bool, error) {
	var p pool.Pool
	b := v.pools.Get([]byte(id))
	if b == nil {
		return p, false, nil
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, false, fmt.Errorf("pool record %q: %w", id, err)
	}
	return p, true, nil
}

func (v *txView) KeyPackage(ref string) (pool.KeyPackage, bool, error) {
	var kp pool.KeyPackage
	b := v.kps.Get([]byte(ref))
	if b == nil {
		return kp, false, nil
	}
	if err := json.Unmarshal(b, &kp); err != nil {
		return kp, false, fmt.Errorf("keypackage record %q: %w", ref, err)
	}
	return kp, true, nil
}

// Due walks the expiry index from its start: the cost is the entries that are due.
func (v *txView) Due(until time.Time, fn func(pool.IndexEntry) bool) error {
	end := timeKey(until)
	c := v.expiry.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if bytes.Compare(k[:min(len(k), timeKeyLen)], end) > 0 {
			return nil
		}
		at, ref, ok := parseIndexKey(k)
		if !ok {
			return errMalformedIndex(string(k))
		}
		if !fn(pool.IndexEntry{At: at, Ref: ref}) {
			return nil
		}
	}
	return nil
}

// PoolRefs implements pool.RefLister over the per-pool index (a client's inventory).
func (v *txView) PoolRefs(poolID string, fn func(ref string) bool) error {
	prefix := poolKPKey(poolID, "")
	c := v.poolKPs.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if !fn(string(k[len(prefix):])) {
			return nil
		}
	}
	return nil
}

func (v *txView) Seen(poolID, eventID string) (events.Digest, bool, error) {
	b := v.seen.Get(seenKey(poolID, eventID))
	if b == nil {
		return events.Digest{}, false, nil
	}
	_, d, ok := parseSeen(b)
	if !ok {
		return d, false, fmt.Errorf("dedup entry %s/%s: %d bytes, want %d", poolID, eventID, len(b), seenLen)
	}
	return d, true, nil
}

// seenKey is a dedup entry's key: ids are per pool, and a pool id has no "/".
func seenKey(poolID, eventID string) []byte { return []byte(poolID + "/" + eventID) }

// A dedup entry's value: the 8-byte seq of the input that applied the id, then its digest.
const seenLen = 8 + len(events.Digest{})

func seenValue(seq uint64, d events.Digest) []byte { return append(seqKey(seq), d[:]...) }

func parseSeen(b []byte) (seq uint64, d events.Digest, ok bool) {
	if len(b) != seenLen {
		return 0, d, false
	}
	copy(d[:], b[8:])
	return binary.BigEndian.Uint64(b), d, true
}

func (v *txView) hasSecret(id string) bool { return v.secrets.Get([]byte(id)) != nil }

func seqOf(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func errMalformedIndex(k string) error { return fmt.Errorf("expiry index: malformed key %x", k) }

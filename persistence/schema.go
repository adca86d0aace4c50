package persistence

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/kpool/kpool/events"
	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout this build writes (see docs/storage.md).
const SchemaVersion uint32 = 2

// Buckets. Every top-level bucket is created when a database is initialised; a
// migration that adds one must create it too.
var (
	bMeta      = []byte("meta")        // schema, key check, applied Meta
	bPools     = []byte("pools")       // pool id → JSON pool.Pool
	bKPs       = []byte("keypackages") // ref → JSON pool.KeyPackage
	bPoolKPs   = []byte("pool_kps")    // pool id + "/" + ref → empty
	bExpiry    = []byte("expiry")      // 8-byte time + ref → empty
	bSecrets   = []byte("secrets")     // id → nonce || AES-256-GCM ciphertext
	bSeen      = []byte("seen")        // pool + "/" + event id → 8-byte seq || event digest (view.go)
	bJournal   = []byte("journal")     // 8-byte seq → JSON events.Event
	bOutbox    = []byte("outbox")      // 8-byte outbox seq → binary events.Outbound (outbound.go)
	bOutboxIDs = []byte("outbox_ids")  // outbound id → outbox key
)

// allBuckets are created when a database is initialised.
var allBuckets = [][]byte{bMeta, bPools, bKPs, bPoolKPs, bExpiry, bSecrets, bSeen, bJournal, bOutbox, bOutboxIDs}

// Keys of the meta bucket.
var (
	kSchema   = []byte("schema")    // 4-byte big-endian version
	kKeyCheck = []byte("key_check") // keyCheckPlain sealed under the master key
	kApplied  = []byte("applied")   // JSON pool.Meta
	kInputSeq = []byte("input_seq") // 8-byte stream sequence of the last applied input
)

// migrations[v] upgrades a database from schema v to v+1 inside one write
// transaction. This is the one place migrations go: add a function here, bump
// SchemaVersion, and describe the change in docs/storage.md.
var migrations = map[uint32]func(tx *bolt.Tx) error{
	1: migrateSeenPerPool,
}

// migrateSeenPerPool re-keys the dedup ids (schema 1: event id → seq) per pool, with the
// digest of the journaled event, which schema 2 compares to refuse a reused id. An entry
// whose journal entry is gone cannot be re-keyed and is dropped (schema 1 pruned both).
func migrateSeenPerPool(tx *bolt.Tx) error {
	seen, journal := tx.Bucket(bSeen), tx.Bucket(bJournal)
	type entry struct{ old, key, val []byte }
	var moves []entry
	err := seen.ForEach(func(k, v []byte) error {
		e := entry{old: append([]byte(nil), k...)}
		if data := journal.Get(v); len(v) == 8 && data != nil {
			var ev events.Event
			if err := json.Unmarshal(data, &ev); err != nil {
				return fmt.Errorf("journal entry %d: %w", seqOf(v), err)
			}
			e.key, e.val = seenKey(ev.Pool, ev.ID), seenValue(seqOf(v), ev.Digest())
		}
		moves = append(moves, e)
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range moves {
		if err := seen.Delete(e.old); err != nil {
			return err
		}
	}
	for _, e := range moves {
		if e.key == nil {
			continue
		}
		if err := seen.Put(e.key, e.val); err != nil {
			return err
		}
	}
	return nil
}

// checkSchema reads the stored version, initialises an empty database and runs the
// migrations up to SchemaVersion. readOnly databases are checked, never changed.
func checkSchema(db *bolt.DB, path string, readOnly bool) error {
	var found []byte
	empty := true
	if err := db.View(func(tx *bolt.Tx) error {
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if m := tx.Bucket(bMeta); m != nil {
			found = append([]byte(nil), m.Get(kSchema)...)
		}
		return nil
	}); err != nil {
		return err
	}
	if empty && found == nil {
		if readOnly {
			return &SchemaError{Path: path, Found: "", Supported: SchemaVersion}
		}
		return db.Update(func(tx *bolt.Tx) error {
			for _, name := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			return tx.Bucket(bMeta).Put(kSchema, encVersion(SchemaVersion))
		})
	}
	if len(found) != 4 {
		return &SchemaError{Path: path, Found: printable(found), Supported: SchemaVersion}
	}
	v := binary.BigEndian.Uint32(found)
	if v == 0 || v > SchemaVersion {
		return &SchemaError{Path: path, Found: strconv.FormatUint(uint64(v), 10), Supported: SchemaVersion}
	}
	if v == SchemaVersion {
		return nil
	}
	if readOnly {
		return fmt.Errorf("%s: schema version %d needs migrating to %d; open it once read-write", path, v, SchemaVersion)
	}
	return db.Update(func(tx *bolt.Tx) error {
		for ; v < SchemaVersion; v++ {
			m, ok := migrations[v]
			if !ok {
				return &SchemaError{Path: path, Found: strconv.FormatUint(uint64(v), 10), Supported: SchemaVersion}
			}
			if err := m(tx); err != nil {
				return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
			}
		}
		return tx.Bucket(bMeta).Put(kSchema, encVersion(SchemaVersion))
	})
}

func encVersion(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func printable(b []byte) string {
	if b == nil {
		return ""
	}
	return fmt.Sprintf("0x%x", b)
}

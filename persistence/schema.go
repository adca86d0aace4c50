package persistence

import (
	"encoding/binary"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout this build writes (see docs/storage.md).
const SchemaVersion uint32 = 1

// Buckets. Every top-level bucket is created when a database is initialised; a
// migration that adds one must create it too.
var (
	bMeta      = []byte("meta")        // schema, key check, applied Meta
	bPools     = []byte("pools")       // pool id → JSON pool.Pool
	bKPs       = []byte("keypackages") // ref → JSON pool.KeyPackage
	bPoolKPs   = []byte("pool_kps")    // pool id + "/" + ref → empty
	bExpiry    = []byte("expiry")      // 8-byte time + ref → empty
	bSecrets   = []byte("secrets")     // id → nonce || AES-256-GCM ciphertext
	bSeen      = []byte("seen")        // event id → 8-byte seq
	bJournal   = []byte("journal")     // 8-byte seq → JSON events.Event
	bOutbox    = []byte("outbox")      // 8-byte outbox seq → binary events.Outbound (outbound.go)
	bOutboxIDs = []byte("outbox_ids")  // outbound id → outbox key
)

// allBuckets, in the order of the i* constants (apply.go).
var allBuckets = [nBuckets][]byte{bMeta, bPools, bKPs, bPoolKPs, bExpiry, bSecrets, bSeen, bJournal, bOutbox, bOutboxIDs}

// Keys of the meta bucket.
var (
	kSchema   = []byte("schema")    // 4-byte big-endian version
	kKeyCheck = []byte("key_check") // keyCheckPlain sealed under the master key
	kApplied  = []byte("applied")   // JSON pool.Meta
)

// migrations[v] upgrades a database from schema v to v+1 inside one write
// transaction. This is the one place migrations go: add a function here, bump
// SchemaVersion, and describe the change in docs/storage.md.
var migrations = map[uint32]func(tx *bolt.Tx) error{}

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

package persistence

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// A schema-1 database (dedup ids global: event id → seq) opens with its ids re-keyed per
// pool and carrying the digest of the journaled event.
func TestMigrateSeenPerPool(t *testing.T) {
	db, key := populated(t)
	raw, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var journaled []events.Event
	if err := raw.Update(func(tx *bolt.Tx) error {
		v := newTxView(tx)
		if err := v.journal.ForEach(func(k, val []byte) error {
			var ev events.Event
			if err := json.Unmarshal(val, &ev); err != nil {
				return err
			}
			journaled = append(journaled, ev)
			if err := v.seen.Delete(seenKey(ev.Pool, ev.ID)); err != nil {
				return err
			}
			return v.seen.Put([]byte(ev.ID), append([]byte(nil), k...))
		}); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put(kSchema, encVersion(1))
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if len(journaled) < 2 {
		t.Fatalf("populated journaled %d inputs, want at least 2", len(journaled))
	}

	s := mustOpen(t, db, key)
	defer s.Close()
	if err := s.View(func(v pool.View) error {
		for _, ev := range journaled {
			d, ok, err := v.Seen(ev.Pool, ev.ID)
			if err != nil || !ok || d != ev.Digest() {
				t.Errorf("after migration Seen(%q, %q) = %v, %v (digest match %v)", ev.Pool, ev.ID, ok, err, d == ev.Digest())
			}
			if _, ok, _ := v.Seen("other", ev.ID); ok {
				t.Errorf("id %s seen in pool other", ev.ID)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// fakeStep keeps no pool invariants: only the journal and dedup checks matter here.
	var probs []string
	err = s.Check(func(p string) {
		if strings.Contains(p, "journal") || strings.Contains(p, "dedup") {
			probs = append(probs, p)
		}
	})
	if err != nil || len(probs) > 0 {
		t.Fatalf("db check after migration: %v %v", probs, err)
	}
}

// A flipped byte in a pool's sealed signature key is reported by Check, as one in a
// KeyPackage's bundle is.
func TestCheckDecryptsPoolSecrets(t *testing.T) {
	db, key := populated(t)
	raw, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bSecrets)
		id := []byte(PoolSecretID("p1"))
		v := append([]byte(nil), b.Get(id)...)
		if len(v) == 0 {
			t.Fatal("the fixture stores no signature key for p1")
		}
		v[len(v)-1] ^= 1
		return b.Put(id, v)
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	s := mustOpen(t, db, key)
	defer s.Close()
	var found bool
	if err := s.Check(func(p string) { found = found || strings.Contains(p, "signature key does not decrypt") }); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatal("a corrupted pool signature key went unnoticed by Check")
	}
}

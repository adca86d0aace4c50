package persistence

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func testPaths(t testing.TB) (db, key string) {
	d := t.TempDir()
	return filepath.Join(d, "kpool.db"), filepath.Join(d, "kpool.key")
}

func mustOpen(t testing.TB, db, key string) *Store {
	t.Helper()
	s, err := Open(db, Options{KeyFile: key})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func refOf(n int) string { return fmt.Sprintf("%064x", n) }

// secretOf is recognisable private material for a ref: the crash and plaintext
// tests scan the file for it.
func secretOf(id string) []byte {
	h := sha256.Sum256([]byte("private bundle of " + id))
	return append([]byte("PRIVKEY:"), h[:]...)
}

func evReg(id, p string) events.Event {
	return events.Event{ID: id, Type: events.TypePoolRegistered, Time: t0, Pool: p,
		Register: &events.Register{Identity: "alice@" + p, CipherSuite: 1, SignatureKey: []byte("pub-" + p)}}
}

func evGen(id, p, ref string, at time.Time) events.Event {
	return events.Event{ID: id, Type: events.TypeGenerated, Time: at, Pool: p,
		Generated: &events.Generated{Ref: ref, KeyPackage: []byte("kp-" + ref), NotBefore: at.Unix() - 3600, NotAfter: at.Add(84 * 24 * time.Hour).Unix()}}
}

func evRef(id string, typ events.Type, p, ref string, at time.Time) events.Event {
	return events.Event{ID: id, Type: typ, Time: at, Pool: p, Ref: ref}
}

func evTick(id string, at time.Time) events.Event {
	return events.Event{ID: id, Type: events.TypeExpiryTick, Time: at}
}

// genInput is a generated event with its private bundle.
func genInput(id, p, ref string, at time.Time) Input {
	return Input{Event: evGen(id, p, ref, at), Secrets: map[string][]byte{ref: secretOf(ref)}}
}

func regInput(id, p string) Input {
	return Input{Event: evReg(id, p), Secrets: map[string][]byte{PoolSecretID(p): secretOf(PoolSecretID(p))}}
}

// committer applies each input in a batch of its own, the way the worker's writer
// does with a group of one; acks are folded into the next batch.
type committer struct {
	s    *Store
	step StepFunc
	mu   sync.Mutex
	acks []string
}

func newCommitter(s *Store, step StepFunc) *committer { return &committer{s: s, step: step} }

func (c *committer) Submit(_ context.Context, in Input) (Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.s.Begin(false)
	if err != nil {
		return Result{}, err
	}
	res, err := b.Apply(c.step, in)
	if err == nil {
		err = b.AckOutbox(c.acks)
	}
	if err != nil {
		b.Rollback()
		return Result{}, err
	}
	if err := b.Commit(); err != nil {
		return Result{}, err
	}
	c.acks = nil
	return res, nil
}

func (c *committer) Ack(ids ...string) {
	c.mu.Lock()
	c.acks = append(c.acks, ids...)
	c.mu.Unlock()
}

func (c *committer) takeAcks() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.acks
	c.acks = nil
	return a
}

// Close writes the acks still pending.
func (c *committer) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.acks) == 0 {
		return nil
	}
	err := c.s.AckOutbox(c.acks...)
	c.acks = nil
	return err
}

func submit(t testing.TB, c *committer, in Input) Result {
	t.Helper()
	res, err := c.Submit(context.Background(), in)
	if err != nil {
		t.Fatalf("Submit %s: %v", in.Event.ID, err)
	}
	return res
}

func submitOK(t testing.TB, c *committer, in Input) Result {
	t.Helper()
	res := submit(t, c, in)
	if res.Err != nil {
		t.Fatalf("Submit %s rejected: %v", in.Event.ID, res.Err)
	}
	return res
}

// dump copies every bucket's raw contents: two equal dumps mean nothing changed.
func dump(t testing.TB, s *Store) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			m := map[string]string{}
			out[string(name)] = m
			return b.ForEach(func(k, v []byte) error { m[string(k)] = string(v); return nil })
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameDump(a, b map[string]map[string]string) string {
	for name, m := range a {
		for k, v := range m {
			if w, ok := b[name][k]; !ok || w != v {
				return fmt.Sprintf("bucket %s key %x differs", name, k)
			}
		}
		if len(m) != len(b[name]) {
			return fmt.Sprintf("bucket %s: %d vs %d keys", name, len(m), len(b[name]))
		}
	}
	if len(a) != len(b) {
		return "bucket sets differ"
	}
	return ""
}

// model folds Readies the way the store should: the expected state after them.
type model struct {
	meta    pool.Meta
	pools   map[string]pool.Pool
	kps     map[string]pool.KeyPackage
	index   map[string]pool.IndexEntry // indexKey → entry
	secrets map[string][]byte
	journal map[uint64]string // seq → event id
	outbox  []string          // ids in order
}

func newModel() *model {
	return &model{pools: map[string]pool.Pool{}, kps: map[string]pool.KeyPackage{}, index: map[string]pool.IndexEntry{},
		secrets: map[string][]byte{}, journal: map[uint64]string{}}
}

func (m *model) apply(in Input, r pool.Ready) {
	if r.Duplicate {
		return
	}
	for id, v := range in.Secrets {
		m.secrets[id] = v
	}
	for _, kp := range r.KeyPackages {
		m.kps[kp.Ref] = kp
	}
	for _, ref := range r.Purge {
		delete(m.kps, ref)
		delete(m.secrets, ref)
	}
	for _, e := range r.IndexDel {
		delete(m.index, string(indexKey(e.At, e.Ref)))
	}
	for _, e := range r.IndexPut {
		m.index[string(indexKey(e.At, e.Ref))] = e
	}
	for _, ref := range r.Erase {
		delete(m.secrets, ref)
	}
	for _, p := range r.Pools {
		m.pools[p.ID] = p
	}
	for _, o := range r.Outbox {
		m.outbox = append(m.outbox, o.ID)
	}
	if r.Seq != 0 {
		m.journal[r.Seq] = r.Input.ID
		m.meta = r.Meta
	}
}

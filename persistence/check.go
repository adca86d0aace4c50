package persistence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"unicode/utf8"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// Check reads the whole database in one read transaction and calls report for every
// inconsistency: bbolt's own page checks, then kpool's: journal and dedup ids, the
// per-pool and expiry indexes against the records, private keys present for every
// live KeyPackage and absent for deleted ones (decrypted when the store has a key),
// outbox index, and pool.CheckPool for every pool. It reads every record: a tool for
// `worker db check` and tests, never for start-up.
//
// The page structure is walked with plain reads first (verifyPages): a damaged file
// returns its *CorruptError before bbolt reads a page of it, so a check never crashes,
// and every page is visited once, so it never loops.
func (s *Store) Check(report func(problem string)) error {
	add := func(f string, a ...any) { report(fmt.Sprintf(f, a...)) }
	warning, err := verifyPages(s.path)
	if err != nil {
		return err
	}
	if warning != "" {
		add("%s", warning)
	}
	return s.view(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			add("bbolt: %v", err)
		}
		v := newTxView(tx)
		meta, err := v.Meta()
		if err != nil {
			return err
		}
		checkMeta(v, add)
		s.checkJournal(v, meta, add)
		s.checkRecords(v, add)
		s.checkOutbox(v, add)
		return v.pools.ForEach(func(k, val []byte) error {
			var p pool.Pool
			if err := decodeRecord(val, &p); err != nil {
				add("pool %q: %v", k, err)
				return nil
			}
			if p.ID != string(k) {
				add("pool %q: record names pool %s", k, p.ID)
			}
			client := p.Custody == events.CustodyClient
			switch has := v.hasSecret(PoolSecretID(p.ID)); {
			case !client && !has:
				add("pool %s: signature private key missing", p.ID)
			case client && has:
				add("pool %s: custody client, but kpool stores a signature private key", p.ID)
			}
			if err := pool.CheckPool(p, meta.Time, poolKPs(v, p.ID)); err != nil {
				add("%v", err)
			}
			return nil
		})
	})
}

// checkMeta checks the meta bucket holds only its known keys, each well formed (the
// schema version and the key check are checked by Open).
func checkMeta(v *txView, add func(string, ...any)) {
	_ = v.meta.ForEach(func(k, val []byte) error {
		switch {
		case bytes.Equal(k, kSchema), bytes.Equal(k, kKeyCheck):
		case bytes.Equal(k, kApplied):
			if err := decodeRecord(val, &pool.Meta{}); err != nil {
				add("meta %s: %v", k, err)
			}
		case bytes.Equal(k, kInputSeq):
			if len(val) != 8 {
				add("meta %s: %d bytes, not an 8-byte sequence", k, len(val))
			}
		default:
			add("meta: unknown key %q", k)
		}
		return nil
	})
}

func (s *Store) checkJournal(v *txView, meta pool.Meta, add func(string, ...any)) {
	var first, last uint64
	c := v.journal.Cursor()
	for k, val := c.First(); k != nil; k, val = c.Next() {
		seq := seqOf(k)
		if first == 0 {
			first = seq
		} else if seq != last+1 {
			add("journal: seq %d follows %d", seq, last)
		}
		last = seq
		var ev events.Event
		if err := decodeRecord(val, &ev); err != nil {
			add("journal %d: %v", seq, err)
			continue
		}
		if err := events.Validate(ev); err != nil {
			add("journal %d: %v", seq, err)
		}
		got, digest, ok := parseSeen(v.seen.Get(seenKey(ev.Pool, ev.ID)))
		switch {
		case !ok || got != seq:
			add("journal %d: event %s of pool %q has dedup seq %d", seq, ev.ID, ev.Pool, got)
		case digest != ev.Digest():
			add("journal %d: event %s of pool %q has another digest in its dedup entry", seq, ev.ID, ev.Pool)
		}
	}
	if last != meta.Seq {
		add("journal ends at %d, last applied is %d", last, meta.Seq)
	}
	_ = v.seen.ForEach(func(k, val []byte) error {
		seq, _, ok := parseSeen(val)
		if !ok {
			add("dedup id %s: malformed entry", k)
			return nil
		}
		if seq >= first && (seq > last || v.journal.Get(seqKey(seq)) == nil) {
			add("dedup id %s names seq %d, not journaled", k, seq)
		}
		return nil
	})
}

func (s *Store) checkRecords(v *txView, add func(string, ...any)) {
	records := 0
	clientPools, asks := map[string]bool{}, 0
	_ = v.pools.ForEach(func(_, val []byte) error {
		var p pool.Pool
		if json.Unmarshal(val, &p) == nil {
			clientPools[p.ID] = p.Custody == events.CustodyClient
			if !p.ClientAsk.IsZero() {
				asks++
				if v.expiry.Get(indexKey(p.ClientAsk, pool.ClientTimerRef(p.ID))) == nil {
					add("pool %s: no expiry index entry for its client re-ask at %s", p.ID, p.ClientAsk)
				}
			}
		}
		return nil
	})
	_ = v.kps.ForEach(func(k, val []byte) error {
		records++
		var kp pool.KeyPackage
		if err := decodeRecord(val, &kp); err != nil {
			add("keypackage %x: %v", k, err)
			return nil
		}
		if kp.Ref != string(k) {
			add("keypackage %s: record names ref %s", k, kp.Ref)
		}
		if v.poolKPs.Get(poolKPKey(kp.Pool, kp.Ref)) == nil {
			add("keypackage %s: missing from the index of pool %s", kp.Ref, kp.Pool)
		}
		if v.expiry.Get(indexKey(kp.Deadline, kp.Ref)) == nil {
			add("keypackage %s (%s): no expiry index entry at its deadline %s", kp.Ref, kp.State, kp.Deadline)
		}
		sealed := v.secrets.Get(k)
		client := clientPools[kp.Pool]
		switch {
		case client && sealed != nil:
			add("keypackage %s of client-custody pool %s has private keys stored", kp.Ref, kp.Pool)
		case client:
		case kp.State.Live() && sealed == nil:
			add("keypackage %s is %s without private keys", kp.Ref, kp.State)
		case kp.State == fsm.Deleted && sealed != nil:
			add("keypackage %s is deleted but its private keys remain", kp.Ref)
		case erasedInCluster(sealed): // a later input of the log deletes it
		case sealed != nil && s.seal != nil:
			if plain, err := s.seal.open(k, sealed); err != nil {
				add("keypackage %s: private keys do not decrypt (%v)", kp.Ref, err)
			} else {
				clear(plain)
			}
		}
		return nil
	})
	checkPoolIndex(v, add)
	entries := 0
	_ = v.expiry.ForEach(func(k, val []byte) error {
		entries++
		at, ref, ok := parseIndexKey(k)
		if !ok {
			add("expiry index: malformed key %x", k)
			return nil
		}
		if len(val) != 0 {
			add("expiry index: entry %s at %s holds a %d-byte value, not none", ref, at, len(val))
		}
		if id, isTimer := pool.ClientTimerPool(ref); isTimer {
			if p, found, err := v.Pool(id); err == nil && (!found || !p.ClientAsk.Equal(at)) {
				add("expiry index: client re-ask %s at %s does not match a pool", id, at)
			}
			return nil
		}
		kp, found, err := v.KeyPackage(ref)
		if err == nil && (!found || !kp.Deadline.Equal(at)) {
			add("expiry index: entry %s at %s does not match a record", ref, at)
		}
		return nil
	})
	if entries != records+asks {
		add("expiry index holds %d entries for %d records and %d client re-asks", entries, records, asks)
	}
	_ = v.secrets.ForEach(func(k, sealed []byte) error {
		id := string(k)
		if p, ok := strings.CutPrefix(id, "pool:"); ok {
			if v.pools.Get([]byte(p)) == nil {
				add("secret %s: no such pool", id)
			} else if s.seal != nil { // a pool's signature key is checked like a bundle
				if plain, err := s.seal.open(k, sealed); err != nil {
					add("secret %s: the pool's signature key does not decrypt (%v)", id, err)
				} else {
					clear(plain)
				}
			}
		} else if v.kps.Get(k) == nil {
			add("secret %s: no such KeyPackage (not erased)", id)
		}
		return nil
	})
}

// checkPoolIndex checks every per-pool index entry against the records: the records
// side (a record without its entry) is checked with the records. Together they make
// the index and the records one to one, so the pool.CheckPool recount over the index
// counts every record.
func checkPoolIndex(v *txView, add func(string, ...any)) {
	_ = v.poolKPs.ForEach(func(k, val []byte) error {
		poolID, ref, ok := bytes.Cut(k, []byte("/"))
		if !ok {
			add("per-pool index: malformed key %q (no \"/\")", k)
			return nil
		}
		if len(val) != 0 {
			add("per-pool index: entry %q holds a %d-byte value, not none", k, len(val))
		}
		if v.pools.Get(poolID) == nil {
			add("per-pool index: entry %q names pool %q: no such pool", k, poolID)
		}
		kp, found, err := v.KeyPackage(string(ref))
		switch {
		case err != nil: // reported with the records
		case !found:
			add("per-pool index: entry %q names KeyPackage %q: no such record", k, ref)
		case kp.Pool != string(poolID):
			add("per-pool index: entry %q names KeyPackage %s of pool %s", k, ref, kp.Pool)
		}
		return nil
	})
}

func (s *Store) checkOutbox(v *txView, add func(string, ...any)) {
	n := 0
	_ = v.outboxIDs.ForEach(func(id, key []byte) error {
		n++
		val := v.outbox.Get(key)
		o, err := decodeOutbound(val)
		if val == nil || err != nil || o.ID != string(id) {
			add("outbox: id %x does not name its entry", id)
			return nil
		}
		if err := checkOutboundBody(o); err != nil {
			add("outbox %s: %v", id, err)
		}
		return nil
	})
	if m := v.outbox.Stats().KeyN; m != n {
		add("outbox holds %d entries, its id index %d", m, n)
	}
}

// poolKPs iterates a pool's records through the per-pool index. An entry without a
// readable record is skipped: checkPoolIndex and the record checks report it.
func poolKPs(v *txView, poolID string) iter.Seq[pool.KeyPackage] {
	prefix := poolKPKey(poolID, "")
	return func(yield func(pool.KeyPackage) bool) {
		c := v.poolKPs.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			kp, ok, err := v.KeyPackage(string(k[len(prefix):]))
			if err != nil || !ok {
				continue
			}
			if !yield(kp) {
				return
			}
		}
	}
}

// decodeRecord reads a stored JSON record the way it was written: valid UTF-8, no field
// the type does not have. encoding/json alone would read a damaged byte as U+FFFD, or a
// damaged name as an unknown field, and carry on.
func decodeRecord(b []byte, v any) error {
	if !utf8.Valid(b) {
		return errors.New("record is not valid UTF-8 (damaged)")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("record does not decode (damaged): %v", err)
	}
	return nil
}

// checkOutboundBody decodes an outbox message's body as its kind's type and checks that
// it names the message's pool (which picks the subject it is published on).
func checkOutboundBody(o events.Outbound) error {
	if err := events.ValidPoolID(o.Pool); err != nil {
		return err
	}
	var body struct {
		Pool string `json:"pool"`
	}
	var v any
	switch o.Kind {
	case events.KindUpload:
		v = &events.Upload{}
	case events.KindWithdraw:
		v = &events.Withdraw{}
	case events.KindStatus:
		v = &events.Status{}
	case events.KindTransition:
		v = &events.Transition{}
	case events.KindAlert:
		v = &events.Alert{}
	default:
		return fmt.Errorf("unknown kind %q", o.Kind)
	}
	if err := decodeRecord(o.Body, v); err != nil {
		return err
	}
	if err := json.Unmarshal(o.Body, &body); err != nil || body.Pool != o.Pool {
		return fmt.Errorf("body names pool %q, the entry %q", body.Pool, o.Pool)
	}
	return nil
}

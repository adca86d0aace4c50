package pool

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// Client custody (docs/client-custody.md): the MLS client holds a pool's private keys.
// The core asks it for KeyPackages (a `client.generate` message carrying the pool's whole
// outstanding demand), records what it submits once the edge has validated it, and tells
// it which refs to delete (`client.delete`) until it confirms. Both are re-sent on an
// exponential backoff driven by the core's time, so an offline client is never flooded.

// clientTimerPrefix marks a pool's re-ask timer in the expiry index (refs are hex, so
// the prefix cannot collide with a KeyPackage).
const clientTimerPrefix = "pool:"

// ClientTimerRef is the expiry-index ref of a client pool's re-ask timer.
func ClientTimerRef(pool string) string { return clientTimerPrefix + pool }

// ClientTimerPool returns the pool of a re-ask timer ref.
func ClientTimerPool(ref string) (string, bool) { return strings.CutPrefix(ref, clientTimerPrefix) }

// maxClientBackoff bounds the re-send interval of asks and delete instructions.
const maxClientBackoff = 24 * time.Hour

// defaultDeleteAlertAfter applies when a pool's delete_alert_after is 0.
const defaultDeleteAlertAfter = 24 * time.Hour

func isClient(p *Pool) bool { return p.Custody == events.CustodyClient }

// custodyOf normalises a registration's custody: "" for kpool (the stored default).
func custodyOf(c string) string {
	if c == events.CustodyClient {
		return c
	}
	return ""
}

// CustodyName is "kpool" or "client".
func CustodyName(p Pool) string {
	if isClient(&p) {
		return events.CustodyClient
	}
	return events.CustodyKpool
}

// backoff is the n-th re-send interval: upload_timeout doubled n−1 times, at most a day.
func backoff(cfg Config, n int) time.Duration {
	d := cfg.UploadTimeout
	for i := 1; i < n && d < maxClientBackoff; i++ {
		d *= 2
	}
	return min(d, maxClientBackoff)
}

func deleteAlertAfter(cfg Config) time.Duration {
	if cfg.DeleteAlertAfter > 0 {
		return cfg.DeleteAlertAfter
	}
	return defaultDeleteAlertAfter
}

// demand is what a pool asked for and has not received.
func demand(p *Pool) int { return p.Requested + b2i(p.LastResortRequested) }

// ask publishes the pool's whole outstanding demand and schedules the next ask.
func (t *txn) ask(p *Pool) {
	n := demand(p)
	t.emit(events.KindClientGenerate, p.ID, events.ClientGenerate{
		Pool: p.ID, RequestID: "r" + strconv.FormatUint(t.seq, 10), Count: n, CipherSuite: p.CipherSuite,
		MaxNotAfter: t.now.Add(p.Config.MaxLifetime).Unix(), LastResort: p.LastResortRequested,
	})
	if n == 0 {
		p.ClientAsk, p.ClientAsks = time.Time{}, 0
		return
	}
	p.ClientAsks++
	p.ClientAsk = t.now.Add(backoff(p.Config, p.ClientAsks))
}

// clientTimer runs a client pool's due re-ask.
func (t *txn) clientTimer(id string, at time.Time) error {
	p, ok, err := t.pool(id)
	if err != nil || !ok || !p.ClientAsk.Equal(at) {
		return err // a stale entry
	}
	if demand(p) == 0 {
		p.ClientAsk, p.ClientAsks = time.Time{}, 0
		return nil
	}
	t.ask(p)
	return nil
}

// submitted records a KeyPackage the client generated and the edge validated.
func (t *txn) submitted() error {
	in := t.in
	g := in.Generated
	p, err := t.mustPool()
	if err != nil {
		return err
	}
	if !isClient(p) {
		return reject(in, CodeCustody, "", fmt.Sprintf("pool %s holds its own private keys (custody kpool); submitted is for client-custody pools", p.ID), nil)
	}
	if g == nil {
		return reject(in, CodeInvalidInput, "", "a submitted KeyPackage reaches the core only after the worker validated it", nil)
	}
	if old, ok, err := t.kp(g.Ref); err != nil {
		return err
	} else if ok {
		if old.Pool == p.ID {
			return nil // the same KeyPackage again: nothing changes
		}
		return reject(in, CodeConflict, g.Ref, fmt.Sprintf("KeyPackage %s belongs to another pool", g.Ref), nil)
	}
	if g.LastResort && !p.LastResortRequested {
		return reject(in, CodeNotAsked, g.Ref, fmt.Sprintf("KeyPackage %s has the last_resort extension, but pool %s asked for no last-resort KeyPackage", g.Ref, p.ID), nil)
	}
	if !g.LastResort && p.Requested == 0 {
		return reject(in, CodeOverCap, g.Ref, fmt.Sprintf("pool %s asked for no more KeyPackages (more than asked would pass target %d toward hard_cap %d)", p.ID, p.Config.Target, p.Config.HardCap), nil)
	}
	if err := t.create(p, g, events.TypeSubmitted); err != nil {
		return err
	}
	// The client is alive: the next ask (if any is still due) comes after one base interval.
	p.ClientAsks = 0
	if demand(p) == 0 {
		t.ask(p) // tell it nothing more is wanted
	} else {
		p.ClientAsk = t.now.Add(backoff(p.Config, 1))
	}
	return nil
}

// orderDelete records that the client must delete k (entering deleted now) and queues
// the instruction, unless the client already reported it gone.
func (t *txn) orderDelete(p *Pool, k *KeyPackage) {
	k.DeletedAt = t.now
	if t.gone[k.Ref] {
		return
	}
	k.DeletePending, k.DeleteSends = true, 1
	p.DeletePending++
	t.queueDelete(p.ID, k.Ref)
	k.Deadline = t.deleteDeadline(p, k)
}

func (t *txn) queueDelete(pool, ref string) {
	if t.deletes == nil {
		t.deletes = map[string][]string{}
	}
	if !slices.Contains(t.deletes[pool], ref) {
		t.deletes[pool] = append(t.deletes[pool], ref)
	}
}

// deleteDeadline is when a pending deletion needs attention next: its next re-send
// (UpdatedAt is the last one), its alert, or the end of its tombstone's retention.
func (t *txn) deleteDeadline(p *Pool, k *KeyPackage) time.Time {
	d := minTime(k.UpdatedAt.Add(backoff(p.Config, k.DeleteSends)), k.DeletedAt.Add(p.Config.TombstoneRetention))
	if !k.DeleteAlerted {
		d = minTime(d, k.DeletedAt.Add(deleteAlertAfter(p.Config)))
	}
	if !d.After(t.now) {
		d = t.now.Add(time.Second)
	}
	return d
}

// pendingTimer handles a due pending deletion: give up at retention, alert, re-send.
func (t *txn) pendingTimer(p *Pool, k *KeyPackage) {
	if !t.now.Before(k.DeletedAt.Add(p.Config.TombstoneRetention)) {
		k.DeletePending = false
		p.DeletePending--
		t.alert(p.ID, events.AlertDeleteUnconfirmed, fmt.Sprintf("KeyPackage %s: deletion never confirmed by the client within tombstone_retention %s; tombstone purged", k.Ref, human(p.Config.TombstoneRetention)))
		p.Tombstones--
		t.purge(k)
		return
	}
	if !k.DeleteAlerted && !t.now.Before(k.DeletedAt.Add(deleteAlertAfter(p.Config))) {
		k.DeleteAlerted = true
		t.alert(p.ID, events.AlertDeleteUnconfirmed, fmt.Sprintf("KeyPackage %s: the client has not confirmed its deletion for %s (%d instructions sent)", k.Ref, human(t.now.Sub(k.DeletedAt)), k.DeleteSends))
	}
	if !t.now.Before(k.UpdatedAt.Add(backoff(p.Config, k.DeleteSends))) {
		k.DeleteSends++
		k.UpdatedAt = t.now
		t.queueDelete(p.ID, k.Ref)
	}
	k.Deadline = t.deleteDeadline(p, k)
}

// confirmDeleted ends a pending deletion: the tombstone stays for its retention.
func (t *txn) confirmDeleted(p *Pool, k *KeyPackage) error {
	k.DeletePending = false
	p.DeletePending--
	k.Deadline = k.DeletedAt.Add(p.Config.TombstoneRetention)
	k.UpdatedAt = t.now
	return t.settle(p, k)
}

// clientDeleted applies a client's confirmation that it deleted refs.
func (t *txn) clientDeleted() error {
	p, err := t.mustClientPool()
	if err != nil {
		return err
	}
	for _, ref := range t.in.Refs {
		k, ok, err := t.kp(ref)
		if err != nil {
			return err
		}
		if !ok || k.Pool != p.ID {
			continue // unknown here (purged, or never ours): nothing to confirm
		}
		switch {
		case k.State == fsm.Deleted && k.DeletePending:
			if err := t.confirmDeleted(p, k); err != nil {
				return err
			}
		case k.State != fsm.Deleted:
			// deleted by the client on its own: no Welcome for it can be processed now
			if err := t.lose(p, k, "deleted by the client"); err != nil {
				return err
			}
		}
	}
	return nil
}

// inventory reconciles the pool with the refs its client holds: refs kpool does not
// know or has deleted are ordered deleted; live ones the client no longer holds are lost.
// It visits every record of the pool: a reconciliation, not a per-event cost.
func (t *txn) inventory() error {
	p, err := t.mustClientPool()
	if err != nil {
		return err
	}
	lister, ok := t.v.(RefLister)
	if !ok {
		return fmt.Errorf("pool: the view cannot list a pool's KeyPackages (inventory of pool %s)", p.ID)
	}
	held := make(map[string]bool, len(t.in.Refs))
	for _, ref := range t.in.Refs {
		held[ref] = true
		k, ok, err := t.kp(ref)
		if err != nil {
			return err
		}
		switch {
		case ok && k.Pool != p.ID:
			// another pool's: not this inventory's business
		case !ok || k.State == fsm.Deleted:
			t.queueDelete(p.ID, ref)
		}
	}
	var refs []string
	if err := lister.PoolRefs(p.ID, func(ref string) bool {
		if !held[ref] {
			refs = append(refs, ref)
		}
		return true
	}); err != nil {
		return err
	}
	for _, ref := range refs {
		k, ok, err := t.kp(ref)
		if err != nil {
			return err
		}
		if ok && k.State.Live() {
			if err := t.lose(p, k, "absent from the client's inventory"); err != nil {
				return err
			}
		}
	}
	return nil
}

// lose retires a KeyPackage its client no longer holds; created and available ones are
// withdrawn from the DS. No delete instruction follows: the client has none to delete.
func (t *txn) lose(p *Pool, k *KeyPackage, why string) error {
	from := k.State
	if t.gone == nil {
		t.gone = map[string]bool{}
	}
	t.gone[k.Ref] = true
	if err := t.fire(p, k, fsm.Lose, "lost: "+why); err != nil {
		return err
	}
	if from == fsm.Available || from == fsm.Created {
		t.emit(events.KindWithdraw, p.ID, events.Withdraw{Pool: p.ID, Ref: k.Ref, Reason: "lost: " + why})
	}
	return nil
}

func (t *txn) mustClientPool() (*Pool, error) {
	p, err := t.mustPool()
	if err != nil {
		return nil, err
	}
	if !isClient(p) {
		return nil, reject(t.in, CodeCustody, "", fmt.Sprintf("pool %s holds its own private keys (custody kpool); %s is for client-custody pools", p.ID, t.in.Type), nil)
	}
	return p, nil
}

// flushDeletes emits one delete instruction per pool for the refs this Step queued.
func (t *txn) flushDeletes(id string) {
	if refs := t.deletes[id]; len(refs) > 0 {
		t.emit(events.KindClientDelete, id, events.ClientDelete{Pool: id, Refs: refs})
	}
}

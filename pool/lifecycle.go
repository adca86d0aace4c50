package pool

import (
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

func kindOf(k *KeyPackage) fsm.Kind {
	if k.LastResort {
		return fsm.LastResort
	}
	return fsm.Regular
}

// counter returns the per-state counter of c for s (nil for no counter).
func counter(c *events.Counts, s fsm.State) *int {
	switch s {
	case fsm.Created:
		return &c.Created
	case fsm.Available:
		return &c.Available
	case fsm.Claimed:
		return &c.Claimed
	case fsm.Expired:
		return &c.Expired
	}
	return nil
}

// fire runs one fsm transition and keeps every pool counter in step with it. This is
// the only place a KeyPackage's state changes.
func (t *txn) fire(p *Pool, k *KeyPackage, ev fsm.Event, reason string) error {
	from := k.State
	to, err := fsm.Fire(k.Ref, from, ev, kindOf(k))
	if err != nil {
		return err
	}
	k.UpdatedAt = t.now
	if reason != "" {
		k.Reason = reason
	}
	t.transition(k, from, to, string(ev))
	if to == from {
		return nil
	}
	k.State = to
	move(&p.Counts, from, to)
	if k.LastResort {
		move(&p.LastResortCounts, from, to)
	}
	if from == fsm.Available {
		if k.Fresh && !k.LastResort {
			p.Fresh--
		}
		k.Fresh = false
		if k.Held {
			k.Held = false
			if p.Held == k.Ref {
				p.Held = ""
			}
		}
	}
	if from.Live() && !to.Live() {
		t.unbucket(p, k)
		if p.LastResort == k.Ref {
			p.LastResort, p.LastResortUsed, p.LastResortStale = "", false, false
		}
		if p.LastResortPending == k.Ref {
			p.LastResortPending = ""
		}
	}
	switch to {
	case fsm.Expired:
		k.Deadline = time.Unix(k.NotAfter, 0).UTC().Add(p.Config.DeleteGrace)
	case fsm.Deleted:
		p.Tombstones++
		k.Deadline = t.now.Add(p.Config.TombstoneRetention)
		if isClient(p) {
			t.orderDelete(p, k) // the keys are the client's: tell it to delete them
		} else {
			t.eraseKeys(k.Ref)
		}
	}
	return nil
}

// move counts one KeyPackage leaving state from for state to (Deleted is cumulative).
func move(c *events.Counts, from, to fsm.State) {
	if n := counter(c, from); n != nil {
		*n--
	}
	if n := counter(c, to); n != nil {
		*n++
	}
	if to == fsm.Deleted {
		c.Deleted++
	}
}

func (t *txn) unbucket(p *Pool, k *KeyPackage) {
	e := t.expiries(p)
	if e[k.Bucket]--; e[k.Bucket] <= 0 {
		delete(e, k.Bucket)
	}
}

// settle runs every timed action of k that is due at now, in order. Each KeyPackage has
// exactly one deadline, so a Step's timer work is proportional to what is due.
func (t *txn) settle(p *Pool, k *KeyPackage) error {
	for i := 0; !t.purgedRef(k.Ref) && !k.Deadline.After(t.now); i++ {
		if i > 8 { // every action moves the deadline forward or ends the record
			return fmt.Errorf("pool: KeyPackage %s stuck at deadline %s in state %s", k.Ref, k.Deadline, k.State)
		}
		if err := t.timer(p, k); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) timer(p *Pool, k *KeyPackage) error {
	switch k.State {
	case fsm.Created:
		if !k.Deadline.Before(k.ExpiresAt) {
			return t.expire(p, k, "not acknowledged before not_after − expiry_margin")
		}
		if k.Attempt < p.Config.MaxUploadAttempts {
			t.upload(p, k, k.Attempt+1)
			return nil
		}
		if err := t.fire(p, k, fsm.UploadFailed, fmt.Sprintf("upload not acknowledged after %d attempts", k.Attempt)); err != nil {
			return err
		}
		t.alert(p.ID, events.AlertUploadFailed, fmt.Sprintf("KeyPackage %s: upload not acknowledged after %d attempts of %s", k.Ref, k.Attempt, human(p.Config.UploadTimeout)))
	case fsm.Available:
		if k.Fresh && k.Deadline.Equal(k.FreshUntil) {
			k.Fresh = false
			if k.LastResort {
				if p.LastResort == k.Ref {
					p.LastResortStale = true
				}
			} else {
				p.Fresh--
			}
			k.Deadline = k.ExpiresAt
			k.UpdatedAt = t.now
			return nil
		}
		// Held at most until its last second begins: OpenMLS refuses a KeyPackage at
		// not_after, so one offered in that second may be refused by the group.
		lastSecond := time.Unix(k.NotAfter-1, 0).UTC()
		if k.Deadline.Before(lastSecond) && t.isLast(p, k) {
			// never retire the last one before its replacement is acknowledged
			k.Held, k.Deadline, k.UpdatedAt = true, lastSecond, t.now
			if !k.LastResort {
				p.Held = k.Ref
			}
			return nil
		}
		if k.Held {
			return t.expire(p, k, "held as the last available until the last second before not_after")
		}
		return t.expire(p, k, "reached not_after − expiry_margin")
	case fsm.Claimed:
		return t.expire(p, k, "reached not_after − expiry_margin")
	case fsm.Expired:
		return t.fire(p, k, fsm.Delete, "delete_grace after not_after passed")
	case fsm.Deleted:
		if k.DeletePending {
			t.pendingTimer(p, k)
			return nil
		}
		p.Tombstones--
		t.purge(k)
	}
	return nil
}

// isLast reports whether k is the pool's only available KeyPackage of its kind.
func (t *txn) isLast(p *Pool, k *KeyPackage) bool {
	if k.LastResort {
		return p.LastResort == k.Ref
	}
	return regularAvailable(p) == 1
}

// expire retires k; created and available ones are withdrawn from the DS (an upload
// of a created one may still land there).
func (t *txn) expire(p *Pool, k *KeyPackage, reason string) error {
	from := k.State
	if err := t.fire(p, k, fsm.Expire, reason); err != nil {
		return err
	}
	if from == fsm.Available || from == fsm.Created {
		t.emit(events.KindWithdraw, p.ID, events.Withdraw{Pool: p.ID, Ref: k.Ref, Reason: reason})
	}
	return nil
}

// upload (re-)sends k to the DS and restarts its upload timer.
func (t *txn) upload(p *Pool, k *KeyPackage, attempt int) {
	k.Attempt = attempt
	k.Deadline = minTime(t.now.Add(p.Config.UploadTimeout), k.ExpiresAt)
	k.UpdatedAt = t.now
	t.emit(events.KindUpload, p.ID, events.Upload{Pool: p.ID, Ref: k.Ref, KeyPackage: k.KeyPackage, NotAfter: k.NotAfter, LastResort: k.LastResort, Attempt: attempt})
}

// available puts a just-acknowledged k on offer and retires what it replaces.
func (t *txn) makeAvailable(p *Pool, k *KeyPackage) error {
	if err := t.fire(p, k, fsm.UploadAck, ""); err != nil {
		return err
	}
	k.Reason = ""
	if t.now.Before(k.FreshUntil) {
		k.Fresh, k.Deadline = true, k.FreshUntil
		if !k.LastResort {
			p.Fresh++
		}
	} else {
		k.Deadline = k.ExpiresAt
	}
	if k.LastResort {
		old := p.LastResort
		p.LastResort, p.LastResortUsed, p.LastResortStale = k.Ref, false, !k.Fresh
		if p.LastResortPending == k.Ref {
			p.LastResortPending = ""
		}
		if old != "" && old != k.Ref {
			if o, ok, err := t.kp(old); err != nil {
				return err
			} else if ok && o.State == fsm.Available {
				if err := t.expire(p, o, "replaced by last resort "+k.Ref); err != nil {
					return err
				}
			}
		}
		return t.settle(p, k)
	}
	if p.Held != "" {
		h, ok, err := t.kp(p.Held)
		if err != nil {
			return err
		}
		if ok && h.State == fsm.Available {
			if err := t.expire(p, h, "held past not_after − expiry_margin until replacement "+k.Ref+" was acknowledged"); err != nil {
				return err
			}
		}
		p.Held = ""
	}
	return t.settle(p, k)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

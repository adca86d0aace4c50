package persistence

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/pool"
)

// fakeStep is a small deterministic stand-in for pool.Core.Step: enough lifecycle to
// produce every kind of Ready field (records, index moves, erase, purge, outbox,
// journal, dedup) so the store can be tested before and independently of the core.
func fakeStep(v pool.View, ev events.Event) (pool.Ready, error) {
	if _, seen, err := v.Seen(ev.Pool, ev.ID); err != nil || seen {
		return pool.Ready{Duplicate: seen}, err
	}
	m, err := v.Meta()
	if err != nil {
		return pool.Ready{}, err
	}
	now := m.Time
	if ev.Time.After(now) {
		now = ev.Time.UTC()
	}
	r := pool.Ready{Seq: m.Seq + 1, Input: ev, Meta: pool.Meta{Seq: m.Seq + 1, Time: now}}
	reject := func(code, ref, why string) (pool.Ready, error) {
		return pool.Ready{}, &pool.RejectError{Code: code, EventID: ev.ID, Pool: ev.Pool, Ref: ref, Reason: why}
	}
	p, havePool, err := v.Pool(ev.Pool)
	if err != nil {
		return pool.Ready{}, err
	}
	changed := map[string]*pool.Pool{}
	getPool := func(id string) (*pool.Pool, error) {
		if q, ok := changed[id]; ok {
			return q, nil
		}
		q, ok, err := v.Pool(id)
		if err != nil || !ok {
			return nil, fmt.Errorf("pool %s: missing (%v)", id, err)
		}
		changed[id] = &q
		return &q, nil
	}
	move := func(kp *pool.KeyPackage, to fsm.State, deadline time.Time) {
		q, _ := getPool(kp.Pool)
		adjust(&q.Counts, kp.State, -1)
		adjust(&q.Counts, to, +1)
		r.Transitions = append(r.Transitions, events.Transition{Pool: kp.Pool, Ref: kp.Ref, From: string(kp.State), To: string(to), EventID: ev.ID, Time: now})
		r.IndexDel = append(r.IndexDel, pool.IndexEntry{At: kp.Deadline, Ref: kp.Ref})
		kp.State, kp.Deadline, kp.UpdatedAt = to, deadline, now
		r.IndexPut = append(r.IndexPut, pool.IndexEntry{At: deadline, Ref: kp.Ref})
		if to == fsm.Deleted {
			r.Erase = append(r.Erase, kp.Ref)
		}
		r.KeyPackages = append(r.KeyPackages, *kp)
	}
	switch ev.Type {
	case events.TypePoolRegistered:
		if havePool {
			return reject(pool.CodeConflict, "", "pool exists")
		}
		p = pool.Pool{ID: ev.Pool, Identity: ev.Register.Identity, CipherSuite: ev.Register.CipherSuite,
			SignatureKey: ev.Register.SignatureKey, Config: pool.DefaultConfig()}
		changed[p.ID] = &p
	case events.TypeGenerated:
		if !havePool {
			return reject(pool.CodeUnknownPool, "", "no such pool")
		}
		g := ev.Generated
		if _, ok, _ := v.KeyPackage(g.Ref); ok {
			return reject(pool.CodeConflict, g.Ref, "ref exists")
		}
		q, _ := getPool(ev.Pool)
		q.Counts.Created++
		kp := pool.KeyPackage{Ref: g.Ref, Pool: ev.Pool, State: fsm.Created, KeyPackage: g.KeyPackage,
			NotBefore: g.NotBefore, NotAfter: g.NotAfter, Deadline: now.Add(time.Hour), CreatedAt: now, UpdatedAt: now}
		r.KeyPackages = append(r.KeyPackages, kp)
		r.IndexPut = append(r.IndexPut, pool.IndexEntry{At: kp.Deadline, Ref: kp.Ref})
		body, _ := json.Marshal(events.Upload{Pool: ev.Pool, Ref: g.Ref, KeyPackage: g.KeyPackage, NotAfter: g.NotAfter})
		r.Outbox = append(r.Outbox, events.Outbound{ID: "upload-" + g.Ref, Kind: events.KindUpload, Pool: ev.Pool, Body: body})
	case events.TypeUploadAck, events.TypeConsumed, events.TypeClaimed:
		kp, ok, err := v.KeyPackage(ev.Ref)
		if err != nil {
			return pool.Ready{}, err
		}
		if !ok {
			return reject(pool.CodeUnknownRef, ev.Ref, "no such KeyPackage")
		}
		if kp.Pool != ev.Pool {
			return reject(pool.CodeWrongPool, ev.Ref, "belongs to "+kp.Pool)
		}
		switch {
		case ev.Type == events.TypeUploadAck && kp.State == fsm.Created:
			move(&kp, fsm.Available, time.Unix(kp.NotAfter, 0).UTC())
		case ev.Type == events.TypeClaimed && kp.State == fsm.Available:
			move(&kp, fsm.Claimed, kp.Deadline)
		case ev.Type == events.TypeConsumed && (kp.State == fsm.Available || kp.State == fsm.Claimed):
			move(&kp, fsm.Deleted, now.Add(24*time.Hour))
		default:
			return reject(pool.CodeInvalidTransition, ev.Ref, fmt.Sprintf("%s in state %s", ev.Type, kp.State))
		}
	case events.TypeExpiryTick:
		var due []pool.IndexEntry
		if err := v.Due(now, func(e pool.IndexEntry) bool { due = append(due, e); return true }); err != nil {
			return pool.Ready{}, err
		}
		for _, e := range due {
			kp, ok, err := v.KeyPackage(e.Ref)
			if err != nil || !ok {
				return pool.Ready{}, fmt.Errorf("index names %s: %v", e.Ref, err)
			}
			switch kp.State {
			case fsm.Created, fsm.Available, fsm.Claimed:
				move(&kp, fsm.Expired, now.Add(time.Hour))
			case fsm.Expired:
				move(&kp, fsm.Deleted, now.Add(time.Hour))
			case fsm.Deleted:
				q, _ := getPool(kp.Pool)
				q.Counts.Deleted--
				r.IndexDel = append(r.IndexDel, e)
				r.Purge = append(r.Purge, kp.Ref)
			}
		}
	default:
		return reject(pool.CodeInvalidInput, "", "fake core does not handle "+string(ev.Type))
	}
	for _, id := range slices.Sorted(maps.Keys(changed)) {
		q := changed[id]
		q.StatusSeq++
		r.Pools = append(r.Pools, *q)
		body, _ := json.Marshal(events.Status{Pool: q.ID, Seq: q.StatusSeq, Counts: q.Counts})
		r.Outbox = append(r.Outbox, events.Outbound{ID: fmt.Sprintf("status-%s-%d", q.ID, q.StatusSeq), Kind: events.KindStatus, Pool: q.ID, Body: body})
	}
	return r, nil
}

func adjust(c *events.Counts, s fsm.State, d int) {
	switch s {
	case fsm.Created:
		c.Created += d
	case fsm.Available:
		c.Available += d
	case fsm.Claimed:
		c.Claimed += d
	case fsm.Expired:
		c.Expired += d
	case fsm.Deleted:
		c.Deleted += d
	}
}

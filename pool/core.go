package pool

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

// DefaultConfig is the pool policy unless the worker or the pool overrides it.
func DefaultConfig() Config {
	return Config{
		Target:             100,
		LowWatermark:       20,
		HardCap:            200,
		Lifetime:           84 * 24 * time.Hour,
		NotBeforeBackdate:  time.Hour,
		MaxLifetime:        84*24*time.Hour + time.Hour,
		ExpiryMargin:       7 * 24 * time.Hour,
		DeleteGrace:        7 * 24 * time.Hour,
		UploadTimeout:      5 * time.Minute,
		MaxUploadAttempts:  5,
		TombstoneRetention: 30 * 24 * time.Hour,
	}
}

// Core applies inputs. It holds only the worker's default configuration (a complete
// Config; the zero value means DefaultConfig()); all state is read through a View.
type Core struct {
	Defaults Config
}

// Step applies one input to the state seen through v and returns what changed. An error
// means the input was rejected and nothing changed; a *RejectError says what and why.
// A Step costs O(1) in the pool size plus O(KeyPackages whose timers are due).
func (c *Core) Step(v View, in events.Event) (Ready, error) {
	if err := events.Validate(in); err != nil {
		return Ready{}, reject(in, CodeInvalidInput, "", err.Error(), err)
	}
	// Ids are deduplicated per pool, and only the same event is a duplicate: an id reused
	// for another event is refused, never silently dropped.
	digest, seen, err := v.Seen(in.Pool, in.ID)
	if err != nil {
		return Ready{}, err
	}
	if seen {
		if digest == in.Digest() {
			return Ready{Input: in, Duplicate: true}, nil
		}
		return Ready{}, reject(in, CodeIDReused, in.Ref, fmt.Sprintf("event id %q was already applied in %s to a different event; an id names one event per pool", in.ID, poolName(in.Pool)), nil)
	}
	meta, err := v.Meta()
	if err != nil {
		return Ready{}, err
	}
	now := meta.Time
	if in.Time.After(now) {
		now = in.Time.UTC()
	}
	t := newTxn(v, in, meta, now)
	if err := t.due(); err != nil {
		return Ready{}, err
	}
	if err := c.apply(t); err != nil {
		return Ready{}, err
	}
	t.finish()
	if t.err != nil {
		return Ready{}, t.err
	}
	return t.ready(), nil
}

// due runs every timer that has come due by now, in index order.
func (t *txn) due() error {
	var entries []IndexEntry
	if err := t.v.Due(t.now, func(e IndexEntry) bool { entries = append(entries, e); return true }); err != nil {
		return err
	}
	for _, e := range entries {
		if id, ok := ClientTimerPool(e.Ref); ok {
			if err := t.clientTimer(id, e.At); err != nil {
				return err
			}
			continue
		}
		k, ok, err := t.kp(e.Ref)
		if err != nil {
			return err
		}
		if !ok || !k.Deadline.Equal(e.At) {
			continue // already handled in this step, or a stale entry
		}
		p, ok, err := t.pool(k.Pool)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("pool: KeyPackage %s names unknown pool %q", k.Ref, k.Pool)
		}
		if err := t.settle(p, k); err != nil {
			return err
		}
	}
	return nil
}

func poolName(id string) string {
	if id == "" {
		return "the worker (no pool)"
	}
	return "pool " + id
}

func reject(in events.Event, code, ref, reason string, err error) *RejectError {
	return &RejectError{Code: code, EventID: in.ID, Pool: in.Pool, Ref: ref, Reason: reason, Err: err}
}

func (c *Core) apply(t *txn) error {
	in := t.in
	switch in.Type {
	case events.TypePoolRegistered:
		return c.register(t)
	case events.TypeExpiryTick:
		if in.Pool == "" {
			return nil
		}
		_, err := t.mustPool()
		return err
	case events.TypeReplenish:
		p, err := t.mustPool()
		if err != nil {
			return err
		}
		t.force = p.ID
		t.refill(p, true)
		t.reissue(p)
		return nil
	case events.TypeGenerated:
		return t.generated()
	case events.TypeSubmitted:
		return t.submitted()
	case events.TypeDeleted:
		return t.clientDeleted()
	case events.TypeInventory:
		return t.inventory()
	case events.TypeGenerationFailed:
		p, err := t.mustPool()
		if err != nil {
			return err
		}
		if p.GenerationError != in.Reason {
			p.GenerationError = in.Reason
			t.alert(p.ID, events.AlertGenerationFailed, fmt.Sprintf("KeyPackages for pool %s cannot be generated: %s", p.ID, in.Reason))
		}
		return nil
	}
	p, err := t.mustPool()
	if err != nil {
		return err
	}
	k, err := t.mustKP(p)
	if err != nil {
		return err
	}
	switch in.Type {
	case events.TypeUploadAck:
		return t.check(k, t.makeAvailable(p, k))
	case events.TypeUploadRejected:
		return t.rejected(p, k)
	case events.TypeClaimed:
		return t.claimed(p, k)
	case events.TypeConsumed:
		return t.consumed(p, k)
	}
	return reject(in, CodeInvalidInput, "", fmt.Sprintf("event type %q is not an input of the core", in.Type), nil)
}

func (t *txn) mustPool() (*Pool, error) {
	p, ok, err := t.pool(t.in.Pool)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, reject(t.in, CodeUnknownPool, t.in.Ref, fmt.Sprintf("no pool %q is registered (event %s)", t.in.Pool, t.in.Type), nil)
	}
	return p, nil
}

func (t *txn) mustKP(p *Pool) (*KeyPackage, error) {
	in := t.in
	k, ok, err := t.kp(in.Ref)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, reject(in, CodeUnknownRef, in.Ref, fmt.Sprintf("no KeyPackage %s in pool %s (never generated here, or its tombstone was purged); event %s", in.Ref, p.ID, in.Type), nil)
	}
	if k.Pool != p.ID {
		return nil, reject(in, CodeWrongPool, in.Ref, fmt.Sprintf("KeyPackage %s belongs to pool %s, not %s; event %s", k.Ref, k.Pool, p.ID, in.Type), nil)
	}
	return k, nil
}

// check turns an fsm refusal into a RejectError naming pool, ref, state and event.
func (t *txn) check(k *KeyPackage, err error) error {
	var te *fsm.TransitionError
	if errors.As(err, &te) {
		return reject(t.in, CodeInvalidTransition, k.Ref, te.Error()+" (pool "+k.Pool+")", te)
	}
	return err
}

func (t *txn) rejected(p *Pool, k *KeyPackage) error {
	in := t.in
	// a retry keeps the state, but only where the rejection itself would be valid
	if _, err := fsm.Fire(k.Ref, k.State, fsm.UploadRejected, kindOf(k)); err != nil {
		return t.check(k, err)
	}
	if in.Retry && k.Attempt < p.Config.MaxUploadAttempts {
		t.upload(p, k, k.Attempt+1)
		return nil
	}
	kind, detail := events.AlertUploadRejected, fmt.Sprintf("KeyPackage %s rejected by the delivery service: %s", k.Ref, in.Reason)
	if in.Retry {
		kind, detail = events.AlertUploadFailed, fmt.Sprintf("KeyPackage %s rejected after %d attempts: %s", k.Ref, k.Attempt, in.Reason)
	}
	if err := t.fire(p, k, fsm.UploadRejected, "rejected: "+in.Reason); err != nil {
		return t.check(k, err)
	}
	t.alert(p.ID, kind, detail)
	return nil
}

func (t *txn) claimed(p *Pool, k *KeyPackage) error {
	freshBefore := p.Fresh
	if err := t.fire(p, k, fsm.Claim, ""); err != nil {
		return t.check(k, err)
	}
	t.countClaim(p, freshBefore)
	if k.LastResort {
		t.useLastResort(p, k, "claimed")
		return nil
	}
	k.Deadline = k.ExpiresAt // a held one is past it: settle expires it now
	return t.settle(p, k)
}

func (t *txn) consumed(p *Pool, k *KeyPackage) error {
	if err := t.fire(p, k, fsm.Consume, "consumed by its owner"); err != nil {
		return t.check(k, err)
	}
	if k.LastResort && k.State == fsm.Available {
		t.useLastResort(p, k, "consumed")
	}
	return nil
}

// useLastResort marks a reused last resort; the first use raises the alert and (through
// refill) requests a replacement.
func (t *txn) useLastResort(p *Pool, k *KeyPackage, how string) {
	if k.Used {
		return
	}
	k.Used = true
	if p.LastResort == k.Ref {
		p.LastResortUsed = true
	}
	t.alert(p.ID, events.AlertLastResortUsed, fmt.Sprintf("last-resort KeyPackage %s was %s; rotating it", k.Ref, how))
}

func (t *txn) generated() error {
	p, err := t.mustPool()
	if err != nil {
		return err
	}
	if isClient(p) {
		return reject(t.in, CodeCustody, t.in.Generated.Ref, fmt.Sprintf("pool %s is client custody: kpool generates no KeyPackages for it", p.ID), nil)
	}
	if old, ok, err := t.kp(t.in.Generated.Ref); err != nil {
		return err
	} else if ok {
		return reject(t.in, CodeConflict, old.Ref, fmt.Sprintf("KeyPackage %s already exists in pool %s (state %s)", old.Ref, old.Pool, old.State), nil)
	}
	return t.create(p, t.in.Generated, events.TypeGenerated)
}

// create records a new KeyPackage (generated by kpool, or submitted by a client) in
// created and uploads it, within the pool's lifetime rules and hard cap.
func (t *txn) create(p *Pool, g *events.Generated, how events.Type) error {
	in := t.in
	cfg := p.Config
	if life := time.Duration(g.NotAfter-g.NotBefore) * time.Second; life > cfg.MaxLifetime {
		return reject(in, CodeInvalidInput, g.Ref, fmt.Sprintf("lifetime %s exceeds max_lifetime %s of pool %s", human(life), human(cfg.MaxLifetime), p.ID), nil)
	}
	notAfter := time.Unix(g.NotAfter, 0).UTC()
	expires := notAfter.Add(-cfg.ExpiryMargin)
	if !expires.After(t.now) {
		return reject(in, CodeInvalidInput, g.Ref, fmt.Sprintf("not_after %s − expiry_margin %s is not after now %s: it could never be offered", notAfter.Format(time.RFC3339), human(cfg.ExpiryMargin), t.now.Format(time.RFC3339)), nil)
	}
	requested := p.Requested
	lrRequested := p.LastResortRequested
	if g.LastResort {
		if !lastResortOn(p) {
			return reject(in, CodeInvalidInput, g.Ref, fmt.Sprintf("pool %s keeps no last-resort KeyPackage (policy last_resort: false)", p.ID), nil)
		}
		if p.LastResortPending != "" {
			return reject(in, CodeConflict, g.Ref, fmt.Sprintf("pool %s already has last resort %s awaiting upload", p.ID, p.LastResortPending), nil)
		}
		lrRequested = false
	} else {
		requested = max(requested-1, 0)
	}
	if n := live(p.Counts) + 1 + requested + b2i(lrRequested); n > cfg.HardCap {
		return reject(in, CodeOverCap, g.Ref, fmt.Sprintf("pool %s would hold %d KeyPackages (live + requested), over hard_cap %d", p.ID, n, cfg.HardCap), nil)
	}
	p.Requested, p.LastResortRequested = requested, lrRequested
	p.GenerationError = ""
	w := bucketWidth(cfg)
	k := t.addKP(KeyPackage{
		Ref: g.Ref, Pool: p.ID, State: fsm.Created, KeyPackage: g.KeyPackage,
		NotBefore: g.NotBefore, NotAfter: g.NotAfter, LastResort: g.LastResort,
		CreatedAt: t.now, ExpiresAt: expires, FreshUntil: notAfter.Add(-2 * cfg.ExpiryMargin),
		Bucket: expires.Unix() / w * w,
	})
	t.expiries(p)[k.Bucket]++
	p.Counts.Created++
	if k.LastResort {
		p.LastResortCounts.Created++
		p.LastResortPending = k.Ref
	}
	t.transition(k, "", fsm.Created, string(how))
	t.upload(p, k, 1)
	return nil
}

func (c *Core) register(t *txn) error {
	in := t.in
	reg := in.Register
	p, ok, err := t.pool(in.Pool)
	if err != nil {
		return err
	}
	// a later register changes only the fields it gives
	policy := reg.Policy
	if ok {
		policy = p.Policy.Merge(reg.Policy)
	}
	cfg := c.Effective(policy)
	if err := cfg.Validate(); err != nil {
		return reject(in, CodeInvalidConfig, "", err.Error(), err)
	}
	if err := checkProfile(policy, reg, t.now); err != nil {
		return reject(in, CodeInvalidConfig, "", err.Error(), err)
	}
	if !ok {
		t.addPool(Pool{ID: in.Pool, Identity: reg.Identity, CipherSuite: reg.CipherSuite,
			SignatureKey: reg.SignatureKey, Policy: reg.Policy, Config: cfg, CreatedAt: t.now,
			Custody: custodyOf(reg.Custody)})
		t.force = in.Pool
		return nil
	}
	var diff string
	switch {
	case p.Identity != reg.Identity:
		diff = fmt.Sprintf("identity %q, not %q", p.Identity, reg.Identity)
	case p.CipherSuite != reg.CipherSuite:
		diff = fmt.Sprintf("cipher suite %d, not %d", p.CipherSuite, reg.CipherSuite)
	case !bytes.Equal(p.SignatureKey, reg.SignatureKey):
		diff = "another signature key"
	case reg.Custody != "" && custodyOf(reg.Custody) != p.Custody:
		diff = fmt.Sprintf("custody %s, not %s", CustodyName(*p), reg.Custody)
	}
	if diff != "" {
		return reject(in, CodeConflict, "", fmt.Sprintf("pool %s is registered with %s; a pool's identity, cipher suite, signature key and custody cannot change", p.ID, diff), nil)
	}
	if n := live(p.Counts); cfg.HardCap < n {
		return reject(in, CodeInvalidConfig, "", fmt.Sprintf("hard_cap %d is below the %d KeyPackages pool %s holds", cfg.HardCap, n, p.ID), nil)
	}
	if cfg.Target > p.Config.Target {
		t.force = p.ID // a raised target is filled now, not at the next low watermark
	}
	p.Policy, p.Config = policy, cfg
	// cancel requests that no longer fit; late `generated` inputs for them are refused
	if live(p.Counts) >= cfg.HardCap || !lastResortOn(p) {
		p.LastResortRequested = false
	}
	p.Requested = max(0, min(p.Requested, cfg.HardCap-live(p.Counts)-b2i(p.LastResortRequested)))
	return nil
}

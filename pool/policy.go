package pool

import (
	"fmt"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
)

func live(c events.Counts) int { return c.Created + c.Available + c.Claimed }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// reserved is what the hard cap counts: live KeyPackages plus outstanding requests.
func reserved(p *Pool) int { return live(p.Counts) + p.Requested + b2i(p.LastResortRequested) }

// regularAvailable excludes the last resort, which is offered only when nothing else is.
func regularAvailable(p *Pool) int { return p.Counts.Available - p.LastResortCounts.Available }

func needLastResort(p *Pool) bool {
	return lastResortOn(p) && (p.LastResort == "" || p.LastResortUsed || p.LastResortStale) &&
		p.LastResortPending == "" && !p.LastResortRequested
}

// refill asks for KeyPackages when the fresh count is below the low watermark (or when
// forced: registration and replenish), up to target and never past the hard cap.
//
// Regular KeyPackages come first: when the cap is tight, the pool's working set matters
// more than rotating the last resort, which is requested as soon as there is room.
func (t *txn) refill(p *Pool, force bool) {
	cfg := p.Config
	if p.Fresh < cfg.LowWatermark || force {
		inflight := p.Counts.Created - p.LastResortCounts.Created + p.Requested
		if n := min(cfg.Target-p.Fresh-inflight, cfg.HardCap-reserved(p)); n > 0 {
			p.Requested += n
			t.request(p, GenerateRequest{Pool: p.ID, Count: n})
		}
	}
	if needLastResort(p) && reserved(p) < cfg.HardCap {
		p.LastResortRequested = true
		t.request(p, GenerateRequest{Pool: p.ID, Count: 1, LastResort: true})
	}
}

// request hands a generate request to the edge; a client pool's demand is asked of its
// client instead (finish publishes it).
func (t *txn) request(p *Pool, r GenerateRequest) {
	if !isClient(p) {
		t.generate = append(t.generate, r)
	}
}

// reissue re-emits every outstanding request (after a crash the edge may have lost
// them; extra `generated` inputs beyond the cap are refused, so this cannot overfill).
func (t *txn) reissue(p *Pool) {
	if isClient(p) {
		return // finish asks the client again (forced)
	}
	t.generate = slices.DeleteFunc(t.generate, func(g GenerateRequest) bool { return g.Pool == p.ID })
	t.generate = append(t.generate, p.Outstanding()...)
}

// Outstanding is what the pool record still owes in generate requests, the last resort
// first: the counters are durable, so the edge resumes an interrupted refill from them.
func (p *Pool) Outstanding() []GenerateRequest {
	if isClient(p) {
		return nil // its client generates: the core asks it (client.generate)
	}
	var out []GenerateRequest
	if p.LastResortRequested {
		out = append(out, GenerateRequest{Pool: p.ID, Count: 1, LastResort: true})
	}
	if p.Requested > 0 {
		out = append(out, GenerateRequest{Pool: p.ID, Count: p.Requested})
	}
	return out
}

// human writes a duration as days, hours, minutes and seconds ("7d", "1h30m", "90s").
func human(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	s := ""
	if d < 0 {
		s, d = "-", -d
	}
	for _, u := range []struct {
		name string
		d    time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}} {
		if n := d / u.d; n > 0 {
			s += fmt.Sprintf("%d%s", n, u.name)
			d -= n * u.d
		}
	}
	if d > 0 {
		s += d.String()
	}
	return s
}

// countClaim tracks claims per upload_timeout window and raises one claim_storm alert
// per window when the claims in it reach what was fresh: at that rate the pool empties
// before a refill (which takes about one upload_timeout) can land.
func (t *txn) countClaim(p *Pool, freshBefore int) {
	if p.ClaimWindowStart.IsZero() || !t.now.Before(p.ClaimWindowStart.Add(p.Config.UploadTimeout)) {
		p.ClaimWindowStart, p.ClaimWindowCount, p.ClaimStormRaised = t.now, 0, false
	}
	p.ClaimWindowCount++
	if p.ClaimWindowCount >= max(freshBefore, 2) && !p.ClaimStormRaised { // one claim is not a rate
		p.ClaimStormRaised = true
		t.alert(p.ID, events.AlertClaimStorm, fmt.Sprintf("%d claims within %s with %d fresh KeyPackages: the pool may empty before a refill lands", p.ClaimWindowCount, human(p.Config.UploadTimeout), freshBefore))
	}
}

func health(p *Pool) string {
	switch {
	case p.GenerationError != "": // the cause outranks its symptoms (depleted, low)
		return events.HealthGenerationFailing
	case regularAvailable(p) == 0:
		return events.HealthDepleted
	case p.Fresh < p.Config.LowWatermark:
		return events.HealthLow
	}
	return events.HealthHealthy
}

// nextExpiry is the start of the earliest bucket holding a live KeyPackage's
// not_after − expiry_margin (precision: bucketWidth), nil when nothing is live.
func nextExpiry(p *Pool) *time.Time {
	if len(p.Expiries) == 0 {
		return nil
	}
	first := true
	var m int64
	for b := range p.Expiries { // no key slice: this runs twice per pool and Step
		if first || b < m {
			m, first = b, false
		}
	}
	at := time.Unix(m, 0).UTC()
	return &at
}

// StatusOf is a pool's status as the core publishes it, built from its record: the
// record's status sequence, stamped with time at (the core's time). Readers that find no
// published status (an API call before the first relay) use it.
func StatusOf(p Pool, at time.Time) events.Status {
	s := statusBody(&p)
	s.Seq, s.Time = p.StatusSeq, at
	return s
}

// statusBody is the pool's status at seq 0 and zero time (compared for changes).
func statusBody(p *Pool) events.Status {
	return events.Status{
		Pool: p.ID, Identity: p.Identity, CipherSuite: p.CipherSuite,
		Health: health(p), Counts: p.Counts, AvailableFresh: p.Fresh,
		Target: p.Config.Target, LowWatermark: p.Config.LowWatermark, HardCap: p.Config.HardCap,
		LastResortRef: p.LastResort, LastResortUsed: p.LastResortUsed, NextExpiry: nextExpiry(p),
		GenerationError: p.GenerationError, Custody: p.Custody, DeletePending: p.DeletePending,
	}
}

func sameStatus(a, b events.Status) bool {
	na, nb := a.NextExpiry, b.NextExpiry
	a.NextExpiry, b.NextExpiry = nil, nil
	if a != b || (na == nil) != (nb == nil) {
		return false
	}
	return na == nil || na.Equal(*nb)
}

// finish runs the policy on every pool this Step touched: refill, alerts, status.
func (t *txn) finish() {
	slices.Sort(t.poolIDs)
	for _, id := range t.poolIDs {
		e := t.pools[id]
		p := &e.p
		asked := demand(p)
		t.refill(p, t.force == id)
		if isClient(p) {
			if demand(p) > asked || (t.force == id && demand(p) > 0) {
				p.ClientAsks = 0 // new demand, or asked for: a fresh backoff
				t.ask(p)
			}
			t.flushDeletes(id)
		}
		st := statusBody(p)
		before := &e.before
		if !e.isNew && sameStatus(*before, st) {
			continue
		}
		if !e.isNew && before.Health != st.Health {
			switch st.Health {
			case events.HealthDepleted:
				detail := "no available KeyPackage left and no last resort"
				if p.LastResort != "" {
					detail = "no available KeyPackage left; only last resort " + p.LastResort + " is offered"
				}
				t.alert(id, events.AlertDepleted, detail)
			case events.HealthLow:
				if before.Health == events.HealthHealthy {
					t.alert(id, events.AlertLow, fmt.Sprintf("%d fresh KeyPackages, below low_watermark %d", p.Fresh, p.Config.LowWatermark))
				}
			}
		}
		p.StatusSeq++
		st.Seq, st.Time = p.StatusSeq, t.now
		t.emit(events.KindStatus, id, st)
	}
}

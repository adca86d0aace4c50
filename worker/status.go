package worker

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go/jetstream"
)

// statusOf returns a pool's current status: the one the core last published (the outbox
// is flushed first, so it matches the record), or, when none was published yet, one built
// from the pool record.
func (w *Worker) statusOf(p pool.Pool) (events.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = w.relayOnce(ctx)
	if s, err := w.js.Stream(ctx, w.streams.Status); err == nil {
		if m, err := s.GetLastMsgForSubject(ctx, w.subj.Outbound(events.KindStatus, p.ID)); err == nil {
			var st events.Status
			if json.Unmarshal(m.Data, &st) == nil && st.Seq == p.StatusSeq {
				return st, nil
			}
		} else if err != jetstream.ErrMsgNotFound {
			w.log.Debug("reading last status", "pool", p.ID, "err", err)
		}
	}
	meta, err := w.store.Meta()
	if err != nil {
		return events.Status{}, err
	}
	return recordStatus(p, meta), nil
}

// recordStatus builds a status from a pool record when none was published. It mirrors
// the core's status (pool/policy.go); the core does not export it.
func recordStatus(p pool.Pool, meta pool.Meta) events.Status {
	health := events.HealthHealthy
	switch {
	case p.Counts.Available-p.LastResortCounts.Available == 0:
		health = events.HealthDepleted
	case p.Fresh < p.Config.LowWatermark:
		health = events.HealthLow
	}
	var next *time.Time
	if len(p.Expiries) > 0 {
		at := time.Unix(slices.Min(slices.Collect(maps.Keys(p.Expiries))), 0).UTC()
		next = &at
	}
	return events.Status{
		Pool: p.ID, Identity: p.Identity, CipherSuite: p.CipherSuite, Seq: p.StatusSeq, Time: meta.Time,
		Health: health, Counts: p.Counts, AvailableFresh: p.Fresh, Target: p.Config.Target,
		LowWatermark: p.Config.LowWatermark, HardCap: p.Config.HardCap,
		LastResortRef: p.LastResort, LastResortUsed: p.LastResortUsed, NextExpiry: next,
	}
}

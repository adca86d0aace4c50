package worker

import (
	"context"
	"encoding/json"
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
	return pool.StatusOf(p, meta.Time), nil
}

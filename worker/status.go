package worker

import (
	"context"
	"encoding/json"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go/jetstream"
)

// statusOf returns a pool's current status (see statusesOf).
func (w *Worker) statusOf(p pool.Pool) (events.Status, error) {
	sts, err := w.statusesOf([]pool.Pool{p})
	if err != nil {
		return events.Status{}, err
	}
	return sts[0], nil
}

// statusesOf returns the pools' current statuses: each the one the core last published
// (the outbox is flushed first, so it matches the record), or, when none was published
// yet, one built from the pool record. The flush and the stream lookup are done once for
// all of them.
func (w *Worker) statusesOf(pools []pool.Pool) ([]events.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = w.relayOnce(ctx)
	stream, err := w.js.Stream(ctx, w.streams.Status)
	cancel()
	if err != nil {
		stream = nil
	}
	var meta *pool.Meta
	out := make([]events.Status, 0, len(pools))
	for _, p := range pools {
		if st, ok := w.lastStatus(stream, p); ok {
			out = append(out, st)
			continue
		}
		if meta == nil {
			m, err := w.store.Meta()
			if err != nil {
				return nil, err
			}
			meta = &m
		}
		out = append(out, pool.StatusOf(p, meta.Time))
	}
	return out, nil
}

// lastStatus reads the pool's last published status; false when there is none for the
// pool's current status sequence.
func (w *Worker) lastStatus(stream jetstream.Stream, p pool.Pool) (events.Status, bool) {
	if stream == nil {
		return events.Status{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := stream.GetLastMsgForSubject(ctx, w.subj.Outbound(events.KindStatus, p.ID))
	if err != nil {
		if err != jetstream.ErrMsgNotFound {
			w.log.Debug("reading last status", "pool", p.ID, "err", err)
		}
		return events.Status{}, false
	}
	var st events.Status
	if json.Unmarshal(m.Data, &st) != nil || st.Seq != p.StatusSeq {
		return events.Status{}, false
	}
	return st, true
}

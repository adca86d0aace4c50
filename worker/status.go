package worker

import (
	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// statusOf returns a pool's current status (see statusesOf).
func (w *Worker) statusOf(p pool.Pool) (events.Status, error) {
	sts, err := w.statusesOf([]pool.Pool{p})
	if err != nil {
		return events.Status{}, err
	}
	return sts[0], nil
}

// statusesOf returns the pools' current statuses, built from their records as of the
// core's time: a read, with no publishing and no stream lookups (the published status
// carries the same sequence, counts and health).
func (w *Worker) statusesOf(pools []pool.Pool) ([]events.Status, error) {
	meta, err := w.store.Meta()
	if err != nil {
		return nil, err
	}
	out := make([]events.Status, 0, len(pools))
	for _, p := range pools {
		out = append(out, pool.StatusOf(p, meta.Time))
	}
	return out, nil
}

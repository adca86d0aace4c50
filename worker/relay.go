package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/nats-io/nats.go/jetstream"
)

// relayBatch bounds how many outbox messages one pass holds in memory.
const relayBatch = 256

func (w *Worker) kickRelay() {
	select {
	case w.relayKick <- struct{}{}:
	default:
	}
}

// relayLoop publishes the outbox when kicked (after commits, on reconnect) and every few
// seconds, so a message that failed to go out is retried.
func (w *Worker) relayLoop() {
	defer w.loops.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-w.relayKick:
		case <-t.C:
			w.flushAcks()
		}
		ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
		if err := w.relayOnce(ctx); err != nil && w.ctx.Err() == nil {
			w.log.Warn("outbox relay failed; retrying", "err", err)
		}
		cancel()
	}
}

// relayOnce publishes every outbox message after the relay's cursor, oldest first. Each
// carries Nats-Msg-Id = its outbox id, so publishing it again after a crash is
// deduplicated by the stream. Published ids are removed from the outbox in the writer's
// next transaction (no fsync of their own; flushAcks writes them when the writer is
// idle); the cursor keeps them from going out twice meanwhile.
func (w *Worker) relayOnce(ctx context.Context) error {
	w.relayMu.Lock()
	defer w.relayMu.Unlock()
	applied := w.appliedSeq.Load() // their outbox messages are all in the store now
	drained := func() {
		if applied > w.drained.Load() {
			w.drained.Store(applied)
		}
	}
	for {
		var batch []events.Outbound
		var keys []uint64
		err := w.store.OutboxAfter(w.relayed, func(k uint64, o events.Outbound) error {
			batch, keys = append(batch, o), append(keys, k)
			if len(batch) >= relayBatch {
				return errBatchFull
			}
			return nil
		})
		if err != nil && err != errBatchFull {
			return fmt.Errorf("read outbox: %w", err)
		}
		if len(batch) == 0 {
			w.metrics.outboxPending.Set(0)
			drained()
			return nil
		}
		// The batch goes out asynchronously, in order, and is confirmed in order: the
		// first failure ends the pass, and what follows it is published again later
		// (the stream drops the copies that had landed, by Nats-Msg-Id).
		var done []string
		var pubErr error
		futures := make([]jetstream.PubAckFuture, 0, len(batch))
		for _, o := range batch {
			o.ID = w.msgIDPrefix + o.ID // partitions' outbox ids overlap; the stream dedups by id
			f, err := natsbus.PublishOutboundAsync(w.js, w.subj, o)
			if err != nil {
				pubErr = err
				break
			}
			futures = append(futures, f)
		}
		timeout := time.NewTimer(5 * time.Second)
	confirm:
		for i, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				pubErr = err
				break confirm
			case <-timeout.C:
				pubErr = fmt.Errorf("outbox message %s not confirmed within 5s", batch[i].ID)
				break confirm
			case <-ctx.Done():
				pubErr = ctx.Err()
				break confirm
			}
			o := batch[i]
			done = append(done, o.ID)
			w.relayed = keys[i]
			w.metrics.relayed.WithLabelValues(string(o.Kind)).Inc()
			if o.Kind == events.KindStatus {
				w.metrics.observeStatus(o.Body)
			}
		}
		timeout.Stop()
		if len(done) > 0 {
			w.ackOutbox(done)
		}
		if pubErr != nil {
			w.metrics.outboxPending.Set(float64(len(batch) - len(done)))
			return pubErr
		}
		if len(batch) < relayBatch {
			w.metrics.outboxPending.Set(0)
			drained()
			return nil
		}
	}
}

// flushAcks writes the outbox removals the writer has not taken in a transaction of
// their own: on an idle worker, at most one extra commit per relay period.
func (w *Worker) flushAcks() {
	if acks := w.takeAcks(); len(acks) > 0 {
		if err := w.store.AckOutbox(acks...); err != nil {
			w.returnAcks(acks)
			w.log.Warn("removing published outbox messages failed; retrying", "err", err)
		}
	}
}

type sentinel string

func (s sentinel) Error() string { return string(s) }

const errBatchFull = sentinel("batch full")

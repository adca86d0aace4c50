package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead-letter codes the edge adds to those of events.Code and the core's RejectError.
const (
	CodeFutureTime   = "future_time"   // event time beyond wall clock + MaxSkew
	CodeInternalType = "internal_type" // generated / pool_registered come from the worker itself
	CodeStore        = "store_refused" // the store refused the step's result (e.g. missing secret)
)

// consumeLoop pulls from the durable consumer and handles each message in order. The
// iterator re-issues pulls after a reconnect. On stop it is drained: messages already
// pulled are handled and committed, the rest stay in the stream for the next start.
func (w *Worker) consumeLoop() {
	defer w.loops.Done()
	backoff := 100 * time.Millisecond
	for w.ctx.Err() == nil {
		it, err := w.cons.Messages(jetstream.PullMaxMessages(w.cfg.Batch))
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
			err = w.ensureConsumer(w.ctx)
		}
		if err != nil {
			w.log.Warn("pull from the events stream failed; retrying", "err", err, "in", backoff)
			if !w.sleepCtx(backoff) {
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		stopped := make(chan struct{})
		go func() {
			select {
			case <-w.ctx.Done():
			case <-stopped:
				return
			}
			if !w.nc.IsConnected() {
				it.Stop() // nothing more can arrive; unacked messages are redelivered later
				return
			}
			it.Drain()
			select { // a drain needs the server; do not wait on it forever
			case <-stopped:
			case <-time.After(3 * time.Second):
				it.Stop()
			}
		}()
		w.drainIterator(it)
		close(stopped)
		if w.ctx.Err() == nil {
			if err := w.ensureConsumer(w.ctx); err != nil {
				w.log.Warn("durable consumer", "err", err)
			}
		}
	}
}

// drainIterator handles messages until the iterator is closed (drained on stop) or its
// consumer is gone (the caller re-creates it).
func (w *Worker) drainIterator(it jetstream.MessagesContext) {
	defer it.Stop()
	l := newLanes(w)
	defer l.wait()
	failures := 0
	for {
		msg, err := it.Next()
		switch {
		case err == nil:
			failures = 0
			l.dispatch(msg)
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return
		case errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound):
			w.log.Warn("the durable consumer disappeared; re-creating it", "consumer", w.cfg.Durable, "err", err)
			return
		default:
			// Missed heartbeats and the like during a reconnect: the iterator recovers.
			w.log.Debug("pull iterator", "err", err)
			failures++
			if !w.sleepCtx(min(time.Duration(failures)*50*time.Millisecond, time.Second)) {
				return
			}
		}
	}
}

// lanes handle the messages of different pools concurrently, each pool's in stream order,
// so that one pool's commits can share a transaction with another's. Messages that are
// not for one pool (ticks of every pool, unparsable subjects) are barriers: they run
// alone, after everything before them.
type lanes struct {
	w  *Worker
	mu sync.Mutex
	m  map[string]chan jetstream.Msg
	wg sync.WaitGroup
}

func newLanes(w *Worker) *lanes { return &lanes{w: w, m: map[string]chan jetstream.Msg{}} }

func (l *lanes) dispatch(msg jetstream.Msg) {
	poolID, _, err := l.w.subj.ParseEvent(msg.Subject())
	if err != nil || poolID == "" {
		l.wait()
		l.w.handle(msg)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, ok := l.m[poolID]
	if !ok {
		ch = make(chan jetstream.Msg, 64)
		l.m[poolID] = ch
		l.wg.Add(1)
		go l.run(poolID, ch)
	}
	ch <- msg // under the lock, so the lane cannot retire with a message in flight
}

func (l *lanes) run(poolID string, ch chan jetstream.Msg) {
	defer l.wg.Done()
	for {
		select {
		case msg := <-ch:
			// Take whatever else of this pool is already queued: its inputs are queued on
			// the committer together, in order, and so share a transaction.
			msgs := []jetstream.Msg{msg}
			for more := true; more && len(msgs) < cap(ch); {
				select {
				case m := <-ch:
					msgs = append(msgs, m)
				default:
					more = false
				}
			}
			l.w.handleInOrder(msgs)
		default:
			l.mu.Lock()
			if len(ch) == 0 {
				delete(l.m, poolID)
				l.mu.Unlock()
				return
			}
			l.mu.Unlock()
		}
	}
}

// wait returns when every lane has finished its messages.
func (l *lanes) wait() { l.wg.Wait() }

// handle applies one inbound message (see handleInOrder).
func (w *Worker) handle(msg jetstream.Msg) { w.handleInOrder([]jetstream.Msg{msg}) }

// handleInOrder applies inbound messages in order. Bad input → dead letter, then ack. A
// committed effect (or a duplicate) → ack. A store failure → nak with delay: the message
// is redelivered, and the event id keeps a second delivery from applying twice. All valid
// messages are queued on the committer before waiting for the first, so consecutive
// messages share a transaction instead of paying one fsync each.
func (w *Worker) handleInOrder(msgs []jetstream.Msg) {
	type queued struct {
		msg     jetstream.Msg
		ev      events.Event
		start   time.Time
		pending *persistence.Pending
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var inFlight []queued
	for _, msg := range msgs {
		start := time.Now()
		ev, err := w.decode(msg)
		if err != nil {
			w.deadLetter(msg, bestEffortID(msg.Data()), err)
			w.ack(msg)
			continue
		}
		p, err := w.committer.SubmitAsync(ctx, persistence.Input{Event: ev})
		if err != nil {
			w.commitFailed(msg, ev, err)
			continue
		}
		inFlight = append(inFlight, queued{msg, ev, start, p})
	}
	for _, q := range inFlight {
		res, err := q.pending.Wait(ctx)
		if err != nil {
			w.commitFailed(q.msg, q.ev, err)
			continue
		}
		if res.Err != nil {
			w.deadLetter(q.msg, q.ev.ID, res.Err)
			w.reportRefusedTransition(q.ev, res.Err)
			w.ack(q.msg)
			continue
		}
		w.afterCommit(res.Ready)
		result := "applied"
		if res.Ready.Duplicate {
			result = "duplicate"
		}
		w.log.Debug("event", "subject", q.msg.Subject(), "id", q.ev.ID, "result", result)
		w.metrics.events.WithLabelValues(string(q.ev.Type), result).Inc()
		w.metrics.stepSeconds.Observe(time.Since(q.start).Seconds())
		w.ack(q.msg)
	}
}

func (w *Worker) commitFailed(msg jetstream.Msg, ev events.Event, err error) {
	w.metrics.events.WithLabelValues(string(ev.Type), "retry").Inc()
	w.log.Error("commit failed; the message will be redelivered", "event", ev.ID, "err", err)
	_ = msg.NakWithDelay(time.Second)
}

// decode validates a message: size, JSON, fields, subject, origin and time skew.
func (w *Worker) decode(msg jetstream.Msg) (events.Event, error) {
	ev, err := events.Decode(msg.Data())
	if err != nil {
		return ev, err
	}
	if err := w.subj.CheckSubject(msg.Subject(), ev); err != nil {
		return ev, err
	}
	if !slices.Contains(events.PublicTypes, ev.Type) {
		return ev, &edgeError{code: CodeInternalType, reason: fmt.Sprintf("%q inputs are produced by the worker itself and are not accepted on %s", ev.Type, msg.Subject())}
	}
	if limit := w.cfg.Clock().Add(w.cfg.MaxSkew); ev.Time.After(limit) {
		return ev, &edgeError{code: CodeFutureTime, reason: fmt.Sprintf("time %s is more than %v ahead of the worker's clock (%s); kpool's clock only moves forward, so it refuses far-future times", ev.Time.Format(time.RFC3339), w.cfg.MaxSkew, limit.Add(-w.cfg.MaxSkew).UTC().Format(time.RFC3339))}
	}
	return ev, nil
}

// bestEffortID pulls the id out of a payload that failed validation, for the dead letter.
func bestEffortID(data []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	if len(data) > events.MaxEventSize || json.Unmarshal(data, &v) != nil || len(v.ID) > events.MaxIDLength {
		return ""
	}
	return v.ID
}

// edgeError is a rejection decided at the edge, before the core.
type edgeError struct{ code, reason string }

func (e *edgeError) Error() string { return e.reason }

// codeOf maps any rejection to its stable code and reason.
func codeOf(err error) (code, reason string) {
	var ee *edgeError
	var re *pool.RejectError
	var ie *persistence.InputError
	switch {
	case errors.As(err, &ee):
		return ee.code, ee.reason
	case errors.As(err, &re):
		return re.Code, re.Error()
	case errors.As(err, &ie):
		return CodeStore, ie.Error()
	}
	return events.Code(err), err.Error()
}

func (w *Worker) ack(msg jetstream.Msg) {
	// DoubleAck waits for the server's confirmation, so a lost ack cannot turn into a
	// silent redelivery loop; a redelivery would be deduplicated anyway.
	if !w.nc.IsConnected() {
		// Buffered until the reconnect; if it is lost, the redelivery is deduplicated.
		_ = msg.Ack()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(ctx); err != nil {
		w.log.Warn("ack failed; the message will be redelivered and deduplicated", "subject", msg.Subject(), "err", err)
	}
}

// deadLetter reports a rejected message on <prefix>.deadletter. Its Nats-Msg-Id is derived
// from the stream sequence so a redelivered bad message yields one dead letter.
func (w *Worker) deadLetter(msg jetstream.Msg, eventID string, cause error) {
	code, reason := codeOf(cause)
	w.metrics.deadLetters.WithLabelValues(code).Inc()
	msgID := "dl-" + eventID
	if md, err := msg.Metadata(); err == nil {
		msgID = fmt.Sprintf("dl-%s-%d", md.Stream, md.Sequence.Stream)
	}
	d := natsbus.NewDeadLetter(msg.Subject(), eventID, code, reason, msg.Data(), w.cfg.Clock())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := natsbus.PublishDeadLetter(ctx, w.js, w.subj, d, msgID); err != nil {
		w.log.Error("dead letter not published", "code", code, "reason", reason, "err", err)
		return
	}
	w.log.Info("dead letter", "subject", msg.Subject(), "event", eventID, "code", code, "reason", reason)
}

// reportRefusedTransition adds a refused transition to the transition log of the pool, so
// someone following a KeyPackage sees the event it did not accept.
func (w *Worker) reportRefusedTransition(ev events.Event, cause error) {
	var re *pool.RejectError
	if !errors.As(cause, &re) || re.Code != pool.CodeInvalidTransition || ev.Pool == "" || ev.Ref == "" {
		return
	}
	kp, ok, err := w.store.KeyPackage(ev.Ref)
	if err != nil || !ok {
		return
	}
	t := events.Transition{Pool: ev.Pool, Ref: ev.Ref, From: string(kp.State), To: string(kp.State), Event: string(ev.Type), EventID: ev.ID, Time: ev.Time, Error: re.Reason}
	w.publishJSON(events.KindTransition, ev.Pool, "refused-"+ev.ID, t)
}

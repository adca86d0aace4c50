package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The worker has one ordered sequence of inputs: the inbound JetStream stream. Delivery
// services and the ticker publish events under <prefix>.events.>; the worker's own API
// calls and generated KeyPackages are published under <prefix>.inputs.> into the same
// stream (public data only). The reader follows the stream strictly in sequence order
// from the last applied sequence; the writer applies groups of inputs, each group in one
// bbolt transaction that also records the stream sequence it reached, so a restart
// resumes exactly after the last committed input and the stream order is the order of
// record.

// inbound is one message of the input stream.
type inbound struct {
	seq     uint64
	subject string // as published (a partition's transform undone)
	data    []byte
	token   string   // InputTokenHeader: names the pending call of an internal input
	secrets []string // SecretsHeader: ids of its private material in the keys bucket
	at      time.Time
	stored  time.Time // when the stream stored it: every reader of the log sees the same
}

// InputTokenHeader carries, on an internal input, the token of the call waiting for it.
const InputTokenHeader = "Kpool-Input"

// SecretsHeader lists, on an internal input in cluster mode, the ids of the private
// material it stores, which is in the keys bucket (sealed) before the input is published.
const SecretsHeader = "Kpool-Secrets"

// Codes the edge adds to those of events.Code and the core's RejectError.
const (
	CodeFutureTime   = "future_time"   // event time beyond the clock (cluster: the stream's storage time) + MaxSkew
	CodeInternalType = "internal_type" // generated / pool_registered come from the worker itself
	CodeStore        = "store_refused" // the store refused the step's result (e.g. missing secret)
	CodeAbandoned    = "abandoned"     // an internal input whose call is gone (restart, timeout)
)

// pendingCall is an API call or a generated KeyPackage waiting for its input to be
// applied. Its private material never enters the stream: it is handed to the store with
// the input, in the same transaction.
type pendingCall struct {
	secrets map[string][]byte
	reveal  string
	done    chan applied
	claimed bool // the writer holds it in a transaction: the caller must wait
}

// applied is what the writer tells a waiting call.
type applied struct {
	res persistence.Result
	err error // not applied: the input was refused at the edge or abandoned
}

// pendingCalls maps input tokens to waiting calls.
type pendingCalls struct {
	mu sync.Mutex
	m  map[string]*pendingCall
}

func (p *pendingCalls) add(token string, c *pendingCall) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*pendingCall{}
	}
	p.m[token] = c
}

// size is how many calls wait.
func (p *pendingCalls) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

// claim marks a call as being applied; nil when its caller is gone.
func (p *pendingCalls) claim(token string) *pendingCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.m[token]
	if c != nil {
		c.claimed = true
	}
	return c
}

// unclaim returns a call to waiting after its transaction was rolled back.
func (p *pendingCalls) unclaim(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.m[token]; c != nil {
		c.claimed = false
	}
}

// abandon drops a call whose caller stops waiting, unless the writer holds it or has
// finished it (its answer is then waiting in done).
func (p *pendingCalls) abandon(token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.m[token]
	if c == nil || c.claimed {
		return false
	}
	delete(p.m, token)
	return true
}

// finish answers a call; the answer is in done before the call leaves the map.
func (p *pendingCalls) finish(token string, a applied) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.m[token]; c != nil {
		c.done <- a // buffered: never blocks
		delete(p.m, token)
	}
}

// errNothingChanged ends the error of a call whose input was never applied: it may be
// repeated (in a cluster, at the partition's next owner).
var errNothingChanged = errors.New("nothing changed")

// callTimeout bounds how long an API call or the generator waits for its input.
const callTimeout = 30 * time.Second

// submit publishes an internal input into the stream and waits until the writer applied
// it. A call that times out before the writer took it is abandoned: it is never applied.
func (w *Worker) submit(in persistence.Input) (persistence.Result, error) {
	ctx, cancel := context.WithTimeout(w.ctx, callTimeout)
	defer cancel()
	token := newToken()
	call := &pendingCall{secrets: in.Secrets, reveal: in.Reveal, done: make(chan applied, 1)}
	w.pending.add(token, call)
	why := "not applied within " + callTimeout.String()
	ids, err := w.replicateSecrets(ctx, in)
	if err != nil {
		w.pending.abandon(token)
		return persistence.Result{}, fmt.Errorf("replicating private keys before publishing the input: %w; %w", err, errNothingChanged)
	}
	published := true
	if err := w.publishInput(ctx, in.Event, token, ids); err != nil {
		// The stream may still have stored it: the writer may be applying it now.
		why, published = "publish input: "+err.Error(), false
	} else {
		select {
		case a := <-call.done:
			return a.res, a.err
		case <-ctx.Done():
		}
	}
	// Too late: abandon the call unless the writer holds it in a transaction, whose commit
	// is under way; if that transaction is rolled back (an internal failure), the call is
	// released again and abandoned here, so it is never applied without its caller.
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	for {
		if w.pending.abandon(token) {
			if w.buckets != nil && published {
				// In a cluster the log decides: whoever owns the partition next applies it.
				return persistence.Result{}, fmt.Errorf("%s; the input is in the log and the partition's next owner applies it: check with status or get before repeating", why)
			}
			return persistence.Result{}, fmt.Errorf("%s; abandoned, %w", why, errNothingChanged)
		}
		select {
		case a := <-call.done:
			return a.res, a.err
		case <-retry.C:
		}
	}
}

// publishInput appends an internal input to the stream. A publish lost in a reconnect
// or a JetStream restart is retried with the same Nats-Msg-Id, so the stream holds it
// once.
func (w *Worker) publishInput(ctx context.Context, ev events.Event, token string, secrets []string) error {
	data, err := marshalEvent(ev)
	if err != nil {
		return err
	}
	msg := newMsg(w.subj.Input(ev.Pool, ev.Type), data)
	msg.Header.Set(InputTokenHeader, token)
	if len(secrets) > 0 {
		msg.Header.Set(SecretsHeader, strings.Join(secrets, ","))
	}
	msg.Header.Set(jetstream.MsgIDHeader, "input-"+token)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = w.js.PublishMsg(actx, msg)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		w.log.Debug("publishing an input failed; retrying", "type", ev.Type, "err", err)
		if !w.sleepCtx(100 * time.Millisecond) {
			return err
		}
	}
}

// readLoop follows the input stream in sequence order from the last applied input and
// hands each message to the writer. An ordered consumer re-creates itself at the next
// sequence after any gap or reconnect, so delivery order is stream order.
func (w *Worker) readLoop() {
	defer w.loops.Done()
	backoff := 100 * time.Millisecond
	for w.ctx.Err() == nil {
		next := w.nextSeq.Load()
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: w.filters}
		if next > 1 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, next
		}
		cons, err := w.js.OrderedConsumer(w.ctx, w.streams.Events, cfg)
		var it jetstream.MessagesContext
		if err == nil {
			// Short pulls: a pull or a consumer lost in a server restart is noticed by
			// a missed heartbeat within seconds, not the default 30.
			it, err = cons.Messages(jetstream.PullMaxMessages(w.cfg.Batch), jetstream.PullExpiry(2*time.Second), jetstream.PullHeartbeat(500*time.Millisecond))
		}
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			w.log.Warn("reading the input stream failed; retrying", "err", err, "in", backoff)
			if !w.sleepCtx(backoff) {
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		w.follow(it)
	}
}

// follow reads one ordered consumer until the worker stops or the consumer fails.
func (w *Worker) follow(it jetstream.MessagesContext) {
	stop := context.AfterFunc(w.ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if w.ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				w.log.Debug("input stream", "err", err)
			}
			return
		}
		md, err := msg.Metadata()
		if err != nil {
			w.log.Warn("input without metadata; skipped", "subject", msg.Subject(), "err", err)
			continue
		}
		seq := md.Sequence.Stream
		want := w.nextSeq.Load()
		if seq < want {
			continue // already handed over (a re-created consumer starts where asked)
		}
		// A partition's messages are a subsequence of the stream: gaps are other partitions'.
		if seq > want && want > 1 && w.part < 0 {
			w.log.Error("inputs missing from the stream (expired or purged before they were applied)", "from", want, "to", seq-1)
			w.metrics.inputGaps.Add(float64(seq - want))
		}
		w.nextSeq.Store(seq + 1)
		in := inbound{seq: seq, subject: w.subj.Unpartitioned(msg.Subject()), data: msg.Data(), at: time.Now(), stored: md.Timestamp}
		if h := msg.Headers(); h != nil {
			in.token = h.Get(InputTokenHeader)
			if ids := h.Get(SecretsHeader); ids != "" {
				in.secrets = strings.Split(ids, ",")
			}
		}
		select {
		case w.inputs <- in:
		case <-w.ctx.Done():
			return
		}
	}
}

// writeLoop is the single writer: it takes whatever inputs are queued (up to Batch),
// applies them in one transaction, and carries their effects out.
func (w *Worker) writeLoop() {
	defer w.loops.Done()
	for w.ctx.Err() == nil {
		var first inbound
		select {
		case first = <-w.inputs:
		case <-w.ctx.Done():
			return
		}
		for !w.leaseValid() { // a partition whose lease ran out applies nothing more
			if !w.sleepCtx(50 * time.Millisecond) {
				return
			}
		}
		group := []inbound{first}
	more:
		for len(group) < w.cfg.Batch {
			select {
			case in := <-w.inputs:
				group = append(group, in)
			default:
				break more
			}
		}
		if !w.applyGroup(group) {
			return
		}
	}
}

// applyGroup applies a group, retrying an internal failure with backoff until it
// succeeds or the worker stops (false). An internal failure is never a verdict on the
// input: nothing is dead-lettered and the stream position does not move past it.
func (w *Worker) applyGroup(group []inbound) bool {
	backoff := 100 * time.Millisecond
	for {
		n, err := w.tryApply(group)
		group = group[n:]
		if err == nil {
			if w.failures > 0 {
				w.log.Info("inputs applied again after internal failures", "failures", w.failures)
				w.failures = 0
				w.ready.Store(true)
			}
			return true
		}
		w.failures++
		w.metrics.internalFailures.Inc()
		w.log.Error("applying an input failed inside the worker; it is retried, not dead-lettered",
			"stream_seq", group[0].seq, "subject", group[0].subject, "failures", w.failures, "err", err, "retry_in", backoff)
		if w.failures >= w.cfg.MaxInternalFailures && w.ready.Load() {
			w.ready.Store(false)
			w.log.Error("worker not ready: inputs keep failing; consuming stopped until the fault is fixed", "failures", w.failures)
		}
		if !w.sleepCtx(backoff) {
			return false
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// outcome is what one input came to in a transaction.
type outcome struct {
	in      inbound
	ev      events.Event
	call    *pendingCall
	res     persistence.Result
	refused error // edge refusal or abandoned internal input: dead letter
}

// tryApply applies group in one transaction. It returns how many inputs from the front
// were committed; err is an internal failure of group[n].
func (w *Worker) tryApply(group []inbound) (n int, err error) {
	b, err := w.store.Begin(false)
	if err != nil {
		return 0, err
	}
	outs := make([]outcome, 0, len(group))
	unwind := func() { // nothing of the group was committed
		for _, o := range outs {
			clear(o.res.Revealed)
			if o.call != nil {
				w.pending.unclaim(o.in.token)
			}
		}
	}
	release := func() { b.Rollback(); unwind() }
	for i, in := range group {
		o, err := w.applyOne(b, in)
		if err != nil {
			release()
			if i == 0 {
				return 0, err
			}
			// Commit what came before it on its own: stepping is deterministic.
			if n, err2 := w.tryApply(group[:i]); err2 != nil {
				return n, err2
			}
			return i, err
		}
		outs = append(outs, o)
	}
	acks := w.takeAcks()
	if err := errors.Join(b.SetInputSeq(group[len(group)-1].seq), b.AckOutbox(acks)); err != nil {
		release()
		w.returnAcks(acks)
		return 0, err
	}
	if err := b.Commit(); err != nil {
		unwind()
		w.returnAcks(acks)
		return 0, err
	}
	w.afterCommit(outs)
	return len(group), nil
}

// applyOne decodes, checks and steps one input in the batch. err is internal only.
func (w *Worker) applyOne(b *persistence.Batch, in inbound) (outcome, error) {
	o := outcome{in: in}
	b.SetQuiet(w.quiet(in))
	ev, internal, err := w.decode(in)
	o.ev = ev
	if err != nil {
		o.refused = err
		// A client's submission that does not even decode is still told to the client.
		if pool, t, perr := w.subj.ParseEvent(in.subject); perr == nil && t == events.TypeSubmitted && !internal {
			return o, w.tellClient(b, events.Event{ID: bestEffortID(in.data), Type: t, Pool: pool}, in.seq, err)
		}
		return o, nil
	}
	input := persistence.Input{Event: ev}
	if internal {
		o.call = w.pending.claim(in.token)
		switch {
		case o.call != nil:
			input.Secrets, input.Reveal = o.call.secrets, o.call.reveal
		case w.buckets != nil:
			// In a cluster the log decides, not who waits: any worker applying the
			// partition's log applies the input, with its keys from the keys bucket.
			if input.Secrets, input.Erased, err = w.fetchSecrets(in.secrets); err != nil {
				return o, err
			}
		default:
			o.refused = &edgeError{code: CodeAbandoned, reason: fmt.Sprintf("%s input %q was published by a call that is no longer waiting (worker restart or timeout); it is not applied — repeat the call", ev.Type, ev.ID)}
			return o, nil
		}
	} else if ev.Type == events.TypeSubmitted {
		checked, err := w.checkSubmission(b.View(), ev)
		var ee *edgeError
		switch {
		case errors.As(err, &ee):
			o.refused = err
			return o, w.tellClient(b, ev, in.seq, err)
		case err != nil:
			return o, err
		}
		ev, o.ev, input.Event = checked, checked, checked
	}
	res, err := b.Apply(w.step, input)
	if err != nil {
		if o.call != nil {
			w.pending.unclaim(in.token)
		}
		return o, err
	}
	o.res = res
	if res.Err != nil {
		if t, ok := pool.RefusedTransition(ev, res.Err, ev.Time); ok {
			if err := b.Publish(refusedOutbound(t, in.seq)); err != nil {
				return o, err
			}
		}
		if err := w.tellClient(b, ev, in.seq, res.Err); err != nil {
			return o, err
		}
	}
	return o, nil
}

// tellClient reports a refused submission to its client pool on the rejected subject.
func (w *Worker) tellClient(b *persistence.Batch, ev events.Event, seq uint64, cause error) error {
	if !submissionRefused(b.View(), ev) {
		return nil
	}
	o, ok := clientRejected(ev, seq, cause)
	if !ok {
		return nil
	}
	return b.Publish(o)
}

// quiet reports an input whose effects a partition's previous owner has published.
func (w *Worker) quiet(in inbound) bool { return in.seq <= w.published }

// afterCommit answers the calls, dead-letters refusals, and carries the effects out.
func (w *Worker) afterCommit(outs []outcome) {
	kick := false
	for _, o := range outs {
		r := o.res.Ready
		switch {
		case w.quiet(o.in):
		case o.refused != nil:
			w.deadLetter(o.in, o.ev.ID, o.refused)
			kick = kick || o.ev.Type == events.TypeSubmitted || strings.HasSuffix(o.in.subject, "."+string(events.TypeSubmitted)) // its client.rejected message
		case o.res.Err != nil:
			w.deadLetter(o.in, o.ev.ID, o.res.Err)
			kick = true
		case r.Duplicate:
			w.metrics.duplicates.Inc()
		default:
			if w.caughtUp.Load() { // a partition catching up generates what is owed once it has caught up
				for _, g := range r.Generate {
					w.gen.enqueue(g)
				}
			}
			kick = kick || len(r.Outbox) > 0
		}
		if len(r.Erase) > 0 && w.buckets != nil && o.res.Err == nil && o.refused == nil && !r.Duplicate {
			w.eraseSecrets(r.Erase)
		}
		result := "applied"
		switch {
		case o.refused != nil || o.res.Err != nil:
			result = "refused"
		case r.Duplicate:
			result = "duplicate"
		}
		if result == "refused" {
			w.log.Debug("input", "stream_seq", o.in.seq, "type", o.ev.Type, "pool", o.ev.Pool, "id", o.ev.ID, "result", result, "quiet", w.quiet(o.in), "why", errors.Join(o.refused, o.res.Err))
		} else {
			w.log.Debug("input", "stream_seq", o.in.seq, "type", o.ev.Type, "pool", o.ev.Pool, "id", o.ev.ID, "result", result, "quiet", w.quiet(o.in))
		}
		w.metrics.events.WithLabelValues(string(o.ev.Type), result).Inc()
		w.metrics.stepSeconds.Observe(time.Since(o.in.at).Seconds())
		if o.call != nil {
			w.pending.finish(o.in.token, applied{res: o.res, err: o.refused})
		}
	}
	last := outs[len(outs)-1].in.seq
	w.appliedSeq.Store(last)
	if kick {
		w.kickRelay()
	}
	if !w.caughtUp.Load() && last >= w.catchUp {
		w.caughtUp.Store(true)
		w.log.Info("partition caught up; generating and answering", "stream_seq", last)
		w.poolGauges()
		if err := w.gen.resume(); err != nil {
			w.log.Error("resuming generation", "err", err)
		}
	}
}

// decode validates a message: size, JSON, fields, subject, origin and time skew.
// internal reports an input the worker published itself.
func (w *Worker) decode(in inbound) (ev events.Event, internal bool, err error) {
	internal = w.subj.IsInput(in.subject)
	ev, err = events.Decode(in.data)
	if err != nil {
		return ev, internal, err
	}
	if internal {
		return ev, true, w.subj.CheckInputSubject(in.subject, ev)
	}
	if err := w.subj.CheckSubject(in.subject, ev); err != nil {
		return ev, false, err
	}
	if !slices.Contains(events.PublicTypes, ev.Type) {
		return ev, false, &edgeError{code: CodeInternalType, reason: fmt.Sprintf("%q inputs are produced by the worker itself and are not accepted on %s", ev.Type, in.subject)}
	}
	now := w.cfg.Clock()
	if w.buckets != nil {
		now = in.stored // every worker that applies the log must refuse the same inputs
	}
	if limit := now.Add(w.cfg.MaxSkew); ev.Time.After(limit) {
		return ev, false, &edgeError{code: CodeFutureTime, reason: fmt.Sprintf("time %s is more than %v ahead of the worker's clock (%s); kpool's clock only moves forward, so it refuses far-future times", ev.Time.Format(time.RFC3339), w.cfg.MaxSkew, limit.Add(-w.cfg.MaxSkew).UTC().Format(time.RFC3339))}
	}
	return ev, false, nil
}

// Ack removes published outbox messages in the writer's next transaction; when the
// writer is idle, flushAcks writes them on their own.
func (w *Worker) ackOutbox(ids []string) {
	w.ackMu.Lock()
	w.acks = append(w.acks, ids...)
	w.ackMu.Unlock()
}

func (w *Worker) takeAcks() []string {
	w.ackMu.Lock()
	defer w.ackMu.Unlock()
	a := w.acks
	w.acks = nil
	return a
}

func (w *Worker) returnAcks(ids []string) {
	if len(ids) == 0 {
		return
	}
	w.ackMu.Lock()
	w.acks = append(ids, w.acks...)
	w.ackMu.Unlock()
}

func marshalEvent(ev events.Event) ([]byte, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s input: %w", ev.Type, err)
	}
	return data, nil
}

func newMsg(subject string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
}

// newToken names one pending call; it is never an event id.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

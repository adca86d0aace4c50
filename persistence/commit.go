package persistence

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// StepFunc is the core's step, normally (*pool.Core).Step.
type StepFunc func(pool.View, events.Event) (pool.Ready, error)

// Input is one event for the committer, with the private material that must be stored
// (or released) in the same transaction as its effect.
type Input struct {
	Event events.Event
	// Secrets maps id → plaintext private material to store sealed: the hex ref for a
	// KeyPackage's private bundle, PoolSecretID(pool) for a pool's signature key.
	Secrets map[string][]byte
	// Reveal names a ref whose private bundle is read in the transaction before the
	// step's erasures are written, and returned in Result.Revealed.
	Reveal string
}

// Result of one committed (or rejected) input.
type Result struct {
	Ready pool.Ready
	// Err is the step's rejection (or the store's refusal, an *InputError): nothing of
	// this input was written.
	Err error
	// Revealed is the plaintext of Input.Reveal. The caller should clear it after use.
	Revealed []byte
}

// CommitterOptions tune a Committer.
type CommitterOptions struct {
	// MaxBatch bounds the inputs per transaction. Default 512.
	MaxBatch int
	// AllowMissingSecrets lets a step store live KeyPackages without private keys.
	// Only for replaying a journal into a fresh database.
	AllowMissingSecrets bool

	onCommit func(inputs int)   // tests and benchmarks: called after each committed batch
	onStep   func(batch uint64) // tests: called before each step with its batch number
	onWrite  func(batch uint64) // tests: called before a batch's transaction
}

// CommitterStats count committed work since the committer started.
type CommitterStats struct {
	Transactions uint64 // bbolt transactions committed with at least one input
	Inputs       uint64 // inputs in them (accepted, rejected and duplicates)
}

// Committer is the single writer, a two-stage pipeline (see overlay.go). The step
// stage takes whatever inputs are queued (up to MaxBatch), without waiting for more,
// and steps them in order on the committed state plus the effects of the batches still
// in flight; the commit stage writes each batch in one bbolt transaction. A lone input
// commits at once; a burst shares one fsync, and the core works on the next batch while
// the previous one is synced. Submit returns only after its batch committed.
type Committer struct {
	s    *Store
	step StepFunc
	opts CommitterOptions

	mu     sync.RWMutex // closed, guarded against sends on a closed channel
	closed bool
	reqs   chan *request
	done   chan struct{}

	toCommit  chan *pending
	committed atomic.Uint64 // last batch number the commit stage finished
	epoch     atomic.Uint64 // bumped when a commit fails: in-flight batches are void
	failMu    sync.Mutex
	failErr   error // the failure that bumped the epoch

	txs, inputs atomic.Uint64

	ackMu sync.Mutex
	acks  []string
	wake  chan struct{}
}

type request struct {
	in   Input
	res  Result
	err  error
	done chan struct{}
}

// pending is a stepped batch on its way to the commit stage.
type pending struct {
	batch, epoch uint64
	reqs         []*request
	results      []Result
	failed       []error // per input: refused by the store before recording
	writes       *batchWrites
}

// NewCommitter starts the committer with default options.
func NewCommitter(s *Store, step StepFunc) *Committer {
	return NewCommitterWith(s, step, CommitterOptions{})
}

// NewCommitterWith starts the committer's goroutines.
func NewCommitterWith(s *Store, step StepFunc, opts CommitterOptions) *Committer {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	c := &Committer{
		s: s, step: step, opts: opts,
		reqs:     make(chan *request, opts.MaxBatch),
		done:     make(chan struct{}),
		toCommit: make(chan *pending),
		wake:     make(chan struct{}, 1),
	}
	go c.stepStage()
	go c.commitStage()
	return c
}

// Submit queues one input and waits until its transaction committed. A step rejection
// is Result.Err (nothing written); an error return means the commit itself failed or
// ctx ended first. When ctx ends after the input was queued it may still be committed:
// redelivering it is safe, the event id deduplicates.
func (c *Committer) Submit(ctx context.Context, in Input) (Result, error) {
	p, err := c.SubmitAsync(ctx, in)
	if err != nil {
		return Result{}, err
	}
	return p.Wait(ctx)
}

// Pending is a queued input whose commit the caller has not waited for yet.
type Pending struct{ r *request }

// Done is closed when the input's transaction committed (or failed).
func (p *Pending) Done() <-chan struct{} { return p.r.done }

// Wait blocks until the input's transaction committed; it returns what Submit does.
func (p *Pending) Wait(ctx context.Context) (Result, error) {
	select {
	case <-p.r.done:
		return p.r.res, p.r.err
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// SubmitAsync queues one input without waiting for its commit, so that a sequential
// producer (replay, one pool's ordered lane) fills whole batches. Inputs queued by one
// goroutine are stepped in the order it queued them. It blocks only while the queue is
// full (MaxBatch inputs), or until ctx ends.
func (c *Committer) SubmitAsync(ctx context.Context, in Input) (*Pending, error) {
	if c.s.opts.ReadOnly {
		return nil, fmt.Errorf("submit: store is read-only")
	}
	r := &request{in: in, done: make(chan struct{})}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("submit: committer %w", ErrClosed)
	}
	select {
	case c.reqs <- r:
		return &Pending{r}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Ack removes published outbox messages in the next transaction. Acks are not durable
// until then: after a crash the messages are published again with the same ids, which
// NATS deduplicates.
func (c *Committer) Ack(ids ...string) {
	c.ackMu.Lock()
	c.acks = append(c.acks, ids...)
	c.ackMu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Stats returns the committed transactions and inputs so far; Inputs/Transactions is
// the mean group size.
func (c *Committer) Stats() CommitterStats {
	return CommitterStats{Transactions: c.txs.Load(), Inputs: c.inputs.Load()}
}

// Close stops accepting inputs, commits those already queued and pending acks, and
// waits for both stages to finish. It does not close the Store.
func (c *Committer) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.reqs)
	}
	c.mu.Unlock()
	<-c.done
	return nil
}

func (c *Committer) takeAcks() []string {
	c.ackMu.Lock()
	defer c.ackMu.Unlock()
	a := c.acks
	c.acks = nil
	return a
}

// stepStage batches queued inputs and steps them. While the commit stage is busy it
// keeps stepping newly arrived inputs into the batch it holds, so a batch is whatever
// arrived during the previous commit (up to MaxBatch). It holds a read transaction
// only while stepping, never while it waits: the commit stage may need every reader
// gone to grow the file's mapping.
func (c *Committer) stepStage() {
	defer close(c.toCommit)
	st := &stepState{ov: newOverlay(), cache: map[string]pool.Pool{}, fresh: true}
	var p *pending
	// closing hands over what is held and the acks still pending.
	closing := func() {
		if acks := c.takeAcks(); len(acks) > 0 {
			if p == nil {
				p = c.newPending(st)
			}
			p.writes.acks = append(p.writes.acks, acks...)
		}
		if p != nil {
			c.toCommit <- p
		}
	}
	for {
		if p == nil {
			select {
			case r, ok := <-c.reqs:
				if !ok {
					closing()
					return
				}
				p = c.newPending(st)
				c.stepInto(st, p, r)
			case <-c.wake:
				p = c.newPending(st)
				p.writes.acks = c.takeAcks()
			}
			continue
		}
		// Hand over at once when the commit stage is idle (low latency); otherwise
		// keep stepping arrivals into this batch while it works.
		select {
		case c.toCommit <- p:
			p = nil
			continue
		default:
		}
		in := c.reqs
		if len(p.reqs) >= c.opts.MaxBatch {
			in = nil // full: only hand over
		}
		select {
		case c.toCommit <- p:
			p = nil
		case r, ok := <-in:
			if !ok {
				closing()
				return
			}
			if p.epoch != c.epoch.Load() {
				// p was stepped on a batch whose commit failed: it is void, and new
				// arrivals must not join it.
				c.toCommit <- p
				p = c.newPending(st)
			}
			c.stepInto(st, p, r)
		case <-c.wake:
			p.writes.acks = append(p.writes.acks, c.takeAcks()...)
		}
	}
}

// stepState is the step stage's memory: the overlay of uncommitted batches, decoded
// committed pool records, and the latest Meta.
type stepState struct {
	ov           *overlay
	cache        map[string]pool.Pool
	meta         pool.Meta
	outSeq       uint64 // last outbox key assigned
	fresh        bool   // meta and outSeq must be read from the snapshot
	batch, epoch uint64
}

func (c *Committer) newPending(st *stepState) *pending {
	if e := c.epoch.Load(); e != st.epoch {
		// A commit failed: what the overlay holds never reached the file.
		st.ov, st.epoch, st.fresh = newOverlay(), e, true
		clear(st.cache)
	}
	st.batch++
	return &pending{batch: st.batch, epoch: st.epoch, writes: newBatchWrites()}
}

// stepInto steps first and whatever else is queued (up to MaxBatch) into p, on a fresh
// snapshot plus the overlay.
func (c *Committer) stepInto(st *stepState, p *pending, first *request) {
	batch := []*request{first}
drain:
	for len(p.reqs)+len(batch) < c.opts.MaxBatch {
		select {
		case r, ok := <-c.reqs:
			if !ok {
				break drain
			}
			batch = append(batch, r)
		default:
			break drain
		}
	}
	committed := c.committed.Load() // before the snapshot: it holds at least these
	var r *txView                   // nil when the snapshot failed: every input gets err
	tx, err := c.s.db.Begin(false)
	if err == nil {
		defer tx.Rollback()
		r = newTxView(tx)
		if st.fresh {
			if st.meta, err = r.Meta(); err == nil {
				st.outSeq, st.fresh = r.outbox.Sequence(), false
			}
		}
		st.ov.trim(committed, st.cache)
	}
	v := &ovView{r: r, ov: st.ov, meta: &st.meta, cache: st.cache, batch: p.batch, outSeq: &st.outSeq}
	for _, req := range batch {
		var res Result
		ferr := err
		if ferr == nil {
			if c.opts.onStep != nil {
				c.opts.onStep(p.batch)
			}
			res, ferr = c.apply(v, p.writes, req.in)
		}
		p.reqs = append(p.reqs, req)
		p.results = append(p.results, res)
		p.failed = append(p.failed, ferr)
	}
}

// commitStage writes each batch in one transaction, in order, and answers its inputs.
func (c *Committer) commitStage() {
	defer close(c.done)
	for p := range c.toCommit {
		var err error
		switch {
		case p.epoch != c.epoch.Load():
			c.failMu.Lock()
			err = fmt.Errorf("an earlier batch this one was stepped on failed to commit: %w", c.failErr)
			c.failMu.Unlock()
		case !p.writes.empty():
			if c.opts.onWrite != nil {
				c.opts.onWrite(p.batch)
			}
			err = c.s.db.Update(func(tx *bolt.Tx) error {
				return writeBatch(tx, p.writes, int64(c.s.opts.JournalRetention), 4*len(p.reqs)+64)
			})
			if err != nil {
				c.failMu.Lock()
				c.failErr = err
				c.failMu.Unlock()
				c.epoch.Add(1)
			}
		}
		for i, r := range p.reqs {
			switch {
			case err != nil:
				r.err = fmt.Errorf("commit: %w", err)
				clear(p.results[i].Revealed)
			case p.failed[i] != nil:
				r.err = fmt.Errorf("store event %q: %w", r.in.Event.ID, p.failed[i])
			default:
				r.res = p.results[i]
			}
			close(r.done)
		}
		if err != nil {
			if len(p.writes.acks) > 0 {
				c.ackMu.Lock()
				c.acks = append(p.writes.acks, c.acks...)
				c.ackMu.Unlock()
			}
			continue
		}
		c.committed.Store(p.batch)
		if len(p.reqs) > 0 {
			c.txs.Add(1)
			c.inputs.Add(uint64(len(p.reqs)))
			if c.opts.onCommit != nil {
				c.opts.onCommit(len(p.reqs))
			}
		}
	}
}

// apply runs one step on the view and records its Ready. A rejection is returned in
// Result.Err with nothing recorded; an error return refuses the input (nothing of it
// recorded) without affecting the others.
func (c *Committer) apply(v *ovView, w *batchWrites, in Input) (res Result, err error) {
	r, serr := c.safeStep(v, in.Event)
	if serr != nil {
		return Result{Err: serr}, nil
	}
	res.Ready = r
	if r.Duplicate {
		// Never reveal on a duplicate: the original input did whatever revealing it did.
		return res, nil
	}
	if in.Reveal != "" {
		if !consumes(r, in.Reveal) {
			return Result{}, fmt.Errorf("reveal of %s asked by input %q, which does not consume it", in.Reveal, in.Event.ID)
		}
		plain, rerr := c.s.secretFrom(v.sealed(in.Reveal), in.Reveal)
		if rerr != nil {
			return Result{Err: rerr}, nil
		}
		res.Revealed = plain
	}
	if verr := v.validate(in, r, c.opts.AllowMissingSecrets); verr != nil {
		clear(res.Revealed)
		return Result{Err: verr}, nil
	}
	if kerr := checkKeys(in, r); kerr != nil {
		clear(res.Revealed)
		return Result{}, kerr
	}
	if werr := v.record(w, c.s.seal, in, r); werr != nil {
		clear(res.Revealed)
		return Result{}, werr
	}
	return res, nil
}

// consumes reports whether a step applied a `consumed` input for ref: the only step
// that may reveal a private bundle.
func consumes(r pool.Ready, ref string) bool {
	return r.Input.Type == events.TypeConsumed && r.Input.Ref == ref && !r.Duplicate && r.Seq != 0
}

// safeStep keeps a core bug from killing the single writer.
func (c *Committer) safeStep(v pool.View, ev events.Event) (r pool.Ready, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("step panicked on event %q: %v", ev.ID, p)
		}
	}()
	return c.step(v, ev)
}

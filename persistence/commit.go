package persistence

import (
	"context"
	"errors"
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

	onCommit func(inputs int) // tests and benchmarks: called after each committed batch
}

// CommitterStats count committed work since the committer started.
type CommitterStats struct {
	Transactions uint64 // bbolt transactions committed with at least one input
	Inputs       uint64 // inputs in them (accepted, rejected and duplicates)
}

// Committer is the single writer. It drains whatever inputs are queued into one bbolt
// transaction, without waiting for more, so that a lone input commits at once and a
// burst shares one fsync.
type Committer struct {
	s    *Store
	step StepFunc
	opts CommitterOptions

	mu     sync.RWMutex // closed, guarded against sends on a closed channel
	closed bool
	reqs   chan *request
	done   chan struct{}

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

// NewCommitter starts the writer goroutine with default options.
func NewCommitter(s *Store, step StepFunc) *Committer {
	return NewCommitterWith(s, step, CommitterOptions{})
}

// NewCommitterWith starts the writer goroutine.
func NewCommitterWith(s *Store, step StepFunc, opts CommitterOptions) *Committer {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	c := &Committer{
		s: s, step: step, opts: opts,
		reqs: make(chan *request, opts.MaxBatch),
		done: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}
	go c.run()
	return c
}

// Submit queues one input and waits until its transaction committed. A step rejection
// is Result.Err (nothing written); an error return means the commit itself failed or
// ctx ended first. When ctx ends after the input was queued it may still be committed:
// redelivering it is safe, the event id deduplicates.
func (c *Committer) Submit(ctx context.Context, in Input) (Result, error) {
	if c.s.opts.ReadOnly {
		return Result{}, fmt.Errorf("submit: store is read-only")
	}
	r := &request{in: in, done: make(chan struct{})}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return Result{}, fmt.Errorf("submit: committer %w", ErrClosed)
	}
	select {
	case c.reqs <- r:
		c.mu.RUnlock()
	case <-ctx.Done():
		c.mu.RUnlock()
		return Result{}, ctx.Err()
	}
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
		return Result{}, ctx.Err()
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
// waits for the writer to finish. It does not close the Store.
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

func (c *Committer) run() {
	defer close(c.done)
	batch := make([]*request, 0, c.opts.MaxBatch)
	for {
		var first *request
		select {
		case r, ok := <-c.reqs:
			if !ok {
				c.commit(nil) // pending acks
				return
			}
			first = r
		case <-c.wake:
			c.commit(nil)
			continue
		}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < c.opts.MaxBatch {
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
		c.commit(batch)
		clear(batch)
	}
}

// errAbort rolls back a transaction in which one input failed to write; the batch is
// retried without it (steps are pure, re-running them is safe).
var errAbort = errors.New("abort batch")

func (c *Committer) commit(batch []*request) {
	c.ackMu.Lock()
	acks := c.acks
	c.acks = nil
	c.ackMu.Unlock()
	if len(batch) == 0 && len(acks) == 0 {
		return
	}
	failed := make(map[int]error)
	for {
		results := make([]Result, len(batch))
		bad, badErr := -1, error(nil)
		err := c.s.db.Update(func(tx *bolt.Tx) error {
			v := newTxView(tx)
			for i, r := range batch {
				if failed[i] != nil {
					continue
				}
				res, werr := c.apply(v, r.in)
				if werr != nil {
					bad, badErr = i, werr
					return errAbort
				}
				results[i] = res
			}
			if err := v.flush(); err != nil {
				return err
			}
			if err := v.ackOutbox(acks); err != nil {
				return err
			}
			return v.pruneJournal(int64(c.s.opts.JournalRetention), 4*len(batch)+64)
		})
		if bad >= 0 {
			failed[bad] = badErr
			for _, res := range results {
				clear(res.Revealed)
			}
			continue
		}
		for i, r := range batch {
			switch {
			case failed[i] != nil:
				r.err = fmt.Errorf("store event %q: %w", r.in.Event.ID, failed[i])
			case err != nil:
				r.err = fmt.Errorf("commit: %w", err)
			default:
				r.res = results[i]
			}
			close(r.done)
		}
		if err == nil && len(batch) > 0 {
			c.txs.Add(1)
			c.inputs.Add(uint64(len(batch)))
			if c.opts.onCommit != nil {
				c.opts.onCommit(len(batch))
			}
		}
		if err != nil && len(acks) > 0 {
			c.ackMu.Lock()
			c.acks = append(acks, c.acks...)
			c.ackMu.Unlock()
		}
		return
	}
}

// apply runs one step on the transaction's view and writes its Ready. A rejection is
// returned in Result.Err with nothing written; an error return means a write failed
// part-way and the transaction must be rolled back.
func (c *Committer) apply(v *txView, in Input) (res Result, err error) {
	r, serr := c.safeStep(v, in.Event)
	if serr != nil {
		return Result{Err: serr}, nil
	}
	res.Ready = r
	if in.Reveal != "" {
		plain, rerr := c.s.secretIn(v, in.Reveal)
		switch {
		case rerr == nil:
			res.Revealed = plain
		case r.Duplicate && errors.Is(rerr, ErrNotFound):
			// Already taken and erased by the original delivery.
		default:
			return Result{Err: rerr}, nil
		}
	}
	if r.Duplicate {
		return res, nil
	}
	if verr := v.validate(in, r, c.opts.AllowMissingSecrets); verr != nil {
		clear(res.Revealed)
		return Result{Err: verr}, nil
	}
	if werr := v.write(c.s.seal, in, r); werr != nil {
		return Result{}, werr
	}
	return res, nil
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

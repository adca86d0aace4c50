package persistence

import (
	"errors"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// StepFunc is the core's step, normally (*pool.Core).Step.
type StepFunc func(pool.View, events.Event) (pool.Ready, error)

// Input is one input with the private material that must be stored (or released) in the
// same transaction as its effect.
type Input struct {
	Event events.Event
	// Secrets maps id → plaintext private material to store sealed: the hex ref for a
	// KeyPackage's private bundle, PoolSecretID(pool) for a pool's signature key.
	Secrets map[string][]byte
	// Reveal names a ref whose private bundle is read in the transaction before the
	// step's erasures are written, and returned in Result.Revealed. Only a step that
	// consumes that ref may reveal it.
	Reveal string
	// Erased names private material this input stores that the cluster has erased
	// already: a worker rebuilding a partition from its log finds gone the keys of
	// KeyPackages that a later input of the same log takes or deletes. The store keeps
	// a marker in their place, which counts as stored keys but reveals nothing.
	Erased []string
}

// Result of one applied (or rejected) input.
type Result struct {
	Ready pool.Ready
	// Err is the verdict on the input — the core's *pool.RejectError or the store's
	// *InputError: nothing of it was written, and the batch goes on.
	Err error
	// Revealed is the plaintext of Input.Reveal. The caller should clear it after use.
	Revealed []byte
}

// Batch is one write transaction of the single writer. The writer steps each input on
// the transaction itself (which sees the writes of the inputs before it), records the
// Ready in it, and commits once for the whole group. The loop belongs to the caller.
type Batch struct {
	s            *Store
	tx           *bolt.Tx
	v            *txView
	allowMissing bool
	inputs       int
}

// Begin opens the writer's transaction. allowMissingSecrets lets steps store live
// KeyPackages without private keys: only for replaying a journal into a new database.
func (s *Store) Begin(allowMissingSecrets bool) (*Batch, error) {
	if s.opts.ReadOnly {
		return nil, errors.New("begin: store is read-only")
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return &Batch{s: s, tx: tx, v: newTxView(tx), allowMissing: allowMissingSecrets}, nil
}

// View is the state the batch's next step sees.
func (b *Batch) View() pool.View { return b.v }

// Inputs is the number of inputs applied in the batch so far (rejected ones included).
func (b *Batch) Inputs() int { return b.inputs }

// Apply steps one input and records its Ready. A verdict on the input is Result.Err,
// with nothing of it written. An error return is not a verdict: the store, a view read
// or an invariant failed (or the core panicked), the transaction may hold part of the
// input, and the caller must roll the batch back.
func (b *Batch) Apply(step StepFunc, in Input) (res Result, err error) {
	// a damaged page met while stepping or recording is a *CorruptError, not a crash
	err = guard(b.s.path, func() error { res, err = b.apply(step, in); return err })
	return res, err
}

func (b *Batch) apply(step StepFunc, in Input) (res Result, err error) {
	r, err := safeStep(step, b.v, in.Event)
	if err != nil {
		if isVerdict(err) {
			b.inputs++
			return Result{Err: err}, nil
		}
		return Result{}, err
	}
	b.inputs++
	res.Ready = r
	if r.Duplicate {
		// Never reveal on a duplicate: the original input did whatever revealing it did.
		return res, nil
	}
	if verr := b.v.validate(in, r, b.allowMissing); verr != nil {
		if isVerdict(verr) {
			return Result{Err: verr}, nil
		}
		return Result{}, verr
	}
	if kerr := checkKeys(in, r); kerr != nil {
		return Result{Err: &InputError{EventID: in.Event.ID, Err: kerr}}, nil
	}
	if in.Reveal != "" {
		if !consumes(r, in.Reveal) {
			return Result{}, fmt.Errorf("reveal of %s asked by input %q, which does not consume it", in.Reveal, in.Event.ID)
		}
		plain, rerr := b.s.secretFrom(b.v.secrets.Get([]byte(in.Reveal)), in.Reveal)
		if rerr != nil {
			return Result{Err: &InputError{EventID: in.Event.ID, Ref: in.Reveal, Err: rerr, Reason: "the private keys cannot be read"}}, nil
		}
		res.Revealed = plain
	}
	if werr := b.v.record(b.s.seal, in, r); werr != nil {
		clear(res.Revealed)
		return Result{}, werr
	}
	return res, nil
}

// isVerdict tells a refusal of the input from a failure of the machinery.
func isVerdict(err error) bool {
	var ie *InputError
	return errors.Is(err, pool.ErrRejected) || errors.As(err, &ie)
}

// consumes reports whether a step applied a `consumed` input for ref: the only step
// that may reveal a private bundle.
func consumes(r pool.Ready, ref string) bool {
	return r.Input.Type == events.TypeConsumed && r.Input.Ref == ref && !r.Duplicate && r.Seq != 0
}

// safeStep keeps a core bug from killing the single writer: a panic is an internal error.
func safeStep(step StepFunc, v pool.View, ev events.Event) (r pool.Ready, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("step panicked on event %q: %v", ev.ID, p)
		}
	}()
	return step(v, ev)
}

// Publish adds a message to the outbox in this transaction (or replaces the one with
// its id): for records of the edge, such as a refused transition.
func (b *Batch) Publish(o events.Outbound) error { return b.v.putOutbox(o) }

// AckOutbox removes published outbox messages in this transaction.
func (b *Batch) AckOutbox(ids []string) error { return b.v.ackOutbox(ids) }

// SetQuiet makes the inputs applied next record no outbox messages: in a cluster, a new
// owner catching up on inputs whose effects the previous owner has published.
func (b *Batch) SetQuiet(quiet bool) { b.v.quiet = quiet }

// SetInputSeq records the stream sequence of the last input the batch applied, so a
// restart resumes after it (see InputSeq).
func (b *Batch) SetInputSeq(seq uint64) error { return b.v.meta.Put(kInputSeq, seqKey(seq)) }

// Commit prunes the journal past its retention and commits the transaction.
func (b *Batch) Commit() error {
	if err := b.v.pruneJournal(int64(b.s.opts.JournalRetention), 4*b.inputs+64); err != nil {
		b.tx.Rollback()
		return fmt.Errorf("prune journal: %w", err)
	}
	if err := b.tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// Rollback discards the batch.
func (b *Batch) Rollback() { _ = b.tx.Rollback() }

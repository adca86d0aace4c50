package replay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

// DBFile is the database name the worker uses inside its data directory, so `worker db
// inspect --data DIR`, `log export` and `replay --verify` work on a replayed directory.
// KeyFile is deliberately not the worker's kpool.key: `worker run --data DIR` then
// refuses the replayed database (it holds sealed records but the worker finds no key),
// which keeps anyone from serving KeyPackages whose private keys a replay never had.
const (
	DBFile  = "kpool.db"
	KeyFile = "replay.key"
)

// BoltOptions configure a bbolt target.
type BoltOptions struct {
	// KeyFile defaults to DIR/replay.key (created when absent). A replay stores no
	// private keys, but the store needs a key to open.
	KeyFile string
	// Fsync makes every commit durable against power loss. Without it a replay survives
	// a crash of the process (the resume test kills it) but not of the machine; a replay
	// can always be run again from its log.
	Fsync bool
	// JournalRetention is the persistence option of the same name (0 = keep all).
	JournalRetention time.Duration
}

// BoltTarget replays into a bbolt database through the persistence committer, exactly
// as the live worker commits. A database that already holds a prefix of the log is
// resumed (see Run). Meta, Pools and KeyPackages (a Source) come from StoreSource.
type BoltTarget struct {
	StoreSource
	c *persistence.Committer
}

// OpenBolt opens (or creates) DIR/kpool.db as a replay target.
func OpenBolt(dir string, core *pool.Core, o BoltOptions) (*BoltTarget, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if o.KeyFile == "" {
		o.KeyFile = filepath.Join(dir, KeyFile)
	}
	st, err := persistence.Open(filepath.Join(dir, DBFile), persistence.Options{KeyFile: o.KeyFile, NoSync: !o.Fsync, JournalRetention: o.JournalRetention})
	if err != nil {
		return nil, err
	}
	// The log holds public data only, so replayed KeyPackages have no private keys.
	c := persistence.NewCommitterWith(st, core.Step, persistence.CommitterOptions{AllowMissingSecrets: true})
	return &BoltTarget{StoreSource: StoreSource{Store: st}, c: c}, nil
}

// Step commits one input and waits for its transaction.
func (b *BoltTarget) Step(ctx context.Context, ev events.Event) (pool.Ready, error, error) {
	res, err := b.c.Submit(ctx, persistence.Input{Event: ev})
	return classify(res, err)
}

// StepAsync queues one input; the committer groups queued inputs into shared
// transactions, in order.
func (b *BoltTarget) StepAsync(ctx context.Context, ev events.Event) (func() (pool.Ready, error, error), error) {
	p, err := b.c.SubmitAsync(ctx, persistence.Input{Event: ev})
	if err != nil {
		return nil, err
	}
	return func() (pool.Ready, error, error) { return classify(p.Wait(ctx)) }, nil
}

// classify splits a committer result into the core's (or store's) refusal of the input
// and a failure that must stop the replay.
func classify(res persistence.Result, err error) (pool.Ready, error, error) {
	if err != nil {
		return pool.Ready{}, nil, err
	}
	if res.Err != nil {
		if !errors.Is(res.Err, pool.ErrRejected) && !isInputError(res.Err) {
			return pool.Ready{}, nil, res.Err // a core failure, not a refusal of this input
		}
		return pool.Ready{}, res.Err, nil
	}
	return res.Ready, nil, nil
}

func isInputError(err error) bool {
	var ie *persistence.InputError
	return errors.As(err, &ie)
}

// JournalEntry reads one journaled input.
func (b *BoltTarget) JournalEntry(seq uint64) (events.Event, bool, error) {
	var out events.Event
	found := false
	err := b.Store.Journal(seq, seq, func(s uint64, ev events.Event) error {
		out, found = ev, s == seq
		return nil
	})
	return out, found, err
}

// Close stops the committer and closes the database.
func (b *BoltTarget) Close() error {
	cerr := b.c.Close()
	if err := b.Store.Close(); err != nil {
		return err
	}
	return cerr
}

// StoreSource is a Source over a database (read-only is fine): what --verify dumps,
// and the read side of a BoltTarget.
type StoreSource struct{ Store *persistence.Store }

func (s StoreSource) Meta() (pool.Meta, error)    { return s.Store.Meta() }
func (s StoreSource) Pools() ([]pool.Pool, error) { return s.Store.Pools() }
func (s StoreSource) KeyPackages(id string, fn func(pool.KeyPackage) error) error {
	var ferr error
	err := s.Store.KeyPackages(id, func(kp pool.KeyPackage) bool {
		ferr = fn(kp)
		return ferr == nil
	})
	if err != nil {
		return fmt.Errorf("read key packages: %w", err)
	}
	return ferr
}

package replay

import (
	"context"
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

// BoltTarget replays into a bbolt database through persistence batches, exactly as the
// live worker's writer applies inputs: each input is stepped on the open transaction and
// recorded in it, and a group of inputs commits together. A database that already holds
// a prefix of the log is resumed (see Run). Meta, Pools and KeyPackages (a Source) come
// from StoreSource.
type BoltTarget struct {
	StoreSource
	step  persistence.StepFunc
	batch *persistence.Batch // open, or nil
	gen   uint64             // number of the open (or next) batch
	fail  error              // a commit failed: every later wait reports it
}

// replayGroup is the number of inputs committed together.
const replayGroup = 1024

// OpenBolt opens (or creates) DIR/kpool.db as a replay target.
func OpenBolt(dir string, core *pool.Core, o BoltOptions) (*BoltTarget, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if o.KeyFile == "" {
		o.KeyFile = filepath.Join(dir, KeyFile)
	}
	// NewDatabase: a replay's database is rebuilt from its log, and its key seals nothing,
	// so a fresh one beside an old replay.key is no loss.
	st, err := persistence.Open(filepath.Join(dir, DBFile), persistence.Options{KeyFile: o.KeyFile, NewDatabase: true, NoSync: !o.Fsync, JournalRetention: o.JournalRetention})
	if err != nil {
		return nil, err
	}
	return &BoltTarget{StoreSource: StoreSource{Store: st}, step: core.Step}, nil
}

// Step applies one input and commits it.
func (b *BoltTarget) Step(ctx context.Context, ev events.Event) (pool.Ready, error, error) {
	wait, err := b.StepAsync(ctx, ev)
	if err != nil {
		return pool.Ready{}, nil, err
	}
	return wait()
}

// StepAsync applies one input in the open batch; wait commits the batch if it is still
// open and returns the input's outcome. The log holds public data only, so replayed
// KeyPackages have no private keys.
func (b *BoltTarget) StepAsync(_ context.Context, ev events.Event) (func() (pool.Ready, error, error), error) {
	if b.fail != nil {
		return nil, b.fail
	}
	if b.batch == nil {
		batch, err := b.Store.Begin(true)
		if err != nil {
			return nil, err
		}
		b.batch = batch
	}
	res, err := b.batch.Apply(b.step, persistence.Input{Event: ev})
	if err != nil {
		b.batch.Rollback()
		b.batch = nil
		b.fail = err
		return nil, err
	}
	gen := b.gen
	if b.batch.Inputs() >= replayGroup {
		b.commit()
	}
	return func() (pool.Ready, error, error) {
		if gen == b.gen && b.batch != nil {
			b.commit()
		}
		if b.fail != nil {
			return pool.Ready{}, nil, b.fail
		}
		return res.Ready, res.Err, nil
	}, nil
}

func (b *BoltTarget) commit() {
	if err := b.batch.Commit(); err != nil && b.fail == nil {
		b.fail = err
	}
	b.batch = nil
	b.gen++
}

// JournalEntry reads one journaled input.
func (b *BoltTarget) JournalEntry(seq uint64) (events.Event, bool, error) {
	if b.batch != nil {
		b.commit()
	}
	var out events.Event
	found := false
	err := b.Store.Journal(seq, seq, func(s uint64, ev events.Event) error {
		out, found = ev, s == seq
		return nil
	})
	return out, found, err
}

// Close commits what is open and closes the database.
func (b *BoltTarget) Close() error {
	if b.batch != nil {
		b.commit()
	}
	if err := b.Store.Close(); err != nil {
		return err
	}
	return b.fail
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

// Package persistence stores kpool's state in a bbolt file: records, indexes, sealed
// private keys, the input journal and the outbox, one core step (or a group of steps)
// per transaction. It is the only package that imports bbolt. Layout, encryption and
// erasure are described in docs/storage.md.
package persistence

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Options configure Open.
type Options struct {
	// KeyFile holds the 32-byte master key. Created (mode 0600) when absent on a new
	// database. Required unless ReadOnly.
	KeyFile string
	// Timeout is how long Open waits for another process's lock before failing with
	// ErrLocked. Default 1s.
	Timeout time.Duration
	// JournalRetention keeps journal entries (and the dedup ids they carry) whose event
	// time is within this duration of the latest event time. 0 keeps everything.
	JournalRetention time.Duration
	// ReadOnly opens with a shared lock and never writes (inspect, check). KeyFile is
	// then optional; without it Secret fails with ErrNoKey.
	ReadOnly bool
	// MaxSize bounds the file in bytes; a commit that would grow it further fails.
	// 0: no limit.
	MaxSize int
	// NewDatabase allows creating a new database when the key file already exists.
	// Without it a key file beside a missing or empty database is refused
	// (ErrDatabaseMissing): the key belongs to a database that is gone, and starting
	// afresh would silently drop every pool (while the durable consumer has acknowledged
	// the events that built them).
	NewDatabase bool
	// NoSync skips fsync on commit. Only for tests and benchmarks: a crash may lose
	// committed transactions.
	NoSync bool
}

const initialMmap = 1 << 30

// DefaultTimeout is the lock wait when Options.Timeout is zero.
const DefaultTimeout = time.Second

// Store is an open kpool database.
type Store struct {
	db   *bolt.DB
	path string
	seal *sealer // nil when opened read-only without a key
	opts Options
}

// Open opens or creates the database at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.KeyFile == "" && !opts.ReadOnly {
		return nil, fmt.Errorf("open %s: %w (set --key-file)", path, ErrNoKeyFile)
	}
	if err := checkKeyBinding(path, opts); err != nil {
		return nil, err
	}
	// bbolt maps the file and trusts it; check what it would trust first.
	if err := checkFile(path); err != nil {
		return nil, err
	}
	var db *bolt.DB
	err := guard(path, func() (err error) {
		db, err = bolt.Open(path, 0o600, &bolt.Options{
			Timeout:  opts.Timeout,
			ReadOnly: opts.ReadOnly,
			NoSync:   opts.NoSync,
			MaxSize:  opts.MaxSize,
			// Read-only tools report free pages (bytes that may linger, docs/storage.md).
			PreLoadFreelist: opts.ReadOnly,
			// The array freelist hands out the lowest free run that fits. The hashmap one
			// splits whichever larger run map order yields first, so under kpool's churn
			// no run was left long enough for the freelist that every commit writes, and
			// the file grew while its contents did not; with the array it levels off. The
			// freelist stays in the file: without it (NoFreelistSync) every open walks all
			// pages, over a second per GiB. Figures: docs/benchmarks.md, "Freelist".
			FreelistType: bolt.FreelistArrayType,
			// Growing the mapping waits for every read transaction to end; the step stage
			// and API readers hold them all the time. Address space is cheap: map 1 GiB up
			// front so that growth rarely stalls a commit.
			InitialMmapSize: initialMmap,
		})
		return err
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w (lock not acquired within %v)", path, ErrLocked, opts.Timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &Store{db: db, path: path, opts: opts}
	if err := guard(path, s.init); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// checkKeyBinding refuses to create a database beside a key file that already exists,
// unless NewDatabase says to: a key file belongs to the database it was created with (the
// database holds a check value sealed under it), so a missing or emptied database next to
// it is a lost database, not a first start.
func checkKeyBinding(path string, opts Options) error {
	if opts.ReadOnly || opts.NewDatabase || opts.KeyFile == "" {
		return nil
	}
	exists, empty, err := fileState(path)
	if err != nil || !empty {
		return err
	}
	if _, err := os.Stat(opts.KeyFile); err != nil {
		return nil // no key file either: a first start creates both
	}
	state := "is missing"
	if exists {
		state = "is empty (0 bytes)"
	}
	return &KeyFileError{Path: opts.KeyFile, Err: ErrDatabaseMissing,
		Reason: fmt.Sprintf("database %s %s; restore it from a backup, or start with --new-database to create an empty one under this key (every pool is lost)", path, state)}
}

func (s *Store) init() error {
	if err := checkSchema(s.db, s.path, s.opts.ReadOnly); err != nil {
		return err
	}
	var check []byte
	if err := s.view(func(tx *bolt.Tx) error {
		check = bytes.Clone(tx.Bucket(bMeta).Get(kKeyCheck))
		return nil
	}); err != nil {
		return err
	}
	if s.opts.KeyFile == "" {
		return nil // read-only without a key
	}
	// A database that has never sealed anything may get a fresh key; one that has must
	// be opened with the key it was sealed under.
	key, err := loadKey(s.opts.KeyFile, check == nil && !s.opts.ReadOnly)
	if err != nil {
		return err
	}
	seal, err := newSealer(key)
	clear(key)
	if err != nil {
		return err
	}
	if check != nil {
		if _, err := seal.open(keyCheckAD, check); err != nil {
			return &KeyFileError{Path: s.opts.KeyFile, Err: ErrWrongKey,
				Reason: "it is not the key this database was written with"}
		}
	} else if !s.opts.ReadOnly {
		sealed, err := seal.seal(keyCheckAD, keyCheckPlain)
		if err != nil {
			return err
		}
		if err := s.update(func(tx *bolt.Tx) error {
			return tx.Bucket(bMeta).Put(kKeyCheck, sealed)
		}); err != nil {
			return err
		}
	}
	s.seal = seal
	return nil
}

// Close closes the database. Stop the Committer first.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.path }

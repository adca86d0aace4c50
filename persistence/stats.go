package persistence

import (
	"encoding/binary"

	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// Stats describe the file for `worker db inspect`. Counting walks every bucket: a
// tool, not for start-up.
type Stats struct {
	Path      string
	FileSize  int64
	PageSize  int
	FreePages int // pages on bbolt's freelist: their old bytes stay until reused
	// PendingPages were freed by transactions an open read transaction may still see;
	// FreelistBytes is the freelist as written on every commit.
	PendingPages, FreelistBytes int
	Schema                      uint32
	Sealed                      bool // a key check is stored: records are sealed under a key file
	Meta                        pool.Meta

	JournalFirst, JournalLast uint64
	Journal                   int
	Pools, KeyPackages        int
	Secrets, Index, Seen      int
	Outbox                    int
}

// Stats reads the counters of every bucket in one read transaction.
func (s *Store) Stats() (st Stats, err error) {
	st.Path = s.path
	// Bucket statistics recurse through the page tree: a damaged file whose pages form a
	// cycle would overflow the stack, which no recover catches. Walk the pages first
	// (as Check does) where no writer can change them under the walk.
	if s.opts.ReadOnly {
		if _, err := verifyPages(s.path); err != nil {
			return st, err
		}
	}
	err = s.view(func(tx *bolt.Tx) error {
		v := newTxView(tx)
		st.FileSize = tx.Size()
		st.PageSize = s.db.Info().PageSize
		dbs := s.db.Stats()
		st.FreePages, st.PendingPages, st.FreelistBytes = dbs.FreePageN, dbs.PendingPageN, dbs.FreelistInuse
		if b := v.meta.Get(kSchema); len(b) == 4 {
			st.Schema = binary.BigEndian.Uint32(b)
		}
		st.Sealed = v.meta.Get(kKeyCheck) != nil
		if st.Meta, err = v.Meta(); err != nil {
			return err
		}
		c := v.journal.Cursor()
		if k, _ := c.First(); k != nil {
			st.JournalFirst = seqOf(k)
		}
		if k, _ := c.Last(); k != nil {
			st.JournalLast = seqOf(k)
		}
		st.Journal = v.journal.Stats().KeyN
		st.Pools = v.pools.Stats().KeyN
		st.KeyPackages = v.kps.Stats().KeyN
		st.Secrets = v.secrets.Stats().KeyN
		st.Index = v.expiry.Stats().KeyN
		st.Seen = v.seen.Stats().KeyN
		st.Outbox = v.outbox.Stats().KeyN
		return nil
	})
	return st, err
}

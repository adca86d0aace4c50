package persistence

import (
	"bytes"
	"io"

	bolt "go.etcd.io/bbolt"
)

// Snapshot writes a consistent copy of the database to w while writers go on, and
// returns the input sequence the copy holds. A cluster keeps it so that a partition's
// next owner replays only the log after it (docs/scale-out.md).
func (s *Store) Snapshot(w io.Writer) (inputSeq uint64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		inputSeq = seqOf(tx.Bucket(bMeta).Get(kInputSeq))
		_, err := tx.WriteTo(w)
		return err
	})
	return inputSeq, err
}

// DropOutbox forgets every message waiting in the outbox: a partition's new owner whose
// view was copied (or left) before its predecessor published them.
func (s *Store) DropOutbox() (dropped int, err error) {
	err = s.update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bOutbox, bOutboxIDs} {
			b := tx.Bucket(name) // emptied key by key: its sequence goes on
			c := b.Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
				if bytes.Equal(name, bOutbox) {
					dropped++
				}
			}
		}
		return nil
	})
	return dropped, err
}

package persistence

import (
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// guard runs fn and turns what a damaged file makes bbolt do into a *CorruptError: one
// of its assertion panics, or a memory fault while it reads a page id that points past
// the end of the mapped file (SetPanicOnFault makes that a panic of this goroutine
// instead of a crash of the process). bbolt rolls back a transaction that panics.
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptError{Path: path, Reason: fmt.Sprintf("reading it failed: %v", r)}
		}
	}()
	return fn()
}

// view is db.View under guard.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	return guard(s.path, func() error { return s.db.View(fn) })
}

// update is db.Update under guard.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	return guard(s.path, func() error { return s.db.Update(fn) })
}

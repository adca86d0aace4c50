package persistence

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// CompactTo writes a compacted copy of the database to dst (which must not exist):
// only live pages are copied, so bytes left in freed pages — erased ciphertexts,
// old record versions — are not carried over. See docs/storage.md.
func (s *Store) CompactTo(dst string) error {
	if _, err := os.Stat(dst); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("compact: %s already exists", dst)
	}
	out, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: s.opts.Timeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	if err := guard(s.path, func() error { return bolt.Compact(out, s.db, 64<<20) }); err != nil {
		out.Close()
		os.Remove(dst)
		return fmt.Errorf("compact: %w", err)
	}
	if err := out.Close(); err != nil {
		os.Remove(dst)
		return fmt.Errorf("compact: %w", err)
	}
	return nil
}

// ReplaceFile atomically renames src over dst and syncs the directory, so that a
// crash leaves either the old or the new file in place.
func ReplaceFile(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

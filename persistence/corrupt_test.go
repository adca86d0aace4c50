package persistence

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// corruption is one damage done to a copy of a real database: a truncation at or around
// a page boundary, or a byte flip. Named and reproducible.
type corruption struct {
	name string
	size int  // truncate to size bytes (when > 0)
	off  int  // else flip byte off
	mask byte //   with this mask
}

func (c corruption) apply(orig []byte) []byte {
	if c.size > 0 {
		return orig[:c.size]
	}
	b := append([]byte(nil), orig...)
	b[c.off] ^= c.mask
	return b
}

// corruptions spreads damage over the pages in use (bbolt's file also holds a grown,
// never-written tail): every field of both meta pages, every field of every page header,
// and a prime stride of flips through keys, values and free space.
func corruptions(used int) []corruption {
	var out []corruption
	for _, n := range []int{1, 15, 16, 100, 4095, 4096, 4097, 8191, 8192, 8193, 12288, used / 2, used - 4096, used - 1} {
		if n > 0 && n < used {
			out = append(out, corruption{name: fmt.Sprintf("truncated to %d bytes (%d in use)", n, used), size: n})
		}
	}
	flip := func(off int, mask byte) {
		out = append(out, corruption{name: fmt.Sprintf("byte %d (page %d +%d) ^ %#02x", off, off/4096, off%4096, mask), off: off, mask: mask})
	}
	for _, page := range []int{0, 1} {
		for _, off := range []int{0, 8, 16, 20, 24, 32, 48, 56, 64, 72} {
			flip(page*4096+off, 0x01)
		}
	}
	for page := 2; page*4096 < used; page++ {
		for _, off := range []int{0, 3, 8, 10, 12, 16, 20, 24, 31} {
			flip(page*4096+off, 0x40)
		}
	}
	for off := 17; off < used; off += 997 { // a prime stride lands in keys, values and free space
		flip(off, 0xff)
	}
	return out
}

// TestCorruptDatabases: every truncation and byte flip of a real database ends in a clear
// error (ErrCorrupt, or another named refusal) or in a store whose every record reads and
// whose Check runs to the end; nothing panics, crashes the process or hangs.
func TestCorruptDatabases(t *testing.T) {
	s := coreDB(t)
	db, key := s.Path(), s.opts.KeyFile
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	f, err := openDBFile(db)
	if err != nil {
		t.Fatal(err)
	}
	used := int(f.meta.pgid) * int(f.meta.pageSize)
	f.f.Close()
	orig = orig[:used] // bbolt grows the file ahead of use; the tail was never written
	cases := corruptions(used)
	if len(cases) < 100 {
		t.Fatalf("only %d corruptions", len(cases))
	}
	var refused, problems, clean int
	var slowest time.Duration
	var slowestName string
	want := dumpFile(db, key)
	only := os.Getenv("KPOOL_CORRUPT_CASE") // reproduce one case by name
	for _, tc := range cases {
		if only != "" && tc.name != only {
			continue
		}
		dir := t.TempDir()
		path := filepath.Join(dir, "kpool.db")
		if err := os.WriteFile(path, tc.apply(orig), 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		done := make(chan string, 1)
		go func() {
			outcome := openAndReadAll(path, key)
			if outcome == "clean" {
				if d := dumpFile(path, key); d != want {
					outcome = "unnoticed: the data differs from the original, and nothing said so: " + firstDiff(want, d)
				}
			}
			done <- outcome
		}()
		select {
		case outcome := <-done:
			if d := time.Since(start); d > slowest {
				slowest, slowestName = d, tc.name
			}
			switch outcome {
			case "refused":
				refused++
			case "problems":
				problems++
			case "clean":
				clean++
			default:
				t.Errorf("%s: %s", tc.name, outcome)
			}
		case <-time.After(30 * time.Second): // generous: the machine may be loaded, a hang is for ever
			t.Fatalf("%s: open, read and check did not end within 30s", tc.name)
		}
	}
	t.Logf("%d corruptions: %d refused at open, %d opened with problems found, %d opened clean; slowest %v (%s)", len(cases), refused, problems, clean, slowest, slowestName)
	if refused == 0 && only == "" {
		t.Fatal("no corruption was refused at open: the table does not reach the file checks")
	}
}

// openAndReadAll opens a damaged copy, reads every record and runs Check. It returns
// "refused" (a clear error at open), "problems" (Check or a read found damage) or
// "clean", and anything else for an error that does not say what is wrong.
func openAndReadAll(path, key string) (outcome string) {
	defer func() {
		if r := recover(); r != nil {
			outcome = fmt.Sprintf("panic: %v", r)
		}
	}()
	st, err := Open(path, Options{KeyFile: key, Timeout: time.Second})
	if err != nil {
		if clearOpenError(err) {
			return "refused"
		}
		return fmt.Sprintf("open: unclear error %v", err)
	}
	defer st.Close()
	var readErrs []error
	note := func(err error) {
		if err != nil {
			readErrs = append(readErrs, err)
		}
	}
	_, err = st.Meta()
	note(err)
	pools, err := st.Pools()
	note(err)
	for _, p := range pools {
		note(st.KeyPackages(p.ID, func(pool.KeyPackage) bool { return true }))
	}
	note(st.Journal(0, 0, func(uint64, events.Event) error { return nil }))
	note(st.Outbox(func(events.Outbound) error { return nil }))
	_, err = st.Stats()
	note(err)
	var found []string
	if err := st.Check(func(p string) { found = append(found, p) }); err != nil {
		readErrs = append(readErrs, err)
	}
	for _, err := range readErrs {
		if errors.Is(err, ErrCorrupt) {
			return "problems"
		}
	}
	if len(found) > 0 || len(readErrs) > 0 {
		return "problems"
	}
	return "clean"
}

func clearOpenError(err error) bool {
	for _, e := range []error{ErrCorrupt, ErrSchema, ErrWrongKey, ErrKeyFileMissing} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dumpFile is every key and value of every bucket of the database at path, in order, or
// the error that kept it from being read.
func dumpFile(path, key string) string {
	st, err := Open(path, Options{KeyFile: key, ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return "open: " + err.Error()
	}
	defer st.Close()
	var b strings.Builder
	err = st.view(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			fmt.Fprintf(&b, "[%s]\n", name)
			return bk.ForEach(func(k, v []byte) error { fmt.Fprintf(&b, "%x=%x\n", k, v); return nil })
		})
	})
	if err != nil {
		return "read: " + err.Error()
	}
	return b.String()
}

// firstDiff names the first line of a dump that differs.
func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	bucket := ""
	for i := range min(len(al), len(bl)) {
		if strings.HasPrefix(al[i], "[") {
			bucket = al[i]
		}
		if al[i] != bl[i] {
			return fmt.Sprintf("bucket %s, entry %.40s…", bucket, al[i])
		}
	}
	return fmt.Sprintf("%d entries, not %d", len(bl), len(al))
}

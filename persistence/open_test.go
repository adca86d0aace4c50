package persistence

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// populated creates a database with one pool and one sealed KeyPackage bundle.
func populated(t *testing.T) (db, key string) {
	t.Helper()
	db, key = testPaths(t)
	s := mustOpen(t, db, key)
	c := newCommitter(s, fakeStep)
	submitOK(t, c, regInput("r1", "p1"))
	submitOK(t, c, genInput("g1", "p1", refOf(1), t0))
	c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return db, key
}

func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeyFileCreated0600(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	st, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != KeySize {
		t.Fatalf("key file mode %v size %d, want 0600 and %d bytes", st.Mode().Perm(), st.Size(), KeySize)
	}
}

func TestWrongKeyFile(t *testing.T) {
	db, _ := populated(t)
	other := filepath.Join(t.TempDir(), "other.key")
	if err := os.WriteFile(other, bytes.Repeat([]byte{7}, KeySize), 0o600); err != nil {
		t.Fatal(err)
	}
	before := fileBytes(t, db)
	_, err := Open(db, Options{KeyFile: other})
	var kfe *KeyFileError
	if !errors.Is(err, ErrWrongKey) || !errors.As(err, &kfe) || kfe.Path != other {
		t.Fatalf("Open with another key: %v, want ErrWrongKey naming %s", err, other)
	}
	if !bytes.Equal(before, fileBytes(t, db)) {
		t.Fatal("refused open changed the database file")
	}
}

func TestWorldReadableKeyFile(t *testing.T) {
	db, key := populated(t)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	before := fileBytes(t, db)
	_, err := Open(db, Options{KeyFile: key})
	if !errors.Is(err, ErrKeyFilePermissions) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Open with mode 0644 key: %v, want ErrKeyFilePermissions with advice", err)
	}
	if !bytes.Equal(before, fileBytes(t, db)) {
		t.Fatal("refused open changed the database file")
	}
	// A new database refuses it too, before anything is sealed under it.
	db2 := filepath.Join(t.TempDir(), "new.db")
	if _, err := Open(db2, Options{KeyFile: key, NewDatabase: true}); !errors.Is(err, ErrKeyFilePermissions) {
		t.Fatalf("new database with a 0644 key: %v", err)
	}
}

func TestKeyFileWrongLength(t *testing.T) {
	db, key := populated(t)
	if err := os.WriteFile(key, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(db, Options{KeyFile: key}); !errors.Is(err, ErrKeyFileInvalid) {
		t.Fatalf("Open with a 5-byte key: %v, want ErrKeyFileInvalid", err)
	}
}

func TestKeyFileMissingForSealedDatabase(t *testing.T) {
	db, key := populated(t)
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	_, err := Open(db, Options{KeyFile: key})
	if !errors.Is(err, ErrKeyFileMissing) {
		t.Fatalf("Open without the key: %v, want ErrKeyFileMissing", err)
	}
	if _, serr := os.Stat(key); !errors.Is(serr, os.ErrNotExist) {
		t.Fatal("a fresh key was created for a database sealed under another")
	}
	if _, err := Open(db, Options{}); !errors.Is(err, ErrNoKeyFile) {
		t.Fatalf("Open with no key file configured: %v, want ErrNoKeyFile", err)
	}
}

func TestCorruptedCiphertext(t *testing.T) {
	db, key := populated(t)
	raw, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bSecrets)
		v := bytes.Clone(b.Get([]byte(refOf(1))))
		v[len(v)/2] ^= 0x01
		return b.Put([]byte(refOf(1)), v)
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	s := mustOpen(t, db, key) // the key check still passes: the key is right
	defer s.Close()
	_, err = s.Secret(refOf(1))
	var se *SecretError
	if !errors.Is(err, ErrCorruptSecret) || !errors.As(err, &se) || se.ID != refOf(1) {
		t.Fatalf("Secret of damaged ciphertext: %v, want ErrCorruptSecret naming the ref", err)
	}
	if got, err := s.Secret(PoolSecretID("p1")); err != nil || !bytes.Equal(got, secretOf(PoolSecretID("p1"))) {
		t.Fatalf("undamaged secret: %v", err)
	}
	// A take of the damaged bundle is refused and changes nothing.
	c := newCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, Input{Event: evRef("a1", "upload_ack", "p1", refOf(1), t0)})
	before := dump(t, s)
	res := submit(t, c, Input{Event: evRef("x1", "consumed", "p1", refOf(1), t0), Reveal: refOf(1)})
	if !errors.Is(res.Err, ErrCorruptSecret) || res.Revealed != nil {
		t.Fatalf("take of damaged bundle: %v", res.Err)
	}
	if d := sameDump(before, dump(t, s)); d != "" {
		t.Fatalf("refused take changed the store: %s", d)
	}
}

func setSchema(t *testing.T, db string, v []byte) {
	t.Helper()
	raw, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Update(func(tx *bolt.Tx) error {
		if v == nil {
			return tx.Bucket(bMeta).Delete(kSchema)
		}
		return tx.Bucket(bMeta).Put(kSchema, v)
	}); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownSchemaVersion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value []byte
		found string
	}{
		{"newer", encVersion(SchemaVersion + 1), strconv.FormatUint(uint64(SchemaVersion+1), 10)},
		{"zero", encVersion(0), "0"},
		{"garbage", []byte("v1"), "0x7631"},
		{"absent", nil, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, key := populated(t)
			setSchema(t, db, tc.value)
			before := fileBytes(t, db)
			_, err := Open(db, Options{KeyFile: key})
			var se *SchemaError
			if !errors.Is(err, ErrSchema) || !errors.As(err, &se) || !strings.Contains(err.Error(), "found schema version "+tc.found) {
				t.Fatalf("Open: %v, want ErrSchema reporting %s", err, tc.found)
			}
			if !bytes.Equal(before, fileBytes(t, db)) {
				t.Fatal("refused open changed the database file")
			}
		})
	}
}

func TestSecondOpenerGetsLocked(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	start := time.Now()
	_, err := Open(db, Options{KeyFile: key, Timeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "database in use by another worker") {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Fatalf("second Open hung for %v", waited)
	}
	// Read-only openers are refused as well while a worker holds the file.
	if _, err := Open(db, Options{ReadOnly: true, Timeout: 100 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only Open while locked: %v, want ErrLocked", err)
	}
}

func TestReadOnlyWithoutKey(t *testing.T) {
	db, _ := populated(t)
	s, err := Open(db, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p, ok, err := s.Pool("p1"); err != nil || !ok || p.ID != "p1" {
		t.Fatalf("Pool: %+v %v %v", p, ok, err)
	}
	if _, err := s.Secret(refOf(1)); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Secret without key: %v, want ErrNoKey", err)
	}
}

// The plaintext of a private key never reaches the file, not even in pages freed by
// its erasure; its ciphertext is gone from the live records after the erase.
func TestPlaintextNeverInFile(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	c := newCommitter(s, fakeStep)
	submitOK(t, c, regInput("r1", "p1"))
	var known [][]byte
	for i := range 50 {
		submitOK(t, c, genInput("g"+refOf(i), "p1", refOf(i), t0))
		known = append(known, secretOf(refOf(i)))
	}
	known = append(known, secretOf(PoolSecretID("p1")))
	for i := range 25 {
		submitOK(t, c, Input{Event: evRef("a"+refOf(i), "upload_ack", "p1", refOf(i), t0)})
		res := submitOK(t, c, Input{Event: evRef("x"+refOf(i), "consumed", "p1", refOf(i), t0), Reveal: refOf(i)})
		if !bytes.Equal(res.Revealed, secretOf(refOf(i))) {
			t.Fatalf("take %d revealed the wrong bundle", i)
		}
	}
	c.Close()
	s.Close()
	file := fileBytes(t, db)
	for i, k := range known {
		if bytes.Contains(file, k) {
			t.Fatalf("plaintext of secret %d found in the database file", i)
		}
		if bytes.Contains(file, k[8:24]) {
			t.Fatalf("16 bytes of secret %d found in the database file", i)
		}
	}
	if !bytes.Contains(file, []byte(base64.StdEncoding.EncodeToString([]byte("kp-"+refOf(49))))) {
		t.Fatal("scan is blind: public KeyPackage bytes not found either")
	}
}

// TestKeyFileWithoutDatabase: a key file beside a missing or emptied database is refused
// (it used to start with 0 pools while the stream's events were already acknowledged);
// NewDatabase creates a new database under the existing key; a first start creates both.
func TestKeyFileWithoutDatabase(t *testing.T) {
	db, key := populated(t)
	keyBefore := fileBytes(t, key)
	for _, tc := range []struct {
		name  string
		state string
		prep  func()
	}{
		{"emptied", "is empty (0 bytes)", func() { os.Truncate(db, 0) }},
		{"removed", "is missing", func() { os.Remove(db) }},
	} {
		tc.prep()
		_, err := Open(db, Options{KeyFile: key})
		if !errors.Is(err, ErrDatabaseMissing) || !strings.Contains(err.Error(), tc.state) || !strings.Contains(err.Error(), "--new-database") {
			t.Fatalf("%s database: %v", tc.name, err)
		}
		if st, err := os.Stat(db); err == nil && st.Size() != 0 {
			t.Fatalf("%s database: refused open wrote %d bytes", tc.name, st.Size())
		}
	}
	s, err := Open(db, Options{KeyFile: key, NewDatabase: true})
	if err != nil {
		t.Fatalf("NewDatabase: %v", err)
	}
	if pools, err := s.Pools(); err != nil || len(pools) != 0 {
		t.Fatalf("new database holds %v %v", pools, err)
	}
	s.Close()
	if !bytes.Equal(fileBytes(t, key), keyBefore) {
		t.Fatal("NewDatabase replaced the key file")
	}
	// the new database is bound to the key like any other: it reopens without the flag
	s = mustOpen(t, db, key)
	s.Close()
	// a first start: neither file exists
	db2, key2 := testPaths(t)
	mustOpen(t, db2, key2).Close()
}

// TestCorruptFileRefusedBeforeMapping: a truncated database is refused with ErrCorrupt at
// Open, naming what is missing (bbolt used to map it and die of SIGBUS on first read).
func TestCorruptFileRefusedBeforeMapping(t *testing.T) {
	db, key := populated(t)
	f, err := openDBFile(db)
	if err != nil {
		t.Fatal(err)
	}
	used := int64(f.meta.pgid) * int64(f.meta.pageSize)
	f.f.Close()
	if err := os.Truncate(db, used-1); err != nil {
		t.Fatal(err)
	}
	_, err = Open(db, Options{KeyFile: key})
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "truncated?") {
		t.Fatalf("truncated database: %v", err)
	}
	if _, err := Open(db, Options{ReadOnly: true}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated database, read-only: %v", err)
	}
}

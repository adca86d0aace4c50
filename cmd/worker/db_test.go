package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

var dbT0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func dbRef(i int) string { return fmt.Sprintf("%064x", i) }

func dbSecret(id string) []byte {
	h := sha256.Sum256([]byte("private " + id))
	return h[:]
}

// dbFixture writes a database through the real core: pool p1 with three
// KeyPackages, one available, one taken (deleted) and one created. With keyless, one
// more is stored without private keys (as a replay would), which check must report.
func dbFixture(t *testing.T, keyless bool) string {
	t.Helper()
	dir := t.TempDir()
	s, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{KeyFile: filepath.Join(dir, "kpool.key")})
	if err != nil {
		t.Fatal(err)
	}
	sub := func(in persistence.Input) {
		t.Helper()
		b, err := s.Begin(keyless)
		if err != nil {
			t.Fatal(err)
		}
		res, err := b.Apply((&pool.Core{}).Step, in)
		if err != nil || res.Err != nil {
			b.Rollback()
			t.Fatalf("%s: %v %v", in.Event.ID, err, res.Err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	sub(persistence.Input{Event: events.Event{ID: "reg", Type: events.TypePoolRegistered, Time: dbT0, Pool: "p1",
		Register: &events.Register{Identity: "alice", CipherSuite: 1, SignatureKey: []byte("pub")}},
		Secrets: map[string][]byte{persistence.PoolSecretID("p1"): dbSecret("pool")}})
	n := 3
	if keyless {
		n = 4
	}
	for i := range n {
		ev := events.Event{ID: fmt.Sprintf("gen%d", i), Type: events.TypeGenerated, Time: dbT0, Pool: "p1",
			Generated: &events.Generated{Ref: dbRef(i), KeyPackage: []byte("kp"), NotBefore: dbT0.Unix() - 3600, NotAfter: dbT0.Add(80 * 24 * time.Hour).Unix()}}
		in := persistence.Input{Event: ev, Secrets: map[string][]byte{dbRef(i): dbSecret(dbRef(i))}}
		if i == 3 {
			in.Secrets = nil
		}
		sub(in)
	}
	for i := range 2 {
		sub(persistence.Input{Event: events.Event{ID: fmt.Sprintf("ack%d", i), Type: events.TypeUploadAck, Time: dbT0, Pool: "p1", Ref: dbRef(i)}})
	}
	sub(persistence.Input{Event: events.Event{ID: "take1", Type: events.TypeConsumed, Time: dbT0, Pool: "p1", Ref: dbRef(1)}, Reveal: dbRef(1)})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func noSecrets(t *testing.T, out string) {
	t.Helper()
	for _, id := range []string{"pool", dbRef(0), dbRef(1), dbRef(2)} {
		s := dbSecret(id)
		if strings.Contains(out, string(s)) || strings.Contains(out, fmt.Sprintf("%x", s)) {
			t.Fatalf("output holds the private key of %s", id)
		}
	}
}

func TestDBInspect(t *testing.T) {
	dir := dbFixture(t, false)
	code, out, errOut := runCLI(t, "", "db", "inspect", "--data", dir)
	if code != exitOK || !strings.Contains(out, "applied    seq 7") || !strings.Contains(out, "3 KeyPackages, 3 sealed secrets") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "p1    alice") {
		t.Fatalf("pool row missing:\n%s", out)
	}
	noSecrets(t, out)

	code, out, _ = runCLI(t, "", "db", "inspect", "--data", dir, "--pool", "p1")
	if code != exitOK || !strings.Contains(out, dbRef(0)+"  available") || !strings.Contains(out, dbRef(1)+"  deleted") {
		t.Fatalf("--pool: exit %d\n%s", code, out)
	}
	lines := strings.Split(out, "\n")
	for _, l := range lines {
		if strings.HasPrefix(l, dbRef(1)) && !strings.HasSuffix(l, "none") || strings.HasPrefix(l, dbRef(0)) && !strings.HasSuffix(l, "stored (sealed)") {
			t.Fatalf("private-keys column wrong: %q", l)
		}
	}
	noSecrets(t, out)

	code, out, _ = runCLI(t, "", "db", "inspect", "--data", dir, "--ref", dbRef(2), "--json")
	if code != exitOK || !strings.Contains(out, `"state": "created"`) || !strings.Contains(out, `"private_keys_stored": true`) {
		t.Fatalf("--ref: exit %d\n%s", code, out)
	}
	code, _, errOut = runCLI(t, "", "db", "inspect", "--data", dir, "--ref", dbRef(9))
	if code != exitFailure || !strings.Contains(errOut, "no KeyPackage "+dbRef(9)) {
		t.Fatalf("unknown ref: exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "db", "inspect", "--data", filepath.Join(dir, "nope"))
	if code != exitFailure || !strings.Contains(errOut, "no database at") {
		t.Fatalf("missing db: exit %d %s", code, errOut)
	}
}

func TestDBCommandsWhileWorkerRuns(t *testing.T) {
	dir := dbFixture(t, false)
	s, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{KeyFile: filepath.Join(dir, "kpool.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, cmd := range []string{"inspect", "check", "compact"} {
		code, _, errOut := runCLI(t, "", "db", cmd, "--data", dir, "--timeout", "50ms")
		if code != exitFailure || !strings.Contains(errOut, "database in use by another worker") {
			t.Fatalf("db %s while locked: exit %d %s", cmd, code, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "kpool.db.compact")); !os.IsNotExist(err) {
		t.Fatal("compact wrote a copy while the worker held the lock")
	}
}

func TestDBCheck(t *testing.T) {
	dir := dbFixture(t, false)
	code, out, errOut := runCLI(t, "", "db", "check", "--data", dir)
	if code != exitOK || !strings.Contains(out, "is consistent") || !strings.Contains(out, "private keys decrypted") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	other := filepath.Join(t.TempDir(), "other.key")
	os.WriteFile(other, make([]byte, persistence.KeySize), 0o600)
	code, _, errOut = runCLI(t, "", "db", "check", "--data", dir, "--key-file", other)
	if code != exitFailure || !strings.Contains(errOut, "does not decrypt this database") {
		t.Fatalf("wrong key: exit %d %s", code, errOut)
	}

	bad := dbFixture(t, true)
	code, out, _ = runCLI(t, "", "db", "check", "--data", bad)
	if code != exitFailure || !strings.Contains(out, "keypackage "+dbRef(3)+" is created without private keys") || !strings.Contains(out, "1 problems") {
		t.Fatalf("keyless: exit %d\n%s", code, out)
	}
}

// A journal whose start retention pruned (the default after 30 days) is not a problem:
// db check says it skipped the replay and exits 0; the other checks still run.
func TestDBCheckPrunedJournal(t *testing.T) {
	dir := dbFixture(t, false)
	s, err := persistence.Open(filepath.Join(dir, "kpool.db"), persistence.Options{KeyFile: filepath.Join(dir, "kpool.key"), JournalRetention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := b.Apply((&pool.Core{}).Step, persistence.Input{Event: events.Event{ID: "late", Type: events.TypeExpiryTick, Time: dbT0.Add(2 * time.Hour)}}); err != nil || res.Err != nil {
		t.Fatal(err, res.Err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	code, out, errOut := runCLI(t, "", "db", "check", "--data", dir)
	if code != exitOK || !strings.Contains(out, "journal replay skipped: the journal starts at seq 8 (older inputs were pruned by journal retention)") ||
		!strings.Contains(out, "pool invariants, journal replay skipped; private keys decrypted") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestDBCompact(t *testing.T) {
	dir := dbFixture(t, false)
	_, before, _ := runCLI(t, "", "db", "inspect", "--data", dir, "--pool", "p1", "--json")
	code, out, errOut := runCLI(t, "", "db", "compact", "--data", dir)
	if code != exitOK || !strings.Contains(out, "kpool.db.compact") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "", "db", "compact", "--data", dir, "--replace")
	if code != exitFailure || !strings.Contains(errOut, "kpool.db.compact already exists (left by an earlier `db compact`?): remove it, or give another --out") {
		t.Fatalf("second compact: exit %d %s", code, errOut)
	}
	os.Remove(filepath.Join(dir, "kpool.db.compact"))
	code, out, errOut = runCLI(t, "", "db", "compact", "--data", dir, "--replace")
	if code != exitOK || !strings.Contains(out, "replaced") {
		t.Fatalf("--replace: exit %d\n%s\n%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "kpool.db.compact")); !os.IsNotExist(err) {
		t.Fatal("the copy was not renamed over kpool.db")
	}
	_, after, _ := runCLI(t, "", "db", "inspect", "--data", dir, "--pool", "p1", "--json")
	if before != after || !strings.Contains(after, dbRef(0)) {
		t.Fatalf("records changed by compaction:\n%s\n%s", before, after)
	}
	if code, out, _ := runCLI(t, "", "db", "check", "--data", dir); code != exitOK {
		t.Fatalf("check after compaction: exit %d\n%s", code, out)
	}
}

// TestDBInspectUnits: durations read as durations, JSON keys are snake_case, and inspect
// and compact report the same size for the same file.
func TestDBInspectUnits(t *testing.T) {
	dir := dbFixture(t, false)
	code, out, errOut := runCLI(t, "", "db", "inspect", "--data", dir, "--pool", "p1")
	if code != exitOK || !strings.Contains(out, `"lifetime": "2016h0m0s"`) || !strings.Contains(out, `"expiry_margin": "`) {
		t.Fatalf("--pool: exit %d %s\n%s", code, errOut, out)
	}
	code, out, _ = runCLI(t, "", "db", "inspect", "--data", dir, "--json")
	var doc struct {
		Stats map[string]any `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &doc); code != exitOK || err != nil {
		t.Fatalf("--json: exit %d %v\n%s", code, err, out)
	}
	for k := range doc.Stats {
		if k != strings.ToLower(k) {
			t.Errorf("stats key %q is not snake_case", k)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "kpool.db"))
	if err != nil {
		t.Fatal(err)
	}
	if doc.Stats["file_size"] != float64(fi.Size()) {
		t.Errorf("file_size %v, the file has %d bytes", doc.Stats["file_size"], fi.Size())
	}
	_, text, _ := runCLI(t, "", "db", "inspect", "--data", dir)
	onDisk := mib(fi.Size()) + " on disk"
	_, compacted, _ := runCLI(t, "", "db", "compact", "--data", dir)
	if !strings.Contains(text, onDisk) || !strings.Contains(compacted, "kpool.db ("+onDisk+")") {
		t.Errorf("inspect and compact disagree on the size (%s):\n%s\n%s", onDisk, text, compacted)
	}
}

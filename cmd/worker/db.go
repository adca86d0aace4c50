package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

// `worker db inspect|check|compact`: offline tools on the bbolt file. They open it
// read-only, so they fail with "database in use by another worker" while one runs.

func init() {
	register(command{name: "db inspect", summary: "print pools, counts and records of the database (never private keys)", run: runDBInspect})
	register(command{name: "db check", summary: "run bbolt's consistency check and the pool invariants", run: runDBCheck})
	register(command{name: "db compact", summary: "write a compacted copy of the database (drops freed pages)", run: runDBCompact})
}

// Exit statuses of the db commands.
const (
	dbOK       = 0
	dbProblems = 1 // check found inconsistencies
	dbFailed   = 2 // usage, open or read error
)

type dbFlags struct {
	data, keyFile string
	timeout       time.Duration
}

func (d *dbFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.data, "data", envOr("KPOOL_DATA", "./data"), "data directory holding kpool.db [KPOOL_DATA]")
	fs.StringVar(&d.keyFile, "key-file", envOr("KPOOL_KEY_FILE", ""), "master key file (default <data>/kpool.key when present) [KPOOL_KEY_FILE]")
	fs.DurationVar(&d.timeout, "timeout", time.Second, "how long to wait for the lock of a running worker")
}

func (d *dbFlags) path() string { return filepath.Join(d.data, "kpool.db") }

// open opens read-only. withKey uses the key file when one is configured or present,
// so that secrets can be checked for decryption; inspect never needs it.
func (d *dbFlags) open(withKey bool) (*persistence.Store, error) {
	if _, err := os.Stat(d.path()); err != nil {
		return nil, fmt.Errorf("no database at %s: %w", d.path(), err)
	}
	opts := persistence.Options{ReadOnly: true, Timeout: d.timeout}
	if withKey {
		opts.KeyFile = d.keyFile
		if opts.KeyFile == "" {
			def := filepath.Join(d.data, "kpool.key")
			if _, err := os.Stat(def); err == nil {
				opts.KeyFile = def
			}
		}
	}
	return persistence.Open(d.path(), opts)
}

func dbParse(name string, args []string, stderr io.Writer, d *dbFlags, extra func(*flag.FlagSet)) bool {
	fs := flag.NewFlagSet("worker "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	d.register(fs)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return false
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "worker %s: unexpected argument %q\n", name, fs.Arg(0))
		return false
	}
	return true
}

func runDBInspect(args []string, stdout, stderr io.Writer) int {
	var d dbFlags
	var poolID, ref string
	var asJSON bool
	if !dbParse("db inspect", args, stderr, &d, func(fs *flag.FlagSet) {
		fs.StringVar(&poolID, "pool", "", "show pool `P` and its KeyPackages")
		fs.StringVar(&ref, "ref", "", "show the KeyPackage record `R` (public data only)")
		fs.BoolVar(&asJSON, "json", false, "print records as JSON")
	}) {
		return dbFailed
	}
	s, err := d.open(false)
	if err != nil {
		fmt.Fprintln(stderr, "db inspect:", err)
		return dbFailed
	}
	defer s.Close()
	switch {
	case ref != "":
		err = inspectRef(s, ref, asJSON, stdout)
	case poolID != "":
		err = inspectPool(s, poolID, asJSON, stdout)
	default:
		err = inspectAll(s, asJSON, stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "db inspect:", err)
		return dbFailed
	}
	return dbOK
}

func dbJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func inspectAll(s *persistence.Store, asJSON bool, w io.Writer) error {
	st, err := s.Stats()
	if err != nil {
		return err
	}
	pools, err := s.Pools()
	if err != nil {
		return err
	}
	if asJSON {
		return dbJSON(w, struct {
			Stats persistence.Stats `json:"stats"`
			Pools []pool.Pool       `json:"pools"`
		}{st, pools})
	}
	fmt.Fprintf(w, "database   %s (%s, page %d B, %d free pages, schema %d, sealed %v)\n",
		st.Path, mib(st.FileSize), st.PageSize, st.FreePages, st.Schema, st.Sealed)
	fmt.Fprintf(w, "applied    seq %d, time %s\n", st.Meta.Seq, fmtTime(st.Meta.Time))
	fmt.Fprintf(w, "journal    %d entries (seq %d..%d)\n", st.Journal, st.JournalFirst, st.JournalLast)
	fmt.Fprintf(w, "outbox     %d unpublished\n", st.Outbox)
	fmt.Fprintf(w, "records    %d pools, %d KeyPackages, %d sealed secrets, %d expiry entries, %d dedup ids\n\n",
		st.Pools, st.KeyPackages, st.Secrets, st.Index, st.Seen)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tIDENTITY\tSUITE\tCREATED\tAVAILABLE\tFRESH\tCLAIMED\tEXPIRED\tDELETED\tSTATUS-SEQ")
	for _, p := range pools {
		c := p.Counts
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", p.ID, p.Identity, p.CipherSuite,
			c.Created, c.Available, p.Fresh, c.Claimed, c.Expired, c.Deleted, p.StatusSeq)
	}
	return tw.Flush()
}

func inspectPool(s *persistence.Store, id string, asJSON bool, w io.Writer) error {
	p, ok, err := s.Pool(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no pool %q in %s", id, s.Path())
	}
	var kps []pool.KeyPackage
	if err := s.KeyPackages(id, func(kp pool.KeyPackage) bool { kps = append(kps, kp); return true }); err != nil {
		return err
	}
	if asJSON {
		return dbJSON(w, struct {
			Pool        pool.Pool         `json:"pool"`
			KeyPackages []pool.KeyPackage `json:"keypackages"`
		}{p, kps})
	}
	if err := dbJSON(w, p); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tSTATE\tLAST-RESORT\tNOT-AFTER\tDEADLINE\tPRIVATE-KEYS")
	for _, kp := range kps {
		keys, err := s.HasSecret(kp.Ref)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\n", kp.Ref, kp.State, kp.LastResort,
			fmtTime(time.Unix(kp.NotAfter, 0)), fmtTime(kp.Deadline), storedOrNot(keys))
	}
	return tw.Flush()
}

func inspectRef(s *persistence.Store, ref string, asJSON bool, w io.Writer) error {
	kp, ok, err := s.KeyPackage(ref)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no KeyPackage %s in %s (never stored, or its tombstone was purged)", ref, s.Path())
	}
	keys, err := s.HasSecret(ref)
	if err != nil {
		return err
	}
	if asJSON {
		return dbJSON(w, struct {
			KeyPackage  pool.KeyPackage `json:"keypackage"`
			PrivateKeys bool            `json:"private_keys_stored"`
		}{kp, keys})
	}
	if err := dbJSON(w, kp); err != nil {
		return err
	}
	fmt.Fprintf(w, "private keys: %s\n", storedOrNot(keys))
	return nil
}

func storedOrNot(ok bool) string {
	if ok {
		return "stored (sealed)"
	}
	return "none"
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func runDBCheck(args []string, stdout, stderr io.Writer) int {
	var d dbFlags
	if !dbParse("db check", args, stderr, &d, nil) {
		return dbFailed
	}
	s, err := d.open(true)
	if err != nil {
		fmt.Fprintln(stderr, "db check:", err)
		return dbFailed
	}
	defer s.Close()
	n := 0
	if err := s.Check(func(p string) { n++; fmt.Fprintln(stdout, p) }); err != nil {
		fmt.Fprintln(stderr, "db check:", err)
		return dbFailed
	}
	if n > 0 {
		fmt.Fprintf(stdout, "%d problems in %s\n", n, s.Path())
		return dbProblems
	}
	how := "private keys decrypted"
	if !s.HasKey() {
		how = "private keys checked for presence only (no key file)"
	}
	fmt.Fprintf(stdout, "ok: %s is consistent (bbolt pages, indexes, journal, outbox, pool invariants; %s)\n", s.Path(), how)
	return dbOK
}

func runDBCompact(args []string, stdout, stderr io.Writer) int {
	var d dbFlags
	var out string
	var replace bool
	if !dbParse("db compact", args, stderr, &d, func(fs *flag.FlagSet) {
		fs.StringVar(&out, "out", "", "write the copy to `FILE` (default <data>/kpool.db.compact)")
		fs.BoolVar(&replace, "replace", false, "then atomically replace kpool.db with the copy, so freed pages holding erased keys are gone from the file")
	}) {
		return dbFailed
	}
	if out == "" {
		out = d.path() + ".compact"
	}
	if replace && filepath.Dir(out) != filepath.Dir(d.path()) {
		fmt.Fprintln(stderr, "db compact: --replace needs --out in the data directory (an atomic rename)")
		return dbFailed
	}
	before, err := os.Stat(d.path())
	if err != nil {
		fmt.Fprintln(stderr, "db compact:", err)
		return dbFailed
	}
	// The shared lock is held from the copy to the rename: no worker can write in
	// between and have its writes lost by the replace.
	s, err := d.open(false)
	if err != nil {
		fmt.Fprintln(stderr, "db compact:", err)
		return dbFailed
	}
	defer s.Close()
	if err := s.CompactTo(out); err != nil {
		fmt.Fprintln(stderr, "db compact:", err)
		return dbFailed
	}
	after, err := os.Stat(out)
	if err != nil {
		fmt.Fprintln(stderr, "db compact:", err)
		return dbFailed
	}
	fmt.Fprintf(stdout, "compacted %s (%s) into %s (%s)\n", d.path(), mib(before.Size()), out, mib(after.Size()))
	if !replace {
		return dbOK
	}
	if err := persistence.ReplaceFile(out, d.path()); err != nil {
		fmt.Fprintln(stderr, "db compact: replace:", err)
		return dbFailed
	}
	fmt.Fprintf(stdout, "replaced %s with the compacted copy; the old file's freed pages are gone with it\n", d.path())
	return dbOK
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/replay"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// `worker db inspect|check|compact`: offline tools on the bbolt file. They open it
// read-only, so they fail with "database in use by another worker" while one runs.

func dbCmd() *cobra.Command {
	return group("db", "offline tools on the database (stop the worker first)",
		dbInspectCmd(), dbCheckCmd(), dbCompactCmd())
}

type dbFlags struct {
	data, keyFile string
	timeout       time.Duration
}

func (d *dbFlags) register(fs *pflag.FlagSet) {
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

func dbInspectCmd() *cobra.Command {
	var d dbFlags
	var poolID, ref string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect [--pool P | --ref R] [--json]",
		Short: "print pools, counts and records of the database (never private keys)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := d.open(false)
			if err != nil {
				return err
			}
			defer s.Close()
			w := cmd.OutOrStdout()
			switch {
			case ref != "":
				return inspectRef(s, ref, asJSON, w)
			case poolID != "":
				return inspectPool(s, poolID, asJSON, w)
			default:
				return inspectAll(s, asJSON, w)
			}
		},
	}
	d.register(cmd.Flags())
	fs := cmd.Flags()
	fs.StringVar(&poolID, "pool", "", "show pool `P` and its KeyPackages")
	fs.StringVar(&ref, "ref", "", "show the KeyPackage record `R` (public data only)")
	fs.BoolVar(&asJSON, "json", false, "print records as JSON")
	return cmd
}

func dbJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// dbStats is persistence.Stats as the db tools show it: snake_case keys like every other
// JSON kpool writes, and the file's size on disk next to the bytes bbolt uses in it.
type dbStats struct {
	Path         string    `json:"path"`
	FileSize     int64     `json:"file_size"` // on disk, as ls and `db compact` show it
	DataSize     int64     `json:"data_size"` // pages bbolt uses; the rest is preallocated
	PageSize     int       `json:"page_size"`
	FreePages    int       `json:"free_pages"`
	Schema       uint32    `json:"schema"`
	Sealed       bool      `json:"sealed"`
	AppliedSeq   uint64    `json:"applied_seq"`
	CoreTime     time.Time `json:"core_time"`
	Journal      int       `json:"journal"`
	JournalFirst uint64    `json:"journal_first"`
	JournalLast  uint64    `json:"journal_last"`
	Outbox       int       `json:"outbox"`
	Pools        int       `json:"pools"`
	KeyPackages  int       `json:"keypackages"`
	Secrets      int       `json:"secrets"`
	Index        int       `json:"expiry_entries"`
	Seen         int       `json:"dedup_ids"`
}

func statsOf(s *persistence.Store) (dbStats, error) {
	st, err := s.Stats()
	if err != nil {
		return dbStats{}, err
	}
	fi, err := os.Stat(st.Path)
	if err != nil {
		return dbStats{}, err
	}
	return dbStats{Path: st.Path, FileSize: fi.Size(), DataSize: st.FileSize, PageSize: st.PageSize,
		FreePages: st.FreePages, Schema: st.Schema, Sealed: st.Sealed, AppliedSeq: st.Meta.Seq,
		CoreTime: st.Meta.Time, Journal: st.Journal, JournalFirst: st.JournalFirst, JournalLast: st.JournalLast,
		Outbox: st.Outbox, Pools: st.Pools, KeyPackages: st.KeyPackages, Secrets: st.Secrets, Index: st.Index, Seen: st.Seen}, nil
}

// poolView is a pool record with its effective configuration written as durations
// ("2016h0m0s"), not as the nanoseconds the record stores.
type poolView struct {
	pool.Pool
	Config events.Policy `json:"config"`
}

func viewOf(p pool.Pool) poolView { return poolView{Pool: p, Config: p.Config.Policy()} }

func inspectAll(s *persistence.Store, asJSON bool, w io.Writer) error {
	st, err := statsOf(s)
	if err != nil {
		return err
	}
	pools, err := s.Pools()
	if err != nil {
		return err
	}
	if asJSON {
		views := make([]poolView, len(pools))
		for i, p := range pools {
			views[i] = viewOf(p)
		}
		return dbJSON(w, struct {
			Stats dbStats    `json:"stats"`
			Pools []poolView `json:"pools"`
		}{st, views})
	}
	fmt.Fprintf(w, "database   %s (%s on disk, %s in use, page %d B, %d free pages, schema %d, sealed %v)\n",
		st.Path, mib(st.FileSize), mib(st.DataSize), st.PageSize, st.FreePages, st.Schema, st.Sealed)
	fmt.Fprintf(w, "applied    seq %d, time %s\n", st.AppliedSeq, fmtTime(st.CoreTime))
	fmt.Fprintf(w, "journal    %d entries (seq %d..%d)\n", st.Journal, st.JournalFirst, st.JournalLast)
	fmt.Fprintf(w, "outbox     %d unpublished\n", st.Outbox)
	fmt.Fprintf(w, "records    %d pools, %d KeyPackages, %d sealed secrets, %d expiry entries, %d dedup ids\n\n",
		st.Pools, st.KeyPackages, st.Secrets, st.Index, st.Seen)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tIDENTITY\tSUITE\tCUSTODY\tCREATED\tAVAILABLE\tFRESH\tCLAIMED\tEXPIRED\tDELETED\tDELETE-PENDING\tSTATUS-SEQ")
	for _, p := range pools {
		c := p.Counts
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", p.ID, p.Identity, p.CipherSuite, pool.CustodyName(p),
			c.Created, c.Available, p.Fresh, c.Claimed, c.Expired, c.Deleted, p.DeletePending, p.StatusSeq)
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
			Pool        poolView          `json:"pool"`
			KeyPackages []pool.KeyPackage `json:"keypackages"`
		}{viewOf(p), kps})
	}
	if err := dbJSON(w, viewOf(p)); err != nil {
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

func dbCheckCmd() *cobra.Command {
	var d dbFlags
	var config string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "check every page, record and index, and replay the journal against the stored state (exit 1 on any problem, 3 when corrupt)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			core, err := replayCore(config)
			if err != nil {
				return usageError{err}
			}
			s, err := d.open(true)
			if err != nil {
				return err
			}
			defer s.Close()
			stdout := cmd.OutOrStdout()
			n := 0
			if err := s.Check(func(p string) { n++; fmt.Fprintln(stdout, p) }); err != nil {
				return err
			}
			// what `replay --verify` proves: the journal replays to the stored state —
			// unless journal retention pruned its start (the default after 30 days),
			// which is not a problem of the database
			st, err := s.Stats()
			if err != nil {
				return err
			}
			replayed := n == 0 && st.JournalFirst <= 1
			if n == 0 && !replayed {
				fmt.Fprintf(stdout, "journal replay skipped: the journal starts at seq %d (older inputs were pruned by journal retention)\n", st.JournalFirst)
			}
			if replayed {
				diff, sum, err := replay.Verify(cmd.Context(), s, core)
				switch {
				case err != nil:
					n++
					fmt.Fprintf(stdout, "journal replay: %v\n", err)
				case sum.Rejected+sum.Duplicates > 0:
					n++
					fmt.Fprintf(stdout, "journal replay: %d journaled inputs rejected or duplicate on replay\n", sum.Rejected+sum.Duplicates)
				}
				for _, line := range diff {
					n++
					fmt.Fprintln(stdout, "journal replay differs: "+line)
				}
			}
			if n > 0 {
				fmt.Fprintf(stdout, "%d problems in %s\n", n, s.Path())
				return reported{exitFailure}
			}
			how := "private keys decrypted"
			if !s.HasKey() {
				how = "private keys checked for presence only (no key file)"
			}
			what := "journal replays to the stored state"
			if !replayed {
				what = "journal replay skipped"
			}
			fmt.Fprintf(stdout, "ok: %s is consistent (bbolt pages, indexes, journal, outbox, pool invariants, %s; %s)\n", s.Path(), what, how)
			return nil
		},
	}
	d.register(cmd.Flags())
	cmd.Flags().StringVar(&config, "config", "", "default pool policy `FILE` (JSON, the worker's --config), to replay the journal with the worker's defaults")
	return cmd
}

func dbCompactCmd() *cobra.Command {
	var d dbFlags
	var out string
	var replace bool
	cmd := &cobra.Command{
		Use:   "compact [--out FILE] [--replace]",
		Short: "write a compacted copy of the database (drops freed pages)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				out = d.path() + ".compact"
			}
			if replace && filepath.Dir(out) != filepath.Dir(d.path()) {
				return usagef("--replace needs --out in the data directory (an atomic rename)")
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s already exists (left by an earlier `db compact`?): remove it, or give another --out", out)
			}
			// The shared lock is held from the copy to the rename: no worker can write in
			// between and have its writes lost by the replace.
			s, err := d.open(false)
			if err != nil {
				return err
			}
			defer s.Close()
			before, err := os.Stat(d.path())
			if err != nil {
				return err
			}
			if err := s.CompactTo(out); err != nil {
				return err
			}
			after, err := os.Stat(out)
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			fmt.Fprintf(stdout, "compacted %s (%s on disk) into %s (%s on disk)\n", d.path(), mib(before.Size()), out, mib(after.Size()))
			if !replace {
				return nil
			}
			if err := persistence.ReplaceFile(out, d.path()); err != nil {
				return fmt.Errorf("replace: %w", err)
			}
			fmt.Fprintf(stdout, "replaced %s with the compacted copy; the old file's freed pages are gone with it\n", d.path())
			return nil
		},
	}
	d.register(cmd.Flags())
	fs := cmd.Flags()
	fs.StringVar(&out, "out", "", "write the copy to `FILE` (default <data>/kpool.db.compact)")
	fs.BoolVar(&replace, "replace", false, "then atomically replace kpool.db with the copy, so freed pages holding erased keys are gone from the file")
	return cmd
}

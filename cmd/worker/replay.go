package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/replay"
	"github.com/spf13/cobra"
)

func replayCmd() *cobra.Command {
	var o replayOptions
	cmd := &cobra.Command{
		Use:   "replay LOG|- | replay --verify [--data DIR]",
		Short: "replay an NDJSON event log into an empty store; --verify audits a database against its journal",
		Long: "Replay an NDJSON event log into an empty store (in memory, or --data DIR) and print a\n" +
			"summary per pool. --verify instead replays the journal of the database in --data and\n" +
			"proves it equals the stored state. Exit status 1 when the state differs from --expect,\n" +
			"--verify fails, or bad lines were skipped (the summary counts them).",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			return o.run(ctx, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.data, "data", "", "replay into the bbolt database in `DIR` (resumes when it holds a prefix of the log); default: in memory")
	fs.StringVar(&o.keyFile, "key-file", "", "master key `FILE` of the replay database (default DIR/replay.key, so that `worker run` refuses the replayed database)")
	fs.Uint64Var(&o.until, "until", 0, "stop after the last input with seq <= `SEQ`")
	fs.StringVar(&o.expect, "expect", "", "compare the final state with the expected-state `FILE`; exit 1 on any difference")
	fs.StringVar(&o.writeState, "write-state", "", "write the final state to `FILE` (an expected-state file)")
	fs.BoolVar(&o.verify, "verify", false, "replay the journal of the database in --data (default ./data) and prove it equals the stored state")
	fs.BoolVar(&o.strict, "stop-on-bad-line", false, "stop at the first bad line instead of reporting it and going on")
	fs.BoolVar(&o.fsync, "fsync", false, "with --data: fsync every commit (survives power loss, much slower)")
	fs.StringVar(&o.progress, "progress", "auto", "`auto` (a bar on a terminal, else lines), bar, lines or off")
	fs.StringVar(&o.retention, "journal-retention", "30d", "forget dedup ids of inputs older than `D` (the recording worker's --journal-retention, default 30d) so memory stays flat; 0 = keep all")
	fs.StringVar(&o.config, "config", "", "default pool policy `FILE` (JSON, the worker's --config); must match the recording worker's")
	return cmd
}

type replayOptions struct {
	data, keyFile, expect, writeState, progress, retention, config string
	until                                                          uint64
	verify, strict, fsync                                          bool
}

func (o *replayOptions) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	retention, err := events.ParseDuration(o.retention)
	if err != nil {
		return usagef("--journal-retention: %w", err)
	}
	switch {
	case !map[string]bool{"auto": true, "bar": true, "lines": true, "off": true}[o.progress]:
		return usagef("--progress %q: auto, bar, lines or off", o.progress)
	case o.verify && (len(args) != 0 || o.expect != "" || o.until != 0):
		return usagef("--verify takes no LOG, --expect or --until")
	case !o.verify && len(args) != 1:
		return usagef("give exactly one LOG (or - for stdin), or --verify")
	}
	core, err := replayCore(o.config)
	if err != nil {
		return err
	}
	if o.verify {
		dir := o.data
		if dir == "" {
			dir = envOr("KPOOL_DATA", "./data")
		}
		return runVerify(ctx, dir, core, stdout)
	}

	in, size, closeIn, err := openLog(args[0])
	if err != nil {
		return err
	}
	defer closeIn()
	counted := &countingReader{r: in}
	lr, err := events.NewLogReader(counted)
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}

	var t replay.Target
	if o.data != "" {
		bt, err := replay.OpenBolt(o.data, core, replay.BoltOptions{KeyFile: o.keyFile, Fsync: o.fsync, JournalRetention: retention})
		if err != nil {
			return err
		}
		if m, err := bt.Meta(); err == nil && m.Seq > 0 {
			fmt.Fprintf(stderr, "replay: %s already holds %d applied inputs: resuming after them\n", o.data, m.Seq)
		}
		t = bt
	} else {
		mt := replay.NewMem(core)
		mt.Store.SetJournalRetention(retention)
		t = mt
	}
	defer t.Close()

	opts := replay.Options{Until: o.until, StopOnBadLine: o.strict}
	bar := newProgress(o.progress, stderr, size, counted)
	opts.Progress, opts.ProgressEvery = bar.update, bar.every

	sum, runErr := replay.Run(ctx, lr, t, opts)
	if runErr != nil {
		if errors.Is(runErr, events.ErrLogLine) {
			sum.WriteText(stdout) // what was replayed before the bad line
		}
		return runErr
	}
	if err := sum.Finish(t); err != nil {
		return err
	}
	if err := sum.WriteText(stdout); err != nil {
		return err
	}
	got, err := replay.Dump(t)
	if err != nil {
		return err
	}
	if o.writeState != "" {
		b, err := got.Marshal()
		if err == nil {
			err = os.WriteFile(o.writeState, b, 0o644)
		}
		if err != nil {
			return err
		}
	}
	if o.expect != "" {
		f, err := os.Open(o.expect)
		if err != nil {
			return err
		}
		want, err := replay.ReadState(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", o.expect, err)
		}
		diff, err := replay.Diff(want, got)
		if err != nil {
			return err
		}
		if len(diff) > 0 {
			fmt.Fprintf(stdout, "state differs from %s (%d differences):\n", o.expect, len(diff))
			for _, d := range diff {
				fmt.Fprintln(stdout, "  "+d)
			}
			return reported{exitFailure}
		}
		fmt.Fprintf(stdout, "state matches %s\n", o.expect)
	}
	if sum.BadLines > 0 {
		return fmt.Errorf("%d bad lines were skipped (listed in the notes above)", sum.BadLines)
	}
	return nil
}

func runVerify(ctx context.Context, dir string, core *pool.Core, stdout io.Writer) error {
	path := filepath.Join(dir, replay.DBFile)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("--verify: no database at %s: %w", path, err)
	}
	st, err := persistence.Open(path, persistence.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("--verify: %w (stop the worker or verify a copy: bbolt allows one writer and no other readers)", err)
	}
	defer st.Close()
	diff, sum, err := replay.Verify(ctx, st, core)
	if err != nil {
		return fmt.Errorf("--verify: %w", err)
	}
	sum.WriteText(stdout)
	if len(diff) > 0 || sum.Rejected > 0 || sum.Duplicates > 0 {
		fmt.Fprintf(stdout, "verify FAILED: the stored state of %s differs from its replayed journal (%d differences, %d journaled inputs rejected or duplicate on replay):\n",
			path, len(diff), sum.Rejected+sum.Duplicates)
		for _, d := range diff {
			fmt.Fprintln(stdout, "  "+d)
		}
		return reported{exitFailure}
	}
	fmt.Fprintf(stdout, "verify OK: %d journaled inputs replay to the stored state of %s\n", sum.Applied, path)
	return nil
}

// replayCore builds the core with the worker's default policy, or the one in the
// worker's --config file (loadPolicy, run.go): a replay must use the recording worker's
// defaults to reproduce its pools' effective configuration.
func replayCore(file string) (*pool.Core, error) {
	core := &pool.Core{Defaults: pool.DefaultConfig()}
	if file == "" {
		return core, nil
	}
	d, err := loadPolicy(file)
	if err != nil {
		return nil, err
	}
	core.Defaults = d
	return core, nil
}

func openLog(name string) (io.Reader, int64, func(), error) {
	if name == "-" {
		return os.Stdin, 0, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, nil, err
	}
	var size int64
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	return f, size, func() { f.Close() }, nil
}

// countingReader counts bytes read; replay decodes on its own goroutine, so the count
// is atomic.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// progressDisplay draws a bar on a terminal (by bytes read when the size is known) and
// prints plain lines otherwise. It writes to stderr only, so stdout stays identical
// from run to run.
type progressDisplay struct {
	mode  string // bar, lines, off
	w     io.Writer
	size  int64
	read  *countingReader
	every int
	start time.Time
}

func newProgress(mode string, w io.Writer, size int64, read *countingReader) *progressDisplay {
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				mode = "bar"
			}
		}
	}
	p := &progressDisplay{mode: mode, w: w, size: size, read: read, every: 100000, start: time.Now()}
	if mode == "bar" {
		p.every = 5000
	}
	return p
}

func (p *progressDisplay) update(pr replay.Progress) {
	switch p.mode {
	case "bar":
		rate := float64(pr.Records) / max(time.Since(p.start).Seconds(), 1e-9)
		if p.size > 0 {
			frac := min(float64(p.read.n.Load())/float64(p.size), 1)
			if pr.Done {
				frac = 1
			}
			n := int(frac * 30)
			fmt.Fprintf(p.w, "\r[%s%s] %3.0f%%  %d inputs  seq %d  %.0f/s ", strings.Repeat("=", n), strings.Repeat(" ", 30-n), frac*100, pr.Records, pr.Seq, rate)
		} else {
			fmt.Fprintf(p.w, "\r%d inputs  seq %d  %.0f/s ", pr.Records, pr.Seq, rate)
		}
		if pr.Done {
			fmt.Fprintln(p.w)
		}
	case "lines":
		if pr.Done {
			fmt.Fprintf(p.w, "replay: done: %d inputs, last seq %d\n", pr.Records, pr.Seq)
		} else {
			fmt.Fprintf(p.w, "replay: %d inputs, seq %d, line %d\n", pr.Records, pr.Seq, pr.Line)
		}
	}
}

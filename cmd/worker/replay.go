package main

import (
	"context"
	"errors"
	"flag"
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
)

// Exit statuses of `worker replay` (docs/replay.md).
const (
	replayOK       = 0
	replayDiffers  = 1 // --expect or --verify found a difference
	replayFailed   = 2 // usage, unreadable log, unknown version, store error
	replayBadLines = 3 // the replay finished but skipped bad lines
)

func init() {
	register(command{
		name:    "replay",
		summary: "replay an NDJSON event log into an empty store; --verify audits a database against its journal",
		run:     runReplay,
	})
}

func runReplay(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "", "replay into the bbolt database in `DIR` (resumes when it holds a prefix of the log); default: in memory")
	keyFile := fs.String("key-file", "", "master key `FILE` of the replay database (default DIR/replay.key, so that `worker run` refuses the replayed database)")
	until := fs.Uint64("until", 0, "stop after the last input with seq <= `SEQ`")
	expect := fs.String("expect", "", "compare the final state with the expected-state `FILE`; exit 1 on any difference")
	writeState := fs.String("write-state", "", "write the final state to `FILE` (an expected-state file)")
	verify := fs.Bool("verify", false, "replay the journal of the database in --data (default ./data) and prove it equals the stored state")
	strict := fs.Bool("stop-on-bad-line", false, "stop at the first bad line instead of reporting it and going on")
	fsync := fs.Bool("fsync", false, "with --data: fsync every commit (survives power loss, much slower)")
	progress := fs.String("progress", "auto", "`auto` (a bar on a terminal, else lines), bar, lines or off")
	retentionStr := fs.String("journal-retention", "0", "forget dedup ids of inputs older than `D` (the recording worker's --journal-retention) so memory stays flat; 0 = keep all")
	configFile := fs.String("config", "", "default pool policy `FILE` (JSON, the worker's --config); must match the recording worker's")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: worker replay LOG|- [--data DIR] [--until SEQ] [--expect FILE] [--write-state FILE]")
		fmt.Fprintln(stderr, "       worker replay --verify [--data DIR]")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return replayFailed
	}
	retention, err := events.ParseDuration(*retentionStr)
	if err != nil {
		fmt.Fprintln(stderr, "replay: --journal-retention:", err)
		return replayFailed
	}
	core, err := replayCore(*configFile)
	if err != nil {
		fmt.Fprintln(stderr, "replay:", err)
		return replayFailed
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	if *verify {
		if len(pos) != 0 || *expect != "" || *until != 0 {
			fmt.Fprintln(stderr, "replay: --verify takes no LOG, --expect or --until")
			return replayFailed
		}
		dir := *data
		if dir == "" {
			dir = envOr("KPOOL_DATA", "./data")
		}
		return runVerify(ctx, dir, core, stdout, stderr)
	}
	if len(pos) != 1 {
		fs.Usage()
		return replayFailed
	}

	in, size, closeIn, err := openLog(pos[0])
	if err != nil {
		fmt.Fprintln(stderr, "replay:", err)
		return replayFailed
	}
	defer closeIn()
	counted := &countingReader{r: in}
	lr, err := events.NewLogReader(counted)
	if err != nil {
		fmt.Fprintf(stderr, "replay: %s: %v\n", pos[0], err)
		return replayFailed
	}

	var t replay.Target
	if *data != "" {
		bt, err := replay.OpenBolt(*data, core, replay.BoltOptions{KeyFile: *keyFile, Fsync: *fsync, JournalRetention: retention})
		if err != nil {
			fmt.Fprintln(stderr, "replay:", err)
			return replayFailed
		}
		if m, err := bt.Meta(); err == nil && m.Seq > 0 {
			fmt.Fprintf(stderr, "replay: %s already holds %d applied inputs: resuming after them\n", *data, m.Seq)
		}
		t = bt
	} else {
		mt := replay.NewMem(core)
		mt.Store.SetJournalRetention(retention)
		t = mt
	}
	defer t.Close()

	opts := replay.Options{Until: *until, StopOnBadLine: *strict}
	bar := newProgress(*progress, stderr, size, counted)
	opts.Progress, opts.ProgressEvery = bar.update, bar.every

	sum, runErr := replay.Run(ctx, lr, t, opts)
	if runErr != nil {
		fmt.Fprintln(stderr, "replay:", runErr)
		if errors.Is(runErr, events.ErrLogLine) {
			sum.WriteText(stdout) // what was replayed before the bad line
		}
		return replayFailed
	}
	if err := sum.Finish(t); err != nil {
		fmt.Fprintln(stderr, "replay:", err)
		return replayFailed
	}
	if err := sum.WriteText(stdout); err != nil {
		return replayFailed
	}
	got, err := replay.Dump(t)
	if err != nil {
		fmt.Fprintln(stderr, "replay:", err)
		return replayFailed
	}
	if *writeState != "" {
		b, err := got.Marshal()
		if err == nil {
			err = os.WriteFile(*writeState, b, 0o644)
		}
		if err != nil {
			fmt.Fprintln(stderr, "replay:", err)
			return replayFailed
		}
	}
	code := replayOK
	if sum.BadLines > 0 {
		code = replayBadLines
	}
	if *expect != "" {
		f, err := os.Open(*expect)
		if err != nil {
			fmt.Fprintln(stderr, "replay:", err)
			return replayFailed
		}
		want, err := replay.ReadState(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "replay: %s: %v\n", *expect, err)
			return replayFailed
		}
		diff, err := replay.Diff(want, got)
		if err != nil {
			fmt.Fprintln(stderr, "replay:", err)
			return replayFailed
		}
		if len(diff) > 0 {
			fmt.Fprintf(stdout, "state differs from %s (%d differences):\n", *expect, len(diff))
			for _, d := range diff {
				fmt.Fprintln(stdout, "  "+d)
			}
			return replayDiffers
		}
		fmt.Fprintf(stdout, "state matches %s\n", *expect)
	}
	return code
}

func runVerify(ctx context.Context, dir string, core *pool.Core, stdout, stderr io.Writer) int {
	path := filepath.Join(dir, replay.DBFile)
	if _, err := os.Stat(path); err != nil {
		fmt.Fprintf(stderr, "replay --verify: no database at %s: %v\n", path, err)
		return replayFailed
	}
	st, err := persistence.Open(path, persistence.Options{ReadOnly: true})
	if err != nil {
		fmt.Fprintf(stderr, "replay --verify: %v (stop the worker or verify a copy: bbolt allows one writer and no other readers)\n", err)
		return replayFailed
	}
	defer st.Close()
	diff, sum, err := replay.Verify(ctx, st, core)
	if err != nil {
		fmt.Fprintln(stderr, "replay --verify:", err)
		return replayFailed
	}
	sum.WriteText(stdout)
	if len(diff) > 0 || sum.Rejected > 0 || sum.Duplicates > 0 {
		fmt.Fprintf(stdout, "verify FAILED: the stored state of %s differs from its replayed journal (%d differences, %d journaled inputs rejected or duplicate on replay):\n",
			path, len(diff), sum.Rejected+sum.Duplicates)
		for _, d := range diff {
			fmt.Fprintln(stdout, "  "+d)
		}
		return replayDiffers
	}
	fmt.Fprintf(stdout, "verify OK: %d journaled inputs replay to the stored state of %s\n", sum.Applied, path)
	return replayOK
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

// parseInterspersed lets flags come before or after positional arguments
// (`worker replay LOG --data DIR`), which the flag package alone does not.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
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

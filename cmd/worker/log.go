package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/replay"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

func logCmd() *cobra.Command {
	return group("log", "event logs: export what the worker applied", logExportCmd())
}

func logExportCmd() *cobra.Command {
	var cf connFlags
	var data, poolID, out string
	var from, to uint64
	var stream bool
	cmd := &cobra.Command{
		Use:   "export [--from SEQ] [--to SEQ] [--pool P] [--out FILE] [--stream]",
		Short: "write the input journal (or, with --stream, the JetStream events stream) as an NDJSON event log",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to != 0 && to < from {
				return usagef("--to %d is before --from %d", to, from)
			}
			if poolID != "" {
				if err := events.ValidPoolID(poolID); err != nil {
					return usagef("--pool: %w", err)
				}
			}
			stderr := cmd.ErrOrStderr()
			w, commit, abort, err := outputFile(out, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			var n int
			if stream {
				n, err = exportStream(&cf, w, from, to, poolID, stderr)
			} else {
				n, err = exportJournal(data, w, replay.ExportOptions{From: from, To: to, Pool: poolID, Prefix: cf.prefix})
			}
			if err == nil {
				err = commit()
			} else {
				abort()
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "log export: %d inputs written\n", n)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&data, "data", envOr("KPOOL_DATA", "./data"), "data directory holding kpool.db [KPOOL_DATA]")
	fs.Uint64Var(&from, "from", 0, "first `SEQ` to export (journal seq, or stream seq with --stream)")
	fs.Uint64Var(&to, "to", 0, "last `SEQ` to export (0: to the end)")
	fs.StringVar(&poolID, "pool", "", "only inputs of pool `P` (global expiry ticks are kept: they reach every pool)")
	fs.StringVar(&out, "out", "", "write to `FILE` instead of stdout (written to FILE.tmp, then renamed)")
	fs.BoolVar(&stream, "stream", false, "export the JetStream events stream over NATS instead of the journal")
	cf.register(fs, defaultClientURL)
	return cmd
}

func exportJournal(dir string, w io.Writer, o replay.ExportOptions) (int, error) {
	path := filepath.Join(dir, replay.DBFile)
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("no database at %s: %w", path, err)
	}
	st, err := persistence.Open(path, persistence.Options{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("%w (the running worker holds the database: stop it, or export a copy)", err)
	}
	defer st.Close()
	return replay.Export(st, w, o)
}

// exportStream reads the events other services published (and the worker's ticks) from
// the input stream with an ordered consumer. The worker's own inputs (API calls and
// generated KeyPackages, under <prefix>.inputs.>) are left out: some of them are never
// applied (a call abandoned by a restart), and only the journal, which holds exactly what
// was applied, in the order applied, replays exactly.
func exportStream(cf *connFlags, w io.Writer, from, to uint64, poolID string, stderr io.Writer) (int, error) {
	nc, err := cf.connect("kpool log export")
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	subj := events.Subjects{Prefix: cf.prefix}
	s, err := js.Stream(ctx, natsbus.StreamNames(cf.prefix).Events)
	if err != nil {
		return 0, hintNoWorker(cf.prefix, fmt.Errorf("events stream: %w", err))
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	lw, err := events.NewLogWriter(w, events.LogHeader{Prefix: cf.prefix, Source: "stream", From: from, To: to, Pool: poolID})
	if err != nil {
		return 0, err
	}
	if info.State.Msgs == 0 || (from != 0 && from > info.State.LastSeq) {
		return 0, lw.Flush()
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, FilterSubjects: []string{subj.Events()}}
	if from > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	}
	if poolID != "" {
		cfg.FilterSubjects = []string{subj.Event(poolID, "*"), subj.Event("", events.TypeExpiryTick)}
	}
	cons, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return 0, err
	}
	n, skipped := 0, 0
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, nats.ErrTimeout) {
			break // nothing more matches
		}
		if err != nil {
			return n, err
		}
		md, err := msg.Metadata()
		if err != nil {
			return n, err
		}
		seq := md.Sequence.Stream
		if to != 0 && seq > to {
			break
		}
		ev, err := events.Decode(msg.Data())
		if err == nil {
			err = subj.CheckSubject(msg.Subject(), ev)
		}
		if err != nil {
			skipped++ // the worker dead-lettered it; a log holds valid inputs only
			fmt.Fprintf(stderr, "log export: stream seq %d on %s skipped: %v\n", seq, msg.Subject(), err)
		} else {
			if err := lw.Write(events.LogRecord{Seq: seq, Subject: msg.Subject(), Event: ev}); err != nil {
				return n, err
			}
			n++
		}
		if md.NumPending == 0 || (to != 0 && seq >= to) {
			break
		}
	}
	if skipped > 0 {
		fmt.Fprintf(stderr, "log export: %d stream messages were not valid events and were skipped\n", skipped)
	}
	return n, lw.Flush()
}

// outputFile writes to stdout, or to FILE.tmp renamed to FILE on success, so a failed
// export never leaves a truncated log under the final name.
func outputFile(name string, stdout io.Writer) (w io.Writer, commit func() error, abort func(), err error) {
	if name == "" || name == "-" {
		bw := bufio.NewWriter(stdout)
		return bw, bw.Flush, func() { bw.Flush() }, nil
	}
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, nil, nil, err
	}
	commit = func() error {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(tmp, name)
	}
	abort = func() { f.Close(); os.Remove(tmp) }
	return f, commit, abort, nil
}

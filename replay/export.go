package replay

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

// ExportOptions select what Export writes.
type ExportOptions struct {
	From, To uint64 // inclusive seq bounds; 0 = open
	Pool     string // only this pool's inputs (and global ticks, which reach every pool)
	Prefix   string // subject prefix (default "kpool")
	Source   string // header source (default "journal")
}

// Export writes the store's input journal as an NDJSON log and returns the number of
// records written. The journal holds applied inputs only (duplicates and rejections
// changed nothing and are not journaled).
func Export(st *persistence.Store, w io.Writer, o ExportOptions) (int, error) {
	if o.Prefix == "" {
		o.Prefix = events.DefaultPrefix
	}
	if o.Source == "" {
		o.Source = "journal"
	}
	if o.To != 0 && o.To < o.From {
		return 0, fmt.Errorf("export: --to %d is before --from %d", o.To, o.From)
	}
	lw, err := events.NewLogWriter(w, events.LogHeader{Prefix: o.Prefix, Source: o.Source, From: o.From, To: o.To, Pool: o.Pool})
	if err != nil {
		return 0, err
	}
	subj := events.Subjects{Prefix: o.Prefix}
	n := 0
	err = st.Journal(max(o.From, 1), o.To, func(seq uint64, ev events.Event) error {
		if o.Pool != "" && ev.Pool != o.Pool && !(ev.Type == events.TypeExpiryTick && ev.Pool == "") {
			return nil
		}
		n++
		return lw.Write(events.LogRecord{Seq: seq, Subject: subj.Event(ev.Pool, ev.Type), Event: ev})
	})
	if err != nil {
		return n, err
	}
	return n, lw.Flush()
}

// Verify replays the store's whole journal into memory and compares the result with the
// stored state. It returns the differences (none: the audit passed) and the summary.
// The journal must be complete (retention 0), or Verify says it cannot prove anything.
func Verify(ctx context.Context, st *persistence.Store, core *pool.Core) ([]string, *Summary, error) {
	var first uint64
	if err := st.Journal(1, 0, func(seq uint64, _ events.Event) error {
		first = seq
		return errStop
	}); err != nil && !errors.Is(err, errStop) {
		return nil, nil, err
	}
	m, err := st.Meta()
	if err != nil {
		return nil, nil, err
	}
	if m.Seq > 0 && first != 1 {
		return nil, nil, fmt.Errorf("verify: the journal starts at seq %d, not 1 (older inputs were pruned by journal retention), so the stored state cannot be rebuilt from it", first)
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := Export(st, pw, ExportOptions{Source: "verify"})
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	lr, err := events.NewLogReader(pr)
	if err != nil {
		return nil, nil, err
	}
	mem := NewMem(core)
	sum, err := Run(ctx, lr, mem, Options{StopOnBadLine: true})
	if err != nil {
		return nil, sum, err
	}
	if err := sum.Finish(mem); err != nil {
		return nil, sum, err
	}
	got, err := Dump(mem)
	if err != nil {
		return nil, sum, err
	}
	stored, err := Dump(StoreSource{st})
	if err != nil {
		return nil, sum, err
	}
	diff, err := Diff(stored, got)
	return diff, sum, err
}

var errStop = errors.New("stop")

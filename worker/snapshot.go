package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/kpool/kpool/persistence"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// An owner copies its partition's view to the snapshots object store every
// SnapshotEvery (when it moved); a new owner whose own view is older starts from the
// copy and replays only the log after it. The copy is a bbolt file: private keys in it
// stay sealed under the master key, and a copy is replaced by the next one.

// snapshotSeqHeader carries the input sequence a snapshot holds.
const snapshotSeqHeader = "Kpool-Input-Seq"

func snapshotName(p int) string { return fmt.Sprintf("part-%04d", p) }

func (w *Worker) snapshotLoop(last uint64) {
	defer w.loops.Done()
	t := time.NewTicker(w.cfg.Cluster.SnapshotEvery)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		}
		if w.appliedSeq.Load() == last {
			continue
		}
		seq, err := w.snapshot()
		if err != nil {
			w.log.Warn("partition snapshot failed; the next owner replays more of the log", "err", err)
			continue
		}
		last = seq
	}
}

// snapshot copies the view to a temporary file, then into the object store.
func (w *Worker) snapshot() (uint64, error) {
	f, err := os.CreateTemp(filepath.Dir(w.store.Path()), "snapshot-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	seq, err := w.store.Snapshot(f)
	if err != nil {
		return 0, err
	}
	if _, err := f.Seek(0, 0); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Minute)
	defer cancel()
	meta := jetstream.ObjectMeta{Name: snapshotName(w.part), Headers: nats.Header{snapshotSeqHeader: {strconv.FormatUint(seq, 10)}}}
	if _, err := w.buckets.Snapshots.Put(ctx, meta, f); err != nil {
		return 0, err
	}
	w.log.Debug("partition snapshot stored", "stream_seq", seq)
	return seq, nil
}

// restoreSnapshot replaces the local view at path with the cluster's snapshot of
// partition p when the snapshot holds more of the log; it returns the snapshot's input
// sequence, or 0 when the local view is kept.
func (c *cluster) restoreSnapshot(ctx context.Context, p int, path string) (uint64, error) {
	info, err := c.b.Snapshots.GetInfo(ctx, snapshotName(p))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	snap, err := strconv.ParseUint(info.Headers.Get(snapshotSeqHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("snapshot %s: input sequence %q: %w", info.Name, info.Headers.Get(snapshotSeqHeader), err)
	}
	local, err := localInputSeq(path)
	if err != nil || snap <= local {
		return 0, err
	}
	tmp := path + ".snapshot"
	if err := c.b.Snapshots.GetFile(ctx, info.Name, tmp); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return snap, os.Rename(tmp, path)
}

// localInputSeq is the input sequence of the view at path (0 when there is none).
func localInputSeq(path string) (uint64, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	st, err := persistence.Open(path, persistence.Options{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	return st.InputSeq()
}

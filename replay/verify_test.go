package replay

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

func openStore(t *testing.T, dir string, o persistence.Options) *persistence.Store {
	t.Helper()
	if o.KeyFile == "" && !o.ReadOnly {
		o.KeyFile = filepath.Join(dir, KeyFile)
	}
	st, err := persistence.Open(filepath.Join(dir, DBFile), o)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func submit(t *testing.T, st *persistence.Store, step persistence.StepFunc, ev events.Event) {
	t.Helper()
	b, err := st.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Apply(step, persistence.Input{Event: ev})
	if err != nil || res.Err != nil {
		b.Rollback()
		t.Fatal(err, res.Err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	core := &pool.Core{Defaults: pool.DefaultConfig()}
	dir := t.TempDir()
	if _, _, err := replayBolt(t, dir, readGolden(t, "normal-day"), Options{}); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, dir, persistence.Options{ReadOnly: true})
	diff, sum, err := Verify(context.Background(), st, core)
	st.Close()
	if err != nil || len(diff) != 0 || sum.Applied != 89 {
		t.Fatalf("clean database: %v %v %+v", err, diff, sum)
	}

	// A step that writes something other than what the core computed: the journal says
	// one thing, the records another. Verify names the field.
	st = openStore(t, dir, persistence.Options{})
	m, _ := st.Meta()
	submit(t, st, func(v pool.View, ev events.Event) (pool.Ready, error) {
		r, err := core.Step(v, ev)
		for i := range r.Pools {
			r.Pools[i].Fresh += 7
		}
		return r, err
	}, events.Event{ID: "tamper", Type: events.TypeReplenish, Time: m.Time, Pool: "bob"})
	st.Close()
	st = openStore(t, dir, persistence.Options{ReadOnly: true})
	defer st.Close()
	diff, _, err = Verify(context.Background(), st, core)
	if err != nil || len(diff) != 1 || !strings.HasPrefix(diff[0], "pools.bob.pool.fresh: want ") {
		t.Fatalf("tampered database: %v %q", err, diff)
	}
}

// With journal retention the oldest inputs are gone: Verify says it cannot prove anything
// instead of reporting a bogus difference.
func TestVerifyPrunedJournal(t *testing.T) {
	core := &pool.Core{Defaults: pool.DefaultConfig()}
	dir := t.TempDir()
	if _, _, err := replayBolt(t, dir, readGolden(t, "normal-day"), Options{}); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, dir, persistence.Options{JournalRetention: time.Hour})
	m, _ := st.Meta()
	submit(t, st, core.Step, events.Event{ID: "late-tick", Type: events.TypeExpiryTick, Time: m.Time.Add(2 * time.Hour)})
	st.Close()
	st = openStore(t, dir, persistence.Options{ReadOnly: true})
	defer st.Close()
	_, _, err := Verify(context.Background(), st, core)
	if err == nil || !strings.Contains(err.Error(), "older inputs were pruned by journal retention") {
		t.Fatalf("got %v", err)
	}
}

// Export writes exactly the journal: replaying it gives the stored state.
func TestExportRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := replayBolt(t, dir, readGolden(t, "expiry-wave"), Options{}); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, dir, persistence.Options{ReadOnly: true})
	var buf bytes.Buffer
	n, err := Export(st, &buf, ExportOptions{})
	st.Close()
	if err != nil || n != 31 {
		t.Fatal(n, err)
	}
	_, want, _ := replayMem(t, readGolden(t, "expiry-wave"))
	_, got, _ := replayMem(t, buf.Bytes())
	if !bytes.Equal(want, got) {
		t.Fatalf("export replays differently:\n%s", diffText(t, want, got))
	}
}

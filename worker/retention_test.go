package worker_test

import (
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/worker"
)

// The journal retention default is in force through the worker: with the defaults, the
// journal entries (and their dedup ids) more than 30 days of event time behind the newest
// event go once newer events arrive, and what is kept is the contiguous rest; with
// worker.KeepJournal nothing goes.
func TestJournalRetentionDefault(t *testing.T) {
	ns := startNATS(t)
	for _, tc := range []struct {
		name      string
		retention time.Duration
		pruned    bool
	}{
		{"default", 0, true},
		{"keep", worker.KeepJournal, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newClock()
			dir := t.TempDir()
			prefix := "ret" + tc.name
			w := startWorker(t, ns.URL(), dir, clock, func(c *worker.Config) { c.Prefix = prefix; c.JournalRetention = tc.retention })
			nc, _ := connect(t, ns.URL())
			c, err := natsbus.NewClient(nc, natsbus.WithPrefix(prefix), natsbus.WithClock(clock.Now))
			if err != nil {
				t.Fatal(err)
			}
			startDS(t, c, true)
			policy := events.Policy{Target: new(3), LowWatermark: new(1), HardCap: new(6)}
			if _, err := c.RegisterSealed(ctx(t), "p", natsbus.RegisterRequest{Identity: "p", CipherSuite: 1, Policy: policy}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 30*time.Second, "pool filled", func() bool { return poolRecord(t, w, "p").Fresh >= 3 })

			start := clock.Now()
			tickAt := func(d time.Duration) {
				t.Helper()
				at := clock.Advance(d)
				if err := c.ExpiryTick(ctx(t), "", at); err != nil {
					t.Fatal(err)
				}
				eventually(t, 20*time.Second, "tick applied", func() bool {
					m, err := w.Store().Meta()
					return err == nil && m.Time.Equal(at)
				})
			}
			tickAt(10 * 24 * time.Hour) // day 10: nothing is 30 days old yet
			st, err := w.Store().Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.JournalFirst != 1 || st.Journal != int(st.JournalLast) {
				t.Fatalf("day 10: journal %d..%d (%d entries), want all of it", st.JournalFirst, st.JournalLast, st.Journal)
			}
			before := st

			tickAt(21 * 24 * time.Hour) // day 31: the registration and the fill are older than 30 days
			newest, _ := w.Store().Meta()
			cutoff := newest.Time.Add(-worker.DefaultJournalRetention)
			var oldest time.Time
			var first, kept uint64
			if err := w.Store().Journal(0, 0, func(seq uint64, ev events.Event) error {
				if first == 0 {
					first, oldest = seq, ev.Time
				}
				kept++
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			st, err = w.Store().Stats()
			if err != nil {
				t.Fatal(err)
			}
			if !tc.pruned {
				if first != 1 || kept != st.JournalLast || st.Seen < before.Seen {
					t.Fatalf("KeepJournal: journal from %d with %d entries of %d, %d dedup ids (were %d)", first, kept, st.JournalLast, st.Seen, before.Seen)
				}
				return
			}
			// The day-10 tick and the day-31 tick stay; everything from day 0 is gone.
			if kept != 2 || first != st.JournalLast-1 || oldest.Before(cutoff) {
				t.Fatalf("journal keeps %d entries from seq %d (oldest %v, cutoff %v, last %d); want the 2 ticks within 30 days",
					kept, first, oldest, cutoff, st.JournalLast)
			}
			if !oldest.Equal(start.Add(10 * 24 * time.Hour)) {
				t.Fatalf("oldest kept entry at %v, want the day-10 tick", oldest)
			}
			if st.Seen >= before.Seen {
				t.Fatalf("dedup ids: %d after pruning, %d before: the pruned entries' ids were kept", st.Seen, before.Seen)
			}
		})
	}
}

// Package replay feeds an NDJSON event log (events/log.go) through the core into an empty
// store — in memory, or a bbolt database — and reports what happened: a summary per pool
// and a canonical state dump that can be compared with an expected-state file.
//
// Bad lines (unreadable, invalid, out of seq order) are reported and skipped; replay goes
// on unless Options.StopOnBadLine. Inputs the core rejects are part of normal history
// (the live worker dead-lettered them too) and are counted, not errors.
package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// Errors of Run.
var (
	// ErrResume: the target database does not hold a prefix of this log.
	ErrResume = errors.New("cannot resume replay")
)

// Target is where inputs are applied.
type Target interface {
	// Step applies one input. rejected is the core's (or store's) refusal: nothing
	// changed. err is fatal and stops the replay.
	Step(ctx context.Context, ev events.Event) (r pool.Ready, rejected error, err error)
	// JournalEntry returns the applied input with core sequence seq, for resuming into
	// a database that already holds part of the log. ok is false when there is none.
	JournalEntry(seq uint64) (ev events.Event, ok bool, err error)
	Source
	Close() error
}

// Options tune Run.
type Options struct {
	// Until stops after the last record with seq <= Until (0: the whole log).
	Until uint64
	// StopOnBadLine makes the first bad line end the replay with its *events.LogLineError.
	StopOnBadLine bool
	// Progress, when set, is called every ProgressEvery records (default 10 000) and once
	// at the end.
	Progress      func(Progress)
	ProgressEvery int
	// AfterStep, when set, runs after every applied input (tests check invariants here).
	AfterStep func(pool.Ready) error
	// MaxNotes bounds the bad-line and rejection notes kept (default 1000); the rest are
	// only counted, so memory stays flat on huge logs.
	MaxNotes int
}

// Progress is a snapshot for a progress display.
type Progress struct {
	Records uint64 // good records read
	Seq     uint64 // last record's seq
	Line    int
	Done    bool
}

// Note is one reported line: a bad line or a rejected input.
type Note struct {
	Line    int    `json:"line"`
	Seq     uint64 `json:"seq,omitempty"`
	EventID string `json:"event_id,omitempty"`
	Pool    string `json:"pool,omitempty"`
	Kind    string `json:"kind"` // "bad_line" or "rejected"
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Summary is what a replay did.
type Summary struct {
	Records    uint64 `json:"records"` // good records read (up to Until)
	Applied    uint64 `json:"applied"`
	Duplicates uint64 `json:"duplicates"`
	Rejected   uint64 `json:"rejected"`
	BadLines   uint64 `json:"bad_lines"`
	// Resumed counts records skipped because the target already held them.
	Resumed uint64 `json:"resumed,omitempty"`
	LastSeq uint64 `json:"last_seq"` // seq of the last record read
	// Pools maps pool id → what happened to it; inputs without a pool (global ticks)
	// count only in the totals above.
	Pools        map[string]*PoolSummary `json:"pools"`
	Notes        []Note                  `json:"notes,omitempty"`
	NotesOmitted uint64                  `json:"notes_omitted,omitempty"`
}

// PoolSummary is one pool's share of a replay, plus its final state from the target.
type PoolSummary struct {
	Inputs      uint64         `json:"inputs"` // inputs addressed to the pool
	Applied     uint64         `json:"applied"`
	Duplicates  uint64         `json:"duplicates"`
	Rejected    map[string]int `json:"rejected,omitempty"` // by code
	Transitions uint64         `json:"transitions"`        // KeyPackage state changes
	Refused     uint64         `json:"refused,omitempty"`  // transitions reported with an error
	Alerts      map[string]int `json:"alerts,omitempty"`   // by kind
	Statuses    uint64         `json:"statuses"`           // status messages published
	// Final state, filled by Finish.
	Identity    string        `json:"identity"`
	CipherSuite uint16        `json:"cipher_suite"`
	Counts      events.Counts `json:"counts"`
	Health      string        `json:"health,omitempty"` // from the last status published
	LastResort  string        `json:"last_resort,omitempty"`
	lastStatus  []byte
}

func (s *Summary) pool(id string) *PoolSummary {
	p := s.Pools[id]
	if p == nil {
		p = &PoolSummary{}
		s.Pools[id] = p
	}
	return p
}

func (s *Summary) note(n Note, max int) {
	if len(s.Notes) < max {
		s.Notes = append(s.Notes, n)
	} else {
		s.NotesOmitted++
	}
}

// Run replays the log read by lr into t. It returns the summary so far together with a
// fatal error (target failure, I/O error, cancelled ctx, StopOnBadLine).
func Run(ctx context.Context, lr *events.LogReader, t Target, opts Options) (*Summary, error) {
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 10000
	}
	if opts.MaxNotes <= 0 {
		opts.MaxNotes = 1000
	}
	s := &Summary{Pools: map[string]*PoolSummary{}}
	rs, err := newResumer(t)
	if err != nil {
		return s, err
	}
	line := 0
	progress := func(done bool) {
		if opts.Progress != nil {
			opts.Progress(Progress{Records: s.Records, Seq: s.LastSeq, Line: line, Done: done})
		}
	}
	stop := make(chan struct{})
	defer close(stop)
	batches := readAhead(lr, stop)
	pl := newPipeline(t, s, opts)
	defer pl.abandon()
loop:
	for batch := range batches {
		for _, it := range batch {
			if err := ctx.Err(); err != nil {
				return s, err
			}
			rec, err := it.rec, it.err
			line = it.line
			if err == io.EOF {
				break loop
			}
			var le *events.LogLineError
			if errors.As(err, &le) {
				s.BadLines++
				s.note(Note{Line: le.Line, Seq: le.Seq, Kind: "bad_line", Code: lineCode(le.Err), Message: le.Err.Error()}, opts.MaxNotes)
				if opts.StopOnBadLine {
					return s, err
				}
				continue
			}
			if err != nil {
				return s, fmt.Errorf("read log: %w", err)
			}
			if opts.Until != 0 && rec.Seq > opts.Until {
				break loop
			}
			s.Records++
			s.LastSeq = rec.Seq
			if s.Records%uint64(opts.ProgressEvery) == 0 {
				progress(false)
			}
			if skip, err := rs.skip(rec.Event); err != nil {
				return s, fmt.Errorf("line %d (seq %d): %w", line, rec.Seq, err)
			} else if skip {
				s.Resumed++
				continue
			}
			if err := pl.push(ctx, rec, line); err != nil {
				return s, err
			}
		}
	}
	if err := pl.drain(); err != nil {
		return s, err
	}
	if err := rs.finished(); err != nil {
		return s, err
	}
	progress(true)
	return s, nil
}

// record adds one input's outcome to the summary, in log order.
func (s *Summary) record(rec events.LogRecord, line int, r pool.Ready, rejected error, opts Options) error {
	ev := rec.Event
	var ps *PoolSummary
	if ev.Pool != "" {
		ps = s.pool(ev.Pool)
		ps.Inputs++
	}
	if rejected != nil {
		s.Rejected++
		code := rejectCode(rejected)
		if ps != nil {
			if ps.Rejected == nil {
				ps.Rejected = map[string]int{}
			}
			ps.Rejected[code]++
		}
		s.note(Note{Line: line, Seq: rec.Seq, EventID: ev.ID, Pool: ev.Pool, Kind: "rejected", Code: code, Message: rejected.Error()}, opts.MaxNotes)
		return nil
	}
	if r.Duplicate {
		s.Duplicates++
		if ps != nil {
			ps.Duplicates++
		}
		return nil
	}
	s.Applied++
	if ps != nil {
		ps.Applied++
	}
	for _, tr := range r.Transitions {
		p := s.pool(tr.Pool)
		if tr.Error != "" {
			p.Refused++
		} else {
			p.Transitions++
		}
	}
	for _, o := range r.Outbox {
		switch o.Kind {
		case events.KindAlert:
			var a events.Alert
			if json.Unmarshal(o.Body, &a) == nil {
				p := s.pool(o.Pool)
				if p.Alerts == nil {
					p.Alerts = map[string]int{}
				}
				p.Alerts[a.Kind]++
			}
		case events.KindStatus:
			p := s.pool(o.Pool)
			p.Statuses++
			p.lastStatus = o.Body
		}
	}
	if opts.AfterStep != nil {
		return opts.AfterStep(r)
	}
	return nil
}

// lineCode is the stable code of a bad line.
func lineCode(err error) string {
	if errors.Is(err, events.ErrLogSeq) {
		return "seq_order"
	}
	return events.Code(err)
}

// rejectCode is the stable code of a rejection: the core's RejectError code, else a
// generic one.
func rejectCode(err error) string {
	var re *pool.RejectError
	if errors.As(err, &re) {
		return re.Code
	}
	return "store_refused"
}

// Finish fills each pool's final state from src (normally the target) and returns the
// pool ids in order.
func (s *Summary) Finish(src Source) error {
	pools, err := src.Pools()
	if err != nil {
		return err
	}
	for _, p := range pools {
		ps := s.pool(p.ID)
		ps.Identity, ps.CipherSuite, ps.Counts, ps.LastResort = p.Identity, p.CipherSuite, p.Counts, p.LastResort
		if ps.lastStatus != nil {
			var st events.Status
			if json.Unmarshal(ps.lastStatus, &st) == nil {
				ps.Health = st.Health
			}
		}
	}
	return nil
}

// PoolIDs returns the summary's pool ids, sorted.
func (s *Summary) PoolIDs() []string {
	ids := make([]string, 0, len(s.Pools))
	for id := range s.Pools {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// resumer skips the records a target already applied: it walks the log in step with
// the target's journal. A record whose event is the next journaled one was applied
// here; any other record before the journal's end was rejected or a duplicate when it
// was first replayed, and is skipped too. Because the core is deterministic, the first
// copy of an event that was accepted is the one in the journal, so the walk is exact.
type resumer struct {
	t    Target
	last uint64 // last applied seq in the target
	next uint64 // next journal seq to match
}

func newResumer(t Target) (*resumer, error) {
	m, err := t.Meta()
	if err != nil {
		return nil, err
	}
	rs := &resumer{t: t, last: m.Seq, next: 1}
	if m.Seq > 0 {
		if _, ok, err := t.JournalEntry(1); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("%w: the database has applied %d inputs but its journal does not start at seq 1 (pruned by retention?)", ErrResume, m.Seq)
		}
	}
	return rs, nil
}

func (rs *resumer) skip(ev events.Event) (bool, error) {
	if rs.next > rs.last {
		return false, nil
	}
	j, ok, err := rs.t.JournalEntry(rs.next)
	if err != nil {
		return false, err
	}
	if !ok {
		return false, fmt.Errorf("%w: journal entry %d is missing", ErrResume, rs.next)
	}
	if sameInput(j, ev) {
		rs.next++
	}
	return true, nil
}

func (rs *resumer) finished() error {
	if rs.next <= rs.last {
		j, _, _ := rs.t.JournalEntry(rs.next)
		return fmt.Errorf("%w: the database holds inputs that are not in this log (journal seq %d, event %q, and %d more): replay into an empty directory",
			ErrResume, rs.next, j.ID, rs.last-rs.next)
	}
	return nil
}

func sameInput(a, b events.Event) bool {
	return a.ID == b.ID && a.Type == b.Type && a.Pool == b.Pool && a.Ref == b.Ref && a.Time.Equal(b.Time)
}

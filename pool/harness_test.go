package pool

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
)

// start is the scenario clock's origin.
var start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// harness drives a Core over a MemStore, checking the invariants after every step.
type harness struct {
	t     testing.TB
	core  *Core
	store *MemStore
	clock time.Time
	ids   int
	names map[string]string // hex ref -> name
	next  map[string]int    // name prefix -> counter
	log   []events.Event    // every input stepped, for replay
	// viewCheck: compare a full snapshot of the store around every n-th Step (0: never)
	viewCheck int
	steps     int
	where     string // file:line of the scenario directive being run, for errors
}

func newHarness(t testing.TB) *harness {
	return &harness{t: t, core: &Core{}, store: NewMemStore(), clock: start, names: map[string]string{}, next: map[string]int{}, viewCheck: 1}
}

func refOf(name string) string {
	h := sha256.Sum256([]byte(name))
	return hex.EncodeToString(h[:])
}

func (h *harness) ref(name string) string {
	r := refOf(name)
	h.names[r] = name
	return r
}

func (h *harness) name(ref string) string {
	if n, ok := h.names[ref]; ok {
		return n
	}
	return ref
}

// snapshot is the whole store as JSON: a rejected (or any) Step must leave it as is.
func snapshot(m *MemStore) string {
	var idx []IndexEntry
	m.index.ascend(time.Unix(1<<40, 0), func(e IndexEntry) bool { idx = append(idx, e); return true })
	seen := map[string]seenEntry{}
	for k, e := range m.seen {
		seen[k.pool+"/"+k.id] = e
	}
	b, _ := json.Marshal(struct {
		Meta  Meta
		Pools map[string]Pool
		KPs   map[string]KeyPackage
		Index []IndexEntry
		Seen  map[string]seenEntry
	}{m.meta, m.pools, m.kps, idx, seen})
	return string(b)
}

// step applies one input and checks everything a Step promises.
func (h *harness) step(in events.Event) (Ready, error) {
	h.t.Helper()
	h.steps++
	check := h.viewCheck > 0 && h.steps%h.viewCheck == 0
	var before string
	if check {
		before = snapshot(h.store)
	}
	r, err := h.core.Step(h.store, in)
	if check && snapshot(h.store) != before {
		h.t.Fatalf("Step(%s) modified the view", in.ID)
	}
	if err != nil {
		var re *RejectError
		if !errors.As(err, &re) {
			h.t.Fatalf("Step(%s): untyped error %v", in.ID, err)
		}
		return r, err
	}
	if err := CheckReady(h.store, r); err != nil {
		h.t.Fatalf("Step(%s): %v", in.ID, err)
	}
	ntr := 0
	for i, o := range r.Outbox {
		if want := fmt.Sprintf("%d-%d", r.Seq, i+1); o.ID != want {
			h.t.Fatalf("outbox id %s, want %s", o.ID, want)
		}
		if o.Kind == events.KindTransition {
			ntr++
		}
	}
	if ntr != len(r.Transitions) {
		h.t.Fatalf("%d transition messages for %d transitions", ntr, len(r.Transitions))
	}
	h.store.Apply(r)
	h.log = append(h.log, in)
	if err := CheckInvariants(h.store); err != nil {
		h.t.Fatalf("after Step(%s %s): %v", in.ID, in.Type, err)
	}
	return r, nil
}

func (h *harness) event(typ events.Type, pool string) events.Event {
	h.ids++
	return events.Event{ID: fmt.Sprintf("e%d", h.ids), Type: typ, Time: h.clock, Pool: pool}
}

func rel(t time.Time) string {
	d := t.Sub(start)
	if d == 0 {
		return "T"
	}
	s := "T+"
	if d < 0 {
		s, d = "T-", -d
	}
	if days := d / (24 * time.Hour); days > 0 {
		s += strconv.Itoa(int(days)) + "d"
		d -= days * 24 * time.Hour
	}
	if d > 0 {
		str := d.String()
		if strings.HasSuffix(str, "m0s") {
			str = str[:len(str)-2]
		}
		if strings.HasSuffix(str, "h0m") {
			str = str[:len(str)-2]
		}
		s += str
	}
	return s
}

// render prints a Ready compactly, with names instead of refs.
func (h *harness) render(r Ready, err error) string {
	var b strings.Builder
	if err != nil {
		var re *RejectError
		errors.As(err, &re)
		return h.names2(fmt.Sprintf("error (%s): %v\n", re.Code, err))
	}
	if r.Duplicate {
		return "duplicate: nothing changed\n"
	}
	ti := 0
	for _, o := range r.Outbox {
		switch o.Kind {
		case events.KindTransition:
			tr := r.Transitions[ti]
			ti++
			from := tr.From
			if from == "" {
				from = "(new)"
			}
			fmt.Fprintf(&b, "%s: %s -> %s (%s)\n", tr.Ref, from, tr.To, tr.Event)
		case events.KindUpload:
			var u events.Upload
			json.Unmarshal(o.Body, &u)
			lr := ""
			if u.LastResort {
				lr = " last-resort"
			}
			fmt.Fprintf(&b, "upload %s attempt=%d%s\n", u.Ref, u.Attempt, lr)
		case events.KindWithdraw:
			var w events.Withdraw
			json.Unmarshal(o.Body, &w)
			fmt.Fprintf(&b, "withdraw %s: %s\n", w.Ref, w.Reason)
		case events.KindAlert:
			var a events.Alert
			json.Unmarshal(o.Body, &a)
			fmt.Fprintf(&b, "alert %s %s: %s\n", a.Pool, a.Kind, a.Detail)
		case events.KindStatus:
			var s events.Status
			json.Unmarshal(o.Body, &s)
			b.WriteString(statusLine(s))
		}
	}
	for _, g := range r.Generate {
		lr := ""
		if g.LastResort {
			lr = " last-resort"
		}
		fmt.Fprintf(&b, "generate %s n=%d%s\n", g.Pool, g.Count, lr)
	}
	for _, e := range r.Erase {
		fmt.Fprintf(&b, "erase %s\n", e)
	}
	for _, p := range r.Purge {
		fmt.Fprintf(&b, "purge %s\n", p)
	}
	if b.Len() == 0 {
		b.WriteString("ok\n")
	}
	return h.names2(b.String())
}

func statusLine(s events.Status) string {
	next := "-"
	if s.NextExpiry != nil {
		next = rel(*s.NextExpiry)
	}
	c := s.Counts
	return fmt.Sprintf("status %s #%d %s created=%d available=%d claimed=%d expired=%d deleted=%d fresh=%d last-resort=%s used=%v next-expiry=%s\n",
		s.Pool, s.Seq, s.Health, c.Created, c.Available, c.Claimed, c.Expired, c.Deleted, s.AvailableFresh, orDash(s.LastResortRef), s.LastResortUsed, next)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (h *harness) names2(s string) string {
	var pairs []string
	for ref, n := range h.names {
		pairs = append(pairs, ref, n)
	}
	return strings.NewReplacer(pairs...).Replace(s)
}

// kpsLine lists a pool's KeyPackages.
func (h *harness) kps(pool string) string {
	var lines []string
	for _, k := range h.store.KeyPackages(pool) {
		flags := ""
		if k.LastResort {
			flags += " last-resort"
		}
		if k.Used {
			flags += " used"
		}
		if k.Fresh {
			flags += " fresh"
		}
		if k.Held {
			flags += " held"
		}
		if h.store.Erased(k.Ref) {
			flags += " erased"
		}
		lines = append(lines, fmt.Sprintf("%s %s%s attempt=%d deadline=%s", h.name(k.Ref), k.State, flags, k.Attempt, rel(k.Deadline)))
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return "(none)\n"
	}
	return strings.Join(lines, "\n") + "\n"
}

// generated builds a `generated` input for a new KeyPackage named by prefix.
func (h *harness) generated(pool string, lastResort bool, life time.Duration) events.Event {
	prefix := "k"
	if lastResort {
		prefix = "lr"
	}
	h.next[prefix]++
	name := fmt.Sprintf("%s%d", prefix, h.next[prefix])
	p, ok := h.store.pools[pool]
	backdate := time.Hour
	if ok {
		backdate = p.Config.NotBeforeBackdate
		if life == 0 {
			life = p.Config.Lifetime
		}
	}
	if life == 0 {
		life = DefaultConfig().Lifetime
	}
	in := h.event(events.TypeGenerated, pool)
	in.Generated = &events.Generated{Ref: h.ref(name), KeyPackage: []byte("kp-" + name),
		NotBefore: h.clock.Add(-backdate).Unix(), NotAfter: h.clock.Add(life).Unix(), LastResort: lastResort}
	return in
}

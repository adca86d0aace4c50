package pool

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of pool/testdata scenarios")

// A scenario file is a list of blocks: comment lines (#), one directive line, "----",
// the expected output, and a blank line (the cockroachdb/datadriven layout).
type block struct {
	comments []string
	cmd      string
	line     int // of cmd, for errors
	want     string
}

func parseScenario(t *testing.T, path string) []block {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []block
	var cur block
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.HasPrefix(l, "#") || (strings.TrimSpace(l) == "" && cur.cmd == ""):
			cur.comments = append(cur.comments, l)
		case cur.cmd == "":
			cur.cmd, cur.line = l, i+1
			if i+1 >= len(lines) || lines[i+1] != "----" {
				t.Fatalf("%s:%d: directive %q is not followed by ----", path, i+1, l)
			}
			i++
			var out []string
			for i+1 < len(lines) && lines[i+1] != "" {
				i++
				out = append(out, lines[i])
			}
			if i+1 < len(lines) && lines[i+1] == "" {
				i++ // the blank line that ends the block
			}
			if len(out) > 0 {
				cur.want = strings.Join(out, "\n") + "\n"
			}
			blocks = append(blocks, cur)
			cur = block{}
		}
	}
	if cur.cmd == "" && len(cur.comments) > 0 {
		blocks = append(blocks, cur) // trailing comments
	}
	return blocks
}

func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			blocks := parseScenario(t, f)
			h := newHarness(t)
			var out strings.Builder
			for _, b := range blocks {
				for _, c := range b.comments {
					out.WriteString(c + "\n")
				}
				if b.cmd == "" {
					continue
				}
				h.where = fmt.Sprintf("%s:%d", f, b.line)
				got := h.run(b.cmd)
				out.WriteString(b.cmd + "\n----\n" + got + "\n")
				if !*rewrite && got != b.want {
					t.Errorf("%s: %s\ngot:\n%swant:\n%s", f, b.cmd, got, b.want)
				}
			}
			if *rewrite {
				if err := os.WriteFile(f, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// replaying the journal into an empty store gives the same state
			r := newHarness(t)
			for _, in := range h.log {
				if _, err := r.step(in); err != nil {
					t.Fatalf("replay %s: %v", in.ID, err)
				}
			}
			if a, b := snapshot(h.store), snapshot(r.store); a != b {
				t.Fatalf("replay differs")
			}
		})
	}
}

// args are the "k=v" and bare-flag arguments of one directive. Reading them is strict:
// a bad value, a flag given a value, a key given twice, and a key the directive never
// reads (a typo) fail the test, so that -rewrite cannot turn a mistake into a golden.
type args struct {
	fail func(format string, a ...any)
	vals map[string]string
	used map[string]bool
}

func parseArgs(fail func(string, ...any), fields []string) *args {
	a := &args{fail: fail, vals: map[string]string{}, used: map[string]bool{}}
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		if _, dup := a.vals[k]; dup {
			fail("key %q given twice", k)
		}
		a.vals[k] = v
	}
	return a
}

// unused fails on the keys the directive did not read.
func (a *args) unused() {
	for k := range a.vals {
		if !a.used[k] {
			a.fail("unknown key %q (or one this directive does not use)", k)
		}
	}
}

func (a *args) has(k string) bool {
	_, ok := a.vals[k]
	a.used[k] = true
	return ok
}

func (a *args) str(k, def string) string {
	if !a.has(k) {
		return def
	}
	return a.vals[k]
}

// flag is a bare flag such as "lr": giving it a value is a mistake.
func (a *args) flag(k string) bool {
	if a.has(k) && a.vals[k] != "" {
		a.fail("%s is a flag and takes no value (got %s=%s)", k, k, a.vals[k])
	}
	return a.has(k)
}

func (a *args) int(k string) int {
	if !a.has(k) {
		return 0
	}
	n, err := strconv.Atoi(a.vals[k])
	if err != nil {
		a.fail("%s=%s: not an integer", k, a.vals[k])
	}
	return n
}

// optInt is the value of k when given (a policy field that is not given keeps its value).
func (a *args) optInt(k string) *int {
	if !a.has(k) {
		return nil
	}
	return new(a.int(k))
}

func (a *args) optDur(k string) *events.Duration {
	if !a.has(k) {
		return nil
	}
	return new(events.Duration(a.dur(k)))
}

func (a *args) dur(k string) time.Duration {
	if !a.has(k) {
		return 0
	}
	return parseDur(a.fail, k+"="+a.vals[k], a.vals[k])
}

// parseDur reads an events duration ("36h", "2d") with an optional minus sign.
func parseDur(fail func(string, ...any), what, s string) time.Duration {
	d, err := events.ParseDuration(strings.TrimPrefix(s, "-"))
	if err != nil {
		fail("%s: %v", what, err)
	}
	if strings.HasPrefix(s, "-") {
		return -d
	}
	return d
}

// run executes one directive and returns its rendered output; a mistake in it fails the
// test, naming h.where (file:line) when set.
func (h *harness) run(cmd string) string {
	fail := func(format string, v ...any) {
		h.t.Helper()
		h.t.Fatalf("%s: %s: %s", cmp.Or(h.where, h.t.Name()), cmd, fmt.Sprintf(format, v...))
	}
	fields := strings.Fields(cmd)
	if len(fields) == 0 {
		fail("empty directive")
	}
	// tick and advance take a duration as their first argument, not a key
	var step string
	if fields[0] == "advance" || (fields[0] == "tick" && len(fields) > 1 && strings.HasPrefix(fields[1], "+")) {
		if len(fields) < 2 {
			fail("%s needs a duration", fields[0])
		}
		step, fields = strings.TrimPrefix(fields[1], "+"), append(fields[:1:1], fields[2:]...)
	}
	a := parseArgs(fail, fields[1:])
	out := h.directive(fields[0], step, a, fail)
	a.unused()
	return out
}

// directive runs one parsed directive; step is the duration of tick +D and advance D.
func (h *harness) directive(name, step string, a *args, fail func(string, ...any)) string {
	pool := a.str("pool", "p1")
	// an input event with the common options: id=, at= (offset from the clock)
	ev := func(typ events.Type) events.Event {
		in := h.event(typ, pool)
		if a.has("id") {
			in.ID = a.str("id", "")
		}
		in.Time = h.clock.Add(a.dur("at"))
		if a.has("ref") {
			in.Ref = h.ref(a.str("ref", ""))
		}
		return in
	}
	do := func(in events.Event) string { r, err := h.step(in); return h.render(r, err) }
	switch name {
	case "register":
		in := ev(events.TypePoolRegistered)
		in.Register = &events.Register{Identity: a.str("identity", "alice"), CipherSuite: uint16(max(a.int("suite"), 1)), SignatureKey: []byte(a.str("key", "sig-alice")),
			Policy: events.Policy{Target: a.optInt("target"), LowWatermark: a.optInt("low"), HardCap: a.optInt("cap"), Lifetime: a.optDur("lifetime"),
				NotBeforeBackdate: a.optDur("backdate"), MaxLifetime: a.optDur("maxlife"), ExpiryMargin: a.optDur("margin"),
				DeleteGrace: a.optDur("grace"), UploadTimeout: a.optDur("timeout"), MaxUploadAttempts: a.optInt("attempts"),
				TombstoneRetention: a.optDur("retention")}}
		return do(in)
	case "generate":
		// generate n=N [lr] [life=]: feed `generated` inputs; n=all answers every
		// outstanding request of the pool.
		p := h.store.pools[pool]
		var out strings.Builder
		lr, life := a.flag("lr"), a.dur("life")
		var n int
		if a.str("n", "all") == "all" {
			if lr {
				fail("lr with n=all: the pool's own last-resort request is answered")
			}
			if p.LastResortRequested {
				out.WriteString(h.genOne(pool, true, life, a))
			}
			n = p.Requested
		} else {
			n = a.int("n")
		}
		for range n {
			out.WriteString(h.genOne(pool, lr, life, a))
		}
		return out.String()
	case "ack":
		if a.str("ref", "all") == "all" {
			var out strings.Builder
			for _, k := range h.store.KeyPackages(pool) {
				if k.State == fsm.Created {
					in := h.event(events.TypeUploadAck, pool)
					in.Ref = k.Ref
					out.WriteString("> ack " + h.name(k.Ref) + "\n" + do(in))
				}
			}
			return out.String()
		}
		return do(ev(events.TypeUploadAck))
	case "reject":
		in := ev(events.TypeUploadRejected)
		in.Reason, in.Retry = a.str("reason", "rejected"), a.flag("retry")
		return do(in)
	case "claim":
		return do(ev(events.TypeClaimed))
	case "consume":
		return do(ev(events.TypeConsumed))
	case "replenish":
		return do(ev(events.TypeReplenish))
	case "tick":
		// tick [+dur] [pool=]: advance the clock, then an expiry_tick
		if step != "" {
			h.clock = h.clock.Add(parseDur(fail, "tick +"+step, step))
		}
		in := ev(events.TypeExpiryTick)
		if !a.has("pool") {
			in.Pool = ""
		}
		out := do(in)
		return fmt.Sprintf("now %s\n", rel(h.store.meta.Time)) + out
	case "advance":
		h.clock = h.clock.Add(parseDur(fail, "advance "+step, step))
		return fmt.Sprintf("clock %s\n", rel(h.clock))
	case "kps":
		return h.kps(pool)
	case "pool":
		p, ok := h.store.pools[pool]
		if !ok {
			return "(no pool)\n"
		}
		st := StatusOf(p, time.Time{})
		return h.names2(statusLine(st)) + fmt.Sprintf("requested=%d last-resort-requested=%v pending=%s held=%s tombstones=%d\n",
			p.Requested, p.LastResortRequested, orDash(h.name(p.LastResortPending)), orDash(h.name(p.Held)), p.Tombstones)
	case "raw":
		// raw type=<type> [fields]: an event as given, for bad-input cases
		in := ev(events.Type(a.str("type", "")))
		if a.flag("nopool") {
			in.Pool = ""
		}
		return do(in)
	}
	fail("unknown directive %q", name)
	return ""
}

func (h *harness) genOne(pool string, lr bool, life time.Duration, a *args) string {
	in := h.generated(pool, lr, life)
	if a.has("id") {
		in.ID = a.str("id", "")
	}
	if a.has("ref") {
		in.Generated.Ref = h.ref(a.str("ref", ""))
	}
	return "> generated " + h.name(in.Generated.Ref) + "\n" + h.names2(h.render(h.step(in)))
}

// fatalRecorder stands in for testing.T to catch a harness failure: Fatalf records the
// message and ends the goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, a ...any) {
	r.msg = fmt.Sprintf(format, a...)
	runtime.Goexit()
}

// TestScenarioDirectivesStrict: a typo or a bad value in a scenario file fails the test
// with its place, instead of being ignored (and, under -rewrite, becoming a golden).
func TestScenarioDirectivesStrict(t *testing.T) {
	for _, tc := range []struct{ cmd, want string }{
		{"register targt=5", `unknown key "targt"`},
		{"register target=ten", "target=ten: not an integer"},
		{"register target=1 target=2", `key "target" given twice`},
		{"register margin=3x", "margin=3x: invalid duration"},
		{"claim ref=a retry", `unknown key "retry"`},
		{"reject ref=a retry=yes", "retry is a flag and takes no value"},
		{"generate n=all lr", "lr with n=all"},
		{"tick +soon", "tick +soon: invalid duration"},
		{"advance", "advance needs a duration"},
		{"advance 1y", "advance 1y: invalid duration"},
		{"regster", `unknown directive "regster"`},
	} {
		r := &fatalRecorder{TB: t}
		h := newHarness(r)
		h.where = "testdata/x.txt:7"
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.run("register")
			h.run(tc.cmd)
		}()
		<-done
		if want := "testdata/x.txt:7: " + tc.cmd + ": "; !strings.HasPrefix(r.msg, want) || !strings.Contains(r.msg, tc.want) {
			t.Errorf("%q: failure %q, want %q then %q", tc.cmd, r.msg, want, tc.want)
		}
	}
}

package pool

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
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
			cur.cmd = l
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

// args parses "k=v" and bare flags.
type args map[string]string

func parseArgs(fields []string) args {
	a := args{}
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		a[k] = v
	}
	return a
}

func (a args) str(k, def string) string {
	if v, ok := a[k]; ok {
		return v
	}
	return def
}

func (a args) has(k string) bool { _, ok := a[k]; return ok }

func (a args) int(k string) int {
	n, _ := strconv.Atoi(a[k])
	return n
}

// optInt is the value of k when given (a policy field that is not given keeps its value).
func (a args) optInt(k string) *int {
	if !a.has(k) {
		return nil
	}
	return new(a.int(k))
}

func (a args) optDur(k string) *events.Duration {
	if !a.has(k) {
		return nil
	}
	return new(events.Duration(a.dur(k)))
}

func (a args) dur(k string) time.Duration {
	if a[k] == "" {
		return 0
	}
	d, err := events.ParseDuration(strings.TrimPrefix(a[k], "-"))
	if err != nil {
		panic(fmt.Sprintf("bad duration %s=%s", k, a[k]))
	}
	if strings.HasPrefix(a[k], "-") {
		return -d
	}
	return d
}

// run executes one directive and returns its rendered output.
func (h *harness) run(cmd string) string {
	fields := strings.Fields(cmd)
	a := parseArgs(fields[1:])
	pool := a.str("pool", "p1")
	// an input event with the common options: id=, at= (offset from the clock)
	ev := func(typ events.Type) events.Event {
		in := h.event(typ, pool)
		if id, ok := a["id"]; ok {
			in.ID = id
		}
		in.Time = h.clock.Add(a.dur("at"))
		if a.has("ref") {
			in.Ref = h.ref(a["ref"])
		}
		return in
	}
	do := func(in events.Event) string { r, err := h.step(in); return h.render(r, err) }
	switch fields[0] {
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
		n := a.int("n")
		p := h.store.pools[pool]
		var out strings.Builder
		if a.str("n", "all") == "all" {
			if p.LastResortRequested {
				out.WriteString(h.genOne(pool, true, a.dur("life"), a))
			}
			n = p.Requested
		}
		for range n {
			out.WriteString(h.genOne(pool, a.has("lr"), a.dur("life"), a))
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
		in.Reason, in.Retry = a.str("reason", "rejected"), a.has("retry")
		return do(in)
	case "claim":
		return do(ev(events.TypeClaimed))
	case "consume":
		return do(ev(events.TypeConsumed))
	case "replenish":
		return do(ev(events.TypeReplenish))
	case "tick":
		// tick [+dur] [pool=]: advance the clock, then an expiry_tick
		if len(fields) > 1 && strings.HasPrefix(fields[1], "+") {
			d, _ := events.ParseDuration(fields[1][1:])
			h.clock = h.clock.Add(d)
		}
		in := ev(events.TypeExpiryTick)
		if !a.has("pool") {
			in.Pool = ""
		}
		out := do(in)
		return fmt.Sprintf("now %s\n", rel(h.store.meta.Time)) + out
	case "advance":
		d, _ := events.ParseDuration(fields[1])
		h.clock = h.clock.Add(d)
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
		if a.has("nopool") {
			in.Pool = ""
		}
		return do(in)
	}
	h.t.Fatalf("unknown directive %q", cmd)
	return ""
}

func (h *harness) genOne(pool string, lr bool, life time.Duration, a args) string {
	in := h.generated(pool, lr, life)
	if a.has("id") {
		in.ID = a["id"]
	}
	if a.has("ref") {
		in.Generated.Ref = h.ref(a["ref"])
	}
	return "> generated " + h.name(in.Generated.Ref) + "\n" + h.names2(h.render(h.step(in)))
}

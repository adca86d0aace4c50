package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/kpooltest"
)

const goldenReplay = "../../testdata/replay/"

func TestReplayCommandExpect(t *testing.T) {
	log := goldenReplay + "normal-day.ndjson"
	code, out, errOut := runCLI(t, "", "replay", log, "--expect", goldenReplay+"normal-day.state.json", "--progress", "off")
	if code != 0 || !strings.Contains(out, "state matches") || errOut != "" {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	// A second run prints the same bytes.
	if _, again, _ := runCLI(t, "", "replay", log, "--expect", goldenReplay+"normal-day.state.json", "--progress", "off"); again != out {
		t.Fatalf("two replays printed different output:\n%s\n---\n%s", out, again)
	}
	// Progress goes to stderr only: a bar when asked (auto picks it on a terminal), lines otherwise.
	_, out2, bar := runCLI(t, "", "replay", log, "--progress", "bar")
	if !strings.Contains(bar, "[==============================] 100%  89 inputs  seq 89") || !strings.HasPrefix(out, out2) {
		t.Fatalf("bar: %q", bar)
	}
	if _, _, lines := runCLI(t, "", "replay", log); lines != "replay: done: 89 inputs, last seq 89\n" {
		t.Fatalf("lines: %q", lines)
	}
	want, _ := os.ReadFile(goldenReplay + "normal-day.summary.txt")
	if !strings.HasPrefix(out, string(want)) {
		t.Fatalf("summary differs from the golden one:\n%s", out)
	}
	// Stopping early differs from the full state: exit 1 with the differences listed.
	code, out, _ = runCLI(t, "", "replay", "--until", "40", log, "--expect", goldenReplay+"normal-day.state.json", "--progress", "off")
	if code != exitFailure || !strings.Contains(out, "differences):") || !strings.Contains(out, `meta.seq: want 89, got 40`) {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

func TestReplayCommandBadInput(t *testing.T) {
	code, out, _ := runCLI(t, "", "replay", goldenReplay+"bad-lines.ndjson", "--progress", "off")
	if code != exitFailure || !strings.Contains(out, "bad lines 8") || !strings.Contains(out, "line 8: bad line [malformed]") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "", "replay", goldenReplay+"bad-lines.ndjson", "--stop-on-bad-line", "--progress", "off")
	if code != exitFailure || !strings.Contains(out, "bad lines 1") {
		t.Fatalf("stop-on-bad-line: exit %d\n%s", code, out)
	}

	dir := t.TempDir()
	newer := filepath.Join(dir, "newer.ndjson")
	os.WriteFile(newer, []byte(`{"format":"kpool-log","version":2}`+"\n"), 0o644)
	code, out, errOut := runCLI(t, "", "replay", newer)
	if code != exitFailure || out != "" || !strings.Contains(errOut, "event log version 2 is newer than this kpool reads (up to 1)") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "", "replay", filepath.Join(dir, "missing.ndjson"))
	if code != exitFailure || !strings.Contains(errOut, "no such file") {
		t.Fatalf("exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "replay", goldenReplay+"bad-lines.ndjson", "--journal-retention", "-1h")
	if code != exitUsage || !strings.Contains(errOut, `worker replay: --journal-retention: invalid duration: "-1h" is not a duration`) {
		t.Fatalf("exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "replay")
	if code != exitUsage || !strings.Contains(errOut, "give exactly one LOG") {
		t.Fatalf("exit %d %s", code, errOut)
	}
}

// replay --data, then log export of that database, then a replay of the export gives
// the same state; --verify passes on the database.
func TestReplayDataExportVerify(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	log := goldenReplay + "duplicates-out-of-order.ndjson"
	state := filepath.Join(dir, "state.json")
	code, out, errOut := runCLI(t, "", "replay", log, "--data", data, "--write-state", state, "--progress", "off")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	// A replayed database has no private keys: the worker must refuse to serve it.
	done := make(chan string, 1)
	go func() {
		_, _, e := runCLI(t, "", "run", "--data", data, "--listen", "127.0.0.1:0", "--tick", "0")
		done <- e
	}()
	select {
	case e := <-done:
		if !strings.Contains(e, "key file missing for a database that holds sealed records") {
			t.Fatalf("worker run on a replayed database: %s", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker run started on a replayed database")
	}
	// Again into the same directory: everything is already there.
	code, out, errOut = runCLI(t, "", "replay", log, "--data", data, "--expect", state, "--progress", "off")
	if code != 0 || !strings.Contains(errOut, "already holds 22 applied inputs: resuming") || !strings.Contains(out, "resumed: 28 inputs") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	exported := filepath.Join(dir, "export.ndjson")
	code, _, errOut = runCLI(t, "", "log", "export", "--data", data, "--out", exported)
	if code != 0 || !strings.Contains(errOut, "22 inputs written") {
		t.Fatalf("export: exit %d %s", code, errOut)
	}
	code, out, _ = runCLI(t, "", "replay", exported, "--expect", state, "--progress", "off")
	if code != 0 || !strings.Contains(out, "applied 22, duplicates 0, rejected 0") {
		t.Fatalf("replay of export: exit %d\n%s", code, out)
	}
	code, out, errOut = runCLI(t, "", "replay", "--verify", "--data", data)
	if code != 0 || !strings.Contains(out, "verify OK: 22 journaled inputs") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, errOut)
	}

	// A filtered export keeps one pool (and global ticks) with the journal's seqs.
	code, out, _ = runCLI(t, "", "log", "export", "--data", data, "--pool", "frank", "--from", "3")
	if code != 0 || strings.Contains(out, `"pool":"erin"`) || !strings.Contains(out, `"pool":"frank"`) ||
		!strings.HasPrefix(out, `{"format":"kpool-log","version":1,"subject_prefix":"kpool","source":"journal","from":3,"pool":"frank"}`) {
		t.Fatalf("filtered export: exit %d\n%s", code, out)
	}
	code, _, errOut = runCLI(t, "", "log", "export", "--data", data, "--from", "9", "--to", "3")
	if code != exitUsage || !strings.Contains(errOut, "--to 3 is before --from 9") {
		t.Fatalf("bad range: exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "replay", "--verify", "--data", filepath.Join(dir, "nothing"))
	if code != exitFailure || !strings.Contains(errOut, "no database at") {
		t.Fatalf("verify missing: exit %d %s", code, errOut)
	}
}

// log export --stream reads the inbound JetStream stream of a running worker: the events
// other services published, with their stream sequence numbers.
func TestLogExportStream(t *testing.T) {
	env := kpooltest.Start(t, kpooltest.Options{Deterministic: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.ReplayFile(ctx, goldenReplay+"exhaustion-last-resort.ndjson", kpooltest.ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "stream.ndjson")
	code, _, errOut := runCLI(t, "", "log", "export", "--stream", "--nats-url", env.Worker.ClientURL(), "--out", out)
	if code != 0 || !strings.Contains(errOut, "14 inputs written") {
		t.Fatalf("exit %d %s", code, errOut)
	}
	data, _ := os.ReadFile(out)
	lr, err := events.NewLogReader(bytes.NewReader(data))
	if err != nil || lr.Header().Source != "stream" {
		t.Fatal(err, lr.Header())
	}
	var types []string
	var seqs []uint64
	for {
		rec, err := lr.Next()
		if err != nil {
			break
		}
		types = append(types, string(rec.Event.Type))
		seqs = append(seqs, rec.Seq)
	}
	if len(types) != 14 || types[0] != "upload_ack" || types[len(types)-1] != "expiry_tick" {
		t.Fatalf("types %v", types)
	}
	// The worker's own inputs sit between the events in the stream: a range of stream
	// sequences holds only the events within it.
	from, to := strconv.FormatUint(seqs[4], 10), strconv.FormatUint(seqs[5], 10)
	code, _, errOut = runCLI(t, "", "log", "export", "--stream", "--nats-url", env.Worker.ClientURL(), "--from", from, "--to", to, "--out", out)
	if code != 0 || !strings.Contains(errOut, "2 inputs written") {
		t.Fatalf("range: exit %d %s", code, errOut)
	}
}

// A live worker's database (here fed a golden log over NATS) passes --verify once the
// worker is stopped, and its exported journal replays to the golden state.
func TestVerifyLiveWorkerDatabase(t *testing.T) {
	dir := t.TempDir()
	env := kpooltest.Start(t, kpooltest.Options{Deterministic: true, Dir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.ReplayFile(ctx, goldenReplay+"normal-day.ndjson", kpooltest.ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, "", "replay", "--verify", "--data", dir)
	if code != exitFailure || !strings.Contains(errOut, "database in use by another worker") {
		t.Fatalf("verify while running: exit %d %s", code, errOut)
	}
	if err := env.Close(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "", "replay", "--verify", "--data", dir)
	if code != 0 || !strings.Contains(out, "verify OK: 89 journaled inputs") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, errOut)
	}
	log := filepath.Join(t.TempDir(), "journal.ndjson")
	if code, _, errOut := runCLI(t, "", "log", "export", "--data", dir, "--out", log); code != 0 {
		t.Fatalf("export: %s", errOut)
	}
	code, out, _ = runCLI(t, "", "replay", log, "--expect", goldenReplay+"normal-day.state.json", "--progress", "off")
	if code != 0 {
		t.Fatalf("journal of the live run differs from the golden state:\n%s", out)
	}
}

package replay

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected files of testdata/replay")

// replayMem replays a log into memory, checking the pool invariants after every step,
// and returns the summary text and the state file bytes.
func replayMem(t *testing.T, data []byte) (summary, state []byte, sum *Summary) {
	t.Helper()
	mem := NewMem(&pool.Core{Defaults: pool.DefaultConfig()})
	lr, err := events.NewLogReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	sum, err = Run(context.Background(), lr, mem, Options{AfterStep: func(pool.Ready) error {
		return pool.CheckInvariants(mem.Store)
	}})
	if err != nil {
		t.Fatal(err)
	}
	return render(t, sum, mem)
}

func render(t *testing.T, sum *Summary, src Source) (summary, state []byte, _ *Summary) {
	t.Helper()
	if err := sum.Finish(src); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := sum.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	st, err := Dump(src)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), sb, sum
}

func goldenLogs(t *testing.T) []string {
	logs, err := filepath.Glob(filepath.Join(goldenDir, "*.ndjson"))
	if err != nil || len(logs) < 5 {
		t.Fatalf("golden logs: %v %v", logs, err)
	}
	return logs
}

// Each golden log replays to its expected summary and state; -rewrite regenerates them.
// Replaying twice gives the same bytes, and the bbolt target ends in the same state.
func TestGolden(t *testing.T) {
	for _, log := range goldenLogs(t) {
		name := strings.TrimSuffix(filepath.Base(log), ".ndjson")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			summary, state, sum := replayMem(t, data)
			summary2, state2, _ := replayMem(t, data)
			if !bytes.Equal(summary, summary2) || !bytes.Equal(state, state2) {
				t.Fatal("two replays of the same log differ")
			}
			checkGolden(t, filepath.Join(goldenDir, name+".summary.txt"), summary)
			checkGolden(t, filepath.Join(goldenDir, name+".state.json"), state)
			if sum.Applied == 0 {
				t.Fatal("nothing applied")
			}

			bt, err := OpenBolt(t.TempDir(), &pool.Core{Defaults: pool.DefaultConfig()}, BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer bt.Close()
			lr, err := events.NewLogReader(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			bsum, err := Run(context.Background(), lr, bt, Options{})
			if err != nil {
				t.Fatal(err)
			}
			bsummary, bstate, _ := render(t, bsum, bt)
			if !bytes.Equal(bstate, state) {
				t.Errorf("bbolt replay state differs from memory replay:\n%s", diffText(t, state, bstate))
			}
			if !bytes.Equal(bsummary, summary) {
				t.Errorf("bbolt replay summary differs:\n%s\n---\n%s", summary, bsummary)
			}
		})
	}
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *rewrite {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -rewrite to create it)", err)
	}
	if !bytes.Equal(want, got) {
		if strings.HasSuffix(path, ".json") {
			t.Fatalf("%s differs:\n%s", path, diffText(t, want, got))
		}
		t.Fatalf("%s differs:\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

func diffText(t *testing.T, want, got []byte) string {
	t.Helper()
	w, err := ReadState(bytes.NewReader(want))
	if err != nil {
		return err.Error()
	}
	g, err := ReadState(bytes.NewReader(got))
	if err != nil {
		return err.Error()
	}
	d, err := Diff(w, g)
	if err != nil {
		return err.Error()
	}
	return strings.Join(d, "\n")
}

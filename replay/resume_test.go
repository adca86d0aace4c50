package replay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

func replayBolt(t *testing.T, dir string, data []byte, opts Options) (*Summary, []byte, error) {
	t.Helper()
	bt, err := OpenBolt(dir, &pool.Core{Defaults: pool.DefaultConfig()}, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Close()
	lr, err := events.NewLogReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Run(context.Background(), lr, bt, opts)
	if err != nil {
		return sum, nil, err
	}
	_, state, _ := render(t, sum, bt)
	return sum, state, nil
}

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenDir, name+".ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Stopping at --until and replaying the whole log into the same database resumes after
// the inputs it holds and ends in the state of one uninterrupted replay.
func TestResumeAfterUntil(t *testing.T) {
	for _, name := range []string{"normal-day", "duplicates-out-of-order", "bad-lines"} {
		t.Run(name, func(t *testing.T) {
			data := readGolden(t, name)
			_, want, _ := replayMem(t, data)
			for _, until := range []uint64{1, 9, 10, 11, 25} {
				dir := t.TempDir()
				first, _, err := replayBolt(t, dir, data, Options{Until: until})
				if err != nil {
					t.Fatal(err)
				}
				sum, got, err := replayBolt(t, dir, data, Options{})
				if err != nil {
					t.Fatalf("until %d: %v", until, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("until %d: resumed state differs:\n%s", until, diffText(t, want, got))
				}
				if sum.Resumed == 0 || sum.Applied+first.Applied == 0 {
					t.Fatalf("until %d: resumed %d, applied %d+%d", until, sum.Resumed, first.Applied, sum.Applied)
				}
			}
		})
	}
}

// A database holding inputs that are not in the log is refused, and nothing is applied.
func TestResumeRefusesForeignDatabase(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := replayBolt(t, dir, readGolden(t, "expiry-wave"), Options{Until: 5}); err != nil {
		t.Fatal(err)
	}
	bt, err := OpenBolt(dir, &pool.Core{Defaults: pool.DefaultConfig()}, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := Dump(bt)
	lr, _ := events.NewLogReader(bytes.NewReader(readGolden(t, "normal-day")))
	sum, err := Run(context.Background(), lr, bt, Options{})
	if !errors.Is(err, ErrResume) || sum.Applied != 0 {
		t.Fatalf("got %v, applied %d", err, sum.Applied)
	}
	after, _ := Dump(bt)
	if d, _ := Diff(before, after); len(d) != 0 {
		t.Fatalf("state changed: %v", d)
	}
	bt.Close()
}

// The crash test: a child process replays into a database and is killed with SIGKILL
// right after the n-th committed input; a resumed replay then ends in the same state as
// an uninterrupted one.
func TestCrashAndResume(t *testing.T) {
	if os.Getenv("KPOOL_REPLAY_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	data := readGolden(t, "duplicates-out-of-order")
	_, want, _ := replayMem(t, data)
	for _, n := range []int{1, 2, 5, 13, 21} {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashAndResume$")
		cmd.Env = append(os.Environ(), "KPOOL_REPLAY_CRASH_CHILD="+dir, "KPOOL_REPLAY_CRASH_AT="+strconv.Itoa(n),
			"KPOOL_REPLAY_CRASH_LOG="+filepath.Join(goldenDir, "duplicates-out-of-order.ndjson"))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("child at %d was not killed: %v\n%s", n, err, out)
		}
		sum, got, err := replayBolt(t, dir, data, Options{})
		if err != nil {
			t.Fatalf("resume after crash at %d: %v", n, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("crash at %d: resumed state differs:\n%s", n, diffText(t, want, got))
		}
		if sum.Resumed == 0 {
			t.Fatalf("crash at %d: nothing was resumed", n)
		}
	}
}

func crashChild() {
	dir, log := os.Getenv("KPOOL_REPLAY_CRASH_CHILD"), os.Getenv("KPOOL_REPLAY_CRASH_LOG")
	at, _ := strconv.Atoi(os.Getenv("KPOOL_REPLAY_CRASH_AT"))
	data, err := os.ReadFile(log)
	if err != nil {
		panic(err)
	}
	bt, err := OpenBolt(dir, &pool.Core{Defaults: pool.DefaultConfig()}, BoltOptions{})
	if err != nil {
		panic(err)
	}
	lr, err := events.NewLogReader(bytes.NewReader(data))
	if err != nil {
		panic(err)
	}
	n := 0
	_, err = Run(context.Background(), lr, bt, Options{AfterStep: func(pool.Ready) error {
		if n++; n == at {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
		return nil
	}})
	fmt.Println("child finished without crashing:", err)
	os.Exit(0)
}

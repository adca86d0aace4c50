package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// builtWorker builds the command once per test run (VCS stamping on when a repository is
// there), for the tests that need a real process: signals and build information.
func builtWorker(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kpool-worker-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "worker")
		out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("go build: %v", binErr)
	}
	return binPath
}

// TestBinaryVersion: the built command names its VCS revision when built in a clone
// (Go stamps it from a .git directory with git installed; a worktree's .git file is not
// recognised, and the version then says it has no revision).
func TestBinaryVersion(t *testing.T) {
	out, err := exec.Command(builtWorker(t), "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "worker ") {
		t.Fatalf("version: %v %q", err, out)
	}
	fi, statErr := os.Stat("../../.git")
	_, gitErr := exec.LookPath("git")
	if statErr != nil || !fi.IsDir() || gitErr != nil {
		if !strings.Contains(string(out), "no VCS revision") {
			t.Fatalf("no clone here, yet the version claims a revision: %q", out)
		}
		return
	}
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "revision "+strings.TrimSpace(string(rev))) {
		t.Fatalf("version %q does not name the revision %s", out, rev)
	}
}

// TestBinarySignals: SIGINT stops the worker with exit status 0, whether it arrives while
// the worker starts (the line says so at once) or once it runs.
func TestBinarySignals(t *testing.T) {
	bin := builtWorker(t)
	for _, tc := range []struct {
		name, after, want string
		end               []string // the last line: one of these
	}{
		// start-up is either abandoned or, if it finished first, undone by a stop
		{"during start-up", "embedded NATS server listening", "stopping", []string{"start-up abandoned", "worker stopped"}},
		{"running", "kpool worker running", "stopping: finishing the messages in hand", []string{"worker stopped"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, "run", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--tick", "0")
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = w, w
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.Close()
			lines := make(chan string, 100)
			go func() {
				sc := bufio.NewScanner(r)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			var seen []string
			next := func(want ...string) {
				t.Helper()
				deadline := time.After(30 * time.Second)
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							t.Fatalf("output ended before %q:\n%s", want, strings.Join(seen, "\n"))
						}
						seen = append(seen, l)
						for _, w := range want {
							if strings.Contains(l, w) {
								return
							}
						}
					case <-deadline:
						cmd.Process.Kill()
						t.Fatalf("no %q within 30s:\n%s", want, strings.Join(seen, "\n"))
					}
				}
			}
			next(tc.after)
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			next(tc.want)
			next(tc.end...)
			for l := range lines {
				seen = append(seen, l)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit: %v\n%s", err, strings.Join(seen, "\n"))
			}
		})
	}
}

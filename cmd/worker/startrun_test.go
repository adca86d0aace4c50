package main

import (
	"context"
	"regexp"
	"testing"
	"time"
)

// startRun runs `worker run` on an embedded NATS server (random port, data in dir) and
// returns its NATS URL and a stop function that fails the test unless it exits 0.
func startRun(t *testing.T, dir string, args ...string) (url string, stop func()) {
	url, _, stop = startRunLogged(t, dir, args...)
	return url, stop
}

// startRunLogged is startRun that also gives the worker's log.
func startRunLogged(t *testing.T, dir string, args ...string) (url string, log *syncBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, append([]string{"run", "--data", dir, "--listen", "127.0.0.1:0", "--tick", "0", "--metrics", ""}, args...), nil, stdout, stderr)
	}()
	urlRE := regexp.MustCompile(`NATS (nats://\S+),`)
	for deadline := time.Now().Add(20 * time.Second); url == ""; {
		if m := urlRE.FindStringSubmatch(stdout.String()); m != nil {
			url = m[1]
		} else if time.Now().After(deadline) {
			cancel()
			t.Fatalf("worker did not start: %s", stderr.String())
		} else {
			time.Sleep(10 * time.Millisecond) // polling interval
		}
	}
	return url, stderr, func() {
		t.Helper()
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("worker run exited %d: %s", code, stderr.String())
		}
	}
}

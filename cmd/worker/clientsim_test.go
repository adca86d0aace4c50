package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
)

// TestClientCustodyFromTheCommandLine runs the flow of docs/client-custody.md: a worker, a
// simulated MLS client that writes its public key, a client-custody pool registered with
// that key, and the simulated delivery service: the pool fills with the client's
// KeyPackages.
func TestClientCustodyFromTheCommandLine(t *testing.T) {
	dir := t.TempDir()
	url, stopWorker := startRun(t, dir)

	keyFile, pubFile := filepath.Join(dir, "carol.key"), filepath.Join(dir, "carol.pub")
	clCtx, clStop := context.WithCancel(context.Background())
	clOut, clErr := newSyncBuffer(), newSyncBuffer()
	clDone := make(chan int, 1)
	go func() {
		clDone <- execute(clCtx, []string{"client", "simulate", "carol", "--identity", "carol@example.org", "--signature-key-file", keyFile,
			"--public-key-out", pubFile, "--nats-url", url}, nil, clOut, clErr)
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := os.Stat(pubFile); err == nil && strings.Contains(clErr.String(), "running") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client simulate did not start: %s", clErr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("client key file: %v", err)
	}

	code, out, errOut := runCLI(t, "", "pool", "register", "carol", "--identity", "carol@example.org", "--custody", "client",
		"--signature-key", pubFile, "--target", "4", "--low-watermark", "1", "--hard-cap", "8", "--nats-url", url)
	var info natsbus.PoolInfo
	if code != exitOK || json.Unmarshal([]byte(out), &info) != nil || info.Custody != events.CustodyClient || !info.Created {
		t.Fatalf("pool register --custody client: %d %s %s", code, out, errOut)
	}
	dsCtx, dsStop := context.WithCancel(context.Background())
	dsDone := make(chan int, 1)
	go func() {
		dsDone <- execute(dsCtx, []string{"ds", "simulate", "--nats-url", url, "--pool", "carol"}, nil, newSyncBuffer(), newSyncBuffer())
	}()
	var st events.Status
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, out, errOut = runCLI(t, "", "pool", "status", "carol", "--nats-url", url)
		if code != exitOK || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("pool status: %d %s %s", code, out, errOut)
		}
		if st.AvailableFresh == 4 && st.LastResortRef != "" && st.Counts.Created == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client pool did not fill: %+v\nclient: %s %s", st, clOut.String(), clErr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Custody != events.CustodyClient || !strings.Contains(clOut.String(), "generated 5 KeyPackages") {
		t.Fatalf("status %+v; client said:\n%s", st, clOut.String())
	}
	// the custody is fixed
	code, _, errOut = runCLI(t, "", "pool", "register", "carol", "--identity", "carol@example.org", "--custody", "kpool", "--nats-url", url)
	if code != exitFailure || !strings.Contains(errOut, "conflict") || !strings.Contains(errOut, "custody client, not kpool") {
		t.Fatalf("custody change: %d %s", code, errOut)
	}
	dsStop()
	clStop()
	if c := <-dsDone; c != exitOK {
		t.Fatalf("ds simulate exit %d", c)
	}
	if c := <-clDone; c != exitOK {
		t.Fatalf("client simulate exit %d: %s", c, clErr.String())
	}
	stopWorker()
	// the offline tools show the client pool, check it and replay it exactly
	code, out, errOut = runCLI(t, "", "db", "inspect", "--data", dir)
	if code != exitOK || !regexp.MustCompile(`carol\s+carol@example.org\s+1\s+client\s`).MatchString(out) {
		t.Fatalf("db inspect: %d %s %s", code, out, errOut)
	}
	for _, args := range [][]string{{"db", "check", "--data", dir}, {"replay", "--verify", "--data", dir}} {
		if code, out, errOut := runCLI(t, "", args...); code != exitOK {
			t.Fatalf("%q: %d %s %s", args, code, out, errOut)
		}
	}
}

func TestClientCustodyUsageErrors(t *testing.T) {
	dead := "nats://127.0.0.1:1"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pool", "register", "p", "--identity", "p", "--custody", "device", "--nats-url", dead}, `--custody "device": use kpool`},
		{[]string{"pool", "register", "p", "--identity", "p", "--signature-key", "k.pub", "--nats-url", dead}, "--signature-key is the client's public key of a --custody client pool"},
		{[]string{"pool", "register", "p", "--identity", "p", "--custody", "client", "--key-out", "k", "--nats-url", dead}, "--key-out: a --custody client pool has no private key"},
		{[]string{"client", "simulate", "p", "--signature-key-file", "k", "--nats-url", dead}, "--identity is required"},
		{[]string{"client", "simulate", "p", "--identity", "p", "--nats-url", dead}, "--signature-key-file is required"},
		{[]string{"client", "simulate", "--identity", "p", "--signature-key-file", "k", "--nats-url", dead}, "give exactly one pool id"},
	} {
		code, out, errOut := runCLI(t, "", tc.args...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/worker"
	"github.com/spf13/pflag"
)

// syncBuffer is a bytes.Buffer safe for the worker's goroutines to write to.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer {
	b := &syncBuffer{mu: make(chan struct{}, 1)}
	b.mu <- struct{}{}
	return b
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	<-b.mu
	defer func() { b.mu <- struct{}{} }()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	<-b.mu
	defer func() { b.mu <- struct{}{} }()
	return b.buf.String()
}

// TestRunAndClientCommands starts `worker run` on an embedded server, then drives it with
// `pool register`, `pool status`, `pool list`, `pool replenish` and `events publish`, and
// stops it as a signal would.
func TestRunAndClientCommands(t *testing.T) {
	dir := t.TempDir()
	// A non-default prefix from the environment, for the worker and every client command.
	t.Setenv("KPOOL_SUBJECT_PREFIX", "acme.kpool")
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"target": 6, "low_watermark": 2, "hard_cap": 12}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"run", "--data", dir, "--listen", "127.0.0.1:0", "--tick", "0", "--metrics", "127.0.0.1:0", "--config", policy}, nil, stdout, stderr)
	}()
	urlRE := regexp.MustCompile(`NATS (nats://\S+),`)
	var url string
	deadline := time.Now().Add(20 * time.Second)
	for url == "" {
		if m := urlRE.FindStringSubmatch(stdout.String()); m != nil {
			url = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("worker did not start: %s", stderr.String())
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !strings.Contains(stderr.String(), "embedded NATS server listening") {
		t.Errorf("the log does not say where NATS listens:\n%s", stderr.String())
	}

	keyFile := filepath.Join(dir, "alice.sig")
	if !strings.Contains(stdout.String(), "subjects acme.kpool.>") {
		t.Fatalf("worker does not use the prefix from the environment: %s", stdout.String())
	}
	// --config gave the defaults; the register flags override them per pool.
	code, out, errOut := runCLI(t, "", "pool", "register", "bob", "--nats-url", url, "--identity", "bob", "--target", "3")
	var info natsbus.PoolInfo
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.Status == nil || info.Status.Target != 3 || info.Status.HardCap != 12 {
		t.Fatalf("pool register bob: %d %s %s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "", "pool", "register", "alice", "--nats-url", url, "--identity", "alice@example.org", "--key-out", keyFile)
	if code != 0 {
		t.Fatalf("pool register: %d %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || !info.Created || info.Status.Target != 6 {
		t.Fatalf("pool register output: %v\n%s", err, out)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(keyFile); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode().Perm())
	}
	if s, err := mls.SignerFromPrivate(1, key); err != nil || !bytes.Equal(s.Public(), info.SignatureKey) {
		t.Fatalf("written key does not match the pool's public key: %v", err)
	}

	// The simulated delivery service fills the pool and claims two KeyPackages.
	dsCtx, dsStop := context.WithCancel(context.Background())
	dsOut, dsErr := newSyncBuffer(), newSyncBuffer()
	dsDone := make(chan int, 1)
	go func() {
		dsDone <- execute(dsCtx, []string{"ds", "simulate", "--nats-url", url, "--claim", "2", "--pool", "alice"}, nil, dsOut, dsErr)
	}()
	var st events.Status
	deadline = time.Now().Add(20 * time.Second)
	for {
		code, out, errOut = runCLI(t, "", "pool", "status", "alice", "--nats-url", url)
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Pool != "alice" || st.Target != 6 {
			t.Fatalf("pool status: %d %s %s", code, out, errOut)
		}
		if st.Counts.Claimed == 2 && st.AvailableFresh == 6 && st.Counts.Created == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not fill: %+v\n%s", st, dsErr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	dsStop()
	if code := <-dsDone; code != 0 || strings.Count(dsOut.String(), "claimed ") != 2 {
		t.Fatalf("ds simulate: exit %d\n%s", code, dsOut.String())
	}
	if code, out, _ = runCLI(t, "", "pool", "list", "--nats-url", url); code != 0 || !strings.Contains(out, "alice") || !strings.Contains(out, "bob") {
		t.Fatalf("pool list: %d %s", code, out)
	}
	if code, _, errOut = runCLI(t, "", "pool", "replenish", "alice", "--nats-url", url); code != 0 {
		t.Fatalf("pool replenish: %s", errOut)
	}
	if code, _, errOut = runCLI(t, "", "pool", "status", "carol", "--nats-url", url); code != 1 || !strings.Contains(errOut, "unknown_pool") {
		t.Fatalf("status of an unknown pool: %d %s", code, errOut)
	}
	// --watch refuses an unknown pool up front instead of waiting for it forever.
	if code, _, errOut = runCLI(t, "", "pool", "status", "carol", "--watch", "--nats-url", url); code != exitFailure || !strings.Contains(errOut, "unknown_pool") {
		t.Fatalf("--watch of an unknown pool: %d %s", code, errOut)
	}
	if code, _, errOut = runCLI(t, "", "pool", "status", "bad!pool", "--nats-url", url); code != exitUsage || !strings.Contains(errOut, "A-Z a-z 0-9 _ -") {
		t.Fatalf("bad pool id: %d %s", code, errOut)
	}

	// events publish: flags, positional type, raw JSON; invalid events are refused locally.
	ref := strings.Repeat("ab", 32)
	code, out, errOut = runCLI(t, "", "events", "publish", "upload_ack", "--pool", "alice", "--ref", ref, "--id", "cli-1", "--nats-url", url)
	if code != 0 || !strings.Contains(out, `"id": "cli-1"`) || !strings.Contains(errOut, "asynchronously") {
		t.Fatalf("events publish: %d %s %s", code, out, errOut)
	}
	// --wait follows the event to the worker's verdict: applied (exit 0, the transition),
	// refused by the state machine, or dead-lettered (exit 1).
	free := unclaimedRef(t, dsOut.String())
	code, out, errOut = runCLI(t, "", "events", "publish", "claimed", "--pool", "alice", "--ref", free, "--wait", "--nats-url", url)
	if code != exitOK || !strings.Contains(out, `"to": "claimed"`) {
		t.Fatalf("publish --wait: %d %s %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "", "events", "publish", "upload_ack", "--pool", "alice", "--ref", free, "--wait", "--nats-url", url)
	if code != exitFailure || !strings.Contains(errOut, "refused") || !strings.Contains(errOut, "claimed") {
		t.Fatalf("publish --wait of an invalid transition: %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "events", "publish", "upload_ack", "--pool", "nosuch", "--ref", ref, "--wait", "--nats-url", url)
	if code != exitFailure || !strings.Contains(errOut, "refused (dead letter unknown_pool)") {
		t.Fatalf("publish --wait to an unknown pool: %d %s", code, errOut)
	}
	if code, _, errOut = runCLI(t, "", "events", "publish", "--json", `{"id":"cli-2","type":"expiry_tick","time":"2020-01-01T00:00:00Z"}`, "--nats-url", url); code != 0 {
		t.Fatalf("events publish --json: %s", errOut)
	}
	if code, _, errOut = runCLI(t, "", "events", "publish", "claimed", "--pool", "alice", "--ref", "XYZ", "--nats-url", url); code != exitUsage || !strings.Contains(errOut, "lowercase hex") {
		t.Fatalf("invalid event: %d %s", code, errOut)
	}
	if code, _, errOut = runCLI(t, "", "events", "publish", "generated", "--pool", "alice", "--nats-url", url); code != exitUsage || !strings.Contains(errOut, `"generated" is not a type other services publish`) {
		t.Fatalf("internal type published: %d %s", code, errOut)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("worker run exited %d: %s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker run did not stop")
	}
	if !strings.Contains(stderr.String(), "worker stopped") {
		t.Fatalf("no clean stop in the log:\n%s", stderr.String())
	}
}

// unclaimedRef picks a regular KeyPackage that ds simulate acknowledged and did not claim.
func unclaimedRef(t *testing.T, dsOut string) string {
	t.Helper()
	claimed := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^claimed alice ([0-9a-f]+)$`).FindAllStringSubmatch(dsOut, -1) {
		claimed[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`stored and acked alice ([0-9a-f]+) \(last_resort=false`).FindAllStringSubmatch(dsOut, -1) {
		if !claimed[m[1]] {
			return m[1]
		}
	}
	t.Fatalf("no unclaimed KeyPackage in the ds simulate output:\n%s", dsOut)
	return ""
}

func TestRunFlagErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(bad, []byte(`{"target": 50, "hard_cap": 10}`), 0o600); err != nil {
		t.Fatal(err)
	}
	typo := filepath.Join(dir, "typo.json")
	if err := os.WriteFile(typo, []byte(`{"targt": 50}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--tick", "soon"}, nil, `--tick "soon"`},
		{nil, map[string]string{"KPOOL_TICK": "-1s"}, "negative"},
		{[]string{"--creds", "x.creds"}, nil, "need --nats-url"},
		{[]string{"--tls-cert", "c.pem", "--nats-url", "nats://127.0.0.1:1"}, nil, "--tls-cert and --tls-key go together"},
		{[]string{"--config", bad}, nil, "invalid pool config"},
		{[]string{"--config", typo}, nil, "unknown field"},
		{[]string{"--subject-prefix", "a.>"}, nil, "wildcards"},
		{[]string{"--log-level", "loud"}, nil, "--log-level"},
		{nil, map[string]string{"KPOOL_REPLICAS": "three"}, `--replicas "three"`},
		{[]string{"--journal-retention", "a while"}, nil, `--journal-retention: invalid duration: "a while" is not a duration`},
		{[]string{"--nats-url", "nats://127.0.0.1:1", "--start-timeout", "300ms"}, nil, "connect to NATS at nats://127.0.0.1:1 (tried for 300ms)"},
		{[]string{"--start-timeout", "0s"}, nil, `--start-timeout "0s"`},
		{[]string{"--cluster", "--partitions", "0"}, nil, "--partitions 0: use 1 to 1024"},
		{[]string{"--cluster", "--worker-id", "a b"}, nil, `worker id "a b"`},
		{[]string{"--cluster", "--lease-ttl", "soon"}, nil, `--lease-ttl "soon"`},
		{[]string{"--cluster", "--lease-ttl", "100ms"}, nil, "lease TTL 100ms is under 1s"},
		{[]string{"--cluster", "--snapshot-every", "0s"}, nil, `--snapshot-every "0s"`},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		var out, errb bytes.Buffer
		code := execute(context.Background(), append([]string{"run", "--data", t.TempDir(), "--listen", "127.0.0.1:0"}, tc.args...), nil, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v %v: exit %d, stderr %q, want it to mention %q", tc.args, tc.env, code, errb.String(), tc.want)
		}
		if strings.Contains(errb.String(), "worker stopped") {
			t.Errorf("%v %v: a run that never started logs a stop:\n%s", tc.args, tc.env, errb.String())
		}
		for k := range tc.env {
			os.Unsetenv(k)
		}
	}
}

// TestPasswordNotInUsage: KPOOL_PASSWORD is used, but the help never shows it as a default.
func TestPasswordNotInUsage(t *testing.T) {
	t.Setenv("KPOOL_PASSWORD", "hunter2-secret")
	for _, args := range [][]string{{"run", "--help"}, {"pool", "list", "--help"}} {
		code, out, _ := runCLI(t, "", args...)
		if code != exitOK || !strings.Contains(out, "KPOOL_PASSWORD") {
			t.Fatalf("%v: exit %d, want 0 and the help:\n%s", args, code, out)
		}
		if strings.Contains(out, "hunter2") {
			t.Errorf("%v: the help shows the password:\n%s", args, out)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "hunter2-secret"},
		{[]string{"--password", "given"}, "given"},
	} {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		var cf connFlags
		cf.register(fs, "")
		if err := fs.Parse(tc.args); err != nil || cf.password != tc.want {
			t.Errorf("%v: password %q, err %v; want %q", tc.args, cf.password, err, tc.want)
		}
	}
}

// TestRunBusyPortWritesNothing: a worker whose port is taken fails at once, says why, and
// leaves a new data directory as it found it (no kpool.db, no kpool.key).
func TestRunBusyPortWritesNothing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := filepath.Join(t.TempDir(), "new")
	code, _, errOut := runCLI(t, "", "run", "--data", data, "--listen", ln.Addr().String())
	if code != exitFailure || !strings.Contains(errOut, "--listen "+ln.Addr().String()) || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if strings.Contains(errOut, "worker stopped") {
		t.Errorf("a run that never started logs a stop:\n%s", errOut)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(data)
		t.Fatalf("the failed start created %s: %v", data, entries)
	}
}

// TestRunInterruptedDuringStartup: a signal that arrives while the worker starts is acted
// on: it is logged at once, start-up is abandoned or undone, and the exit status is 0.
func TestRunInterruptedDuringStartup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	code := execute(ctx, []string{"run", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--tick", "0"}, nil, &out, &errb)
	if code != exitOK || !strings.Contains(errb.String(), "stopping: interrupted during start-up") || strings.Contains(out.String(), "worker running") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out.String(), errb.String())
	}
}

// TestRunInterruptedWhileNATSUnreachable: a signal while start-up waits for --nats-url
// ends the wait at once (it used to go on for all of --start-timeout).
func TestRunInterruptedWhileNATSUnreachable(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"run", "--data", t.TempDir(), "--nats-url", "nats://127.0.0.1:1", "--start-timeout", "1h"}, nil, stdout, stderr)
	}()
	waitFor(t, "retry line", stderr, "NATS not reachable yet; retrying")
	cancel()
	select {
	case code := <-done:
		if code != exitOK || !strings.Contains(stderr.String(), "stopping: interrupted during start-up") {
			t.Fatalf("exit %d:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("start-up still waiting for NATS 30s after the interrupt (--start-timeout 1h):\n%s", stderr.String())
	}
}

// --journal-retention: its default is the events stream's 30 days, and 0 means keep
// everything (worker.KeepJournal; the worker Config's own 0 is the default).
func TestRunJournalRetentionFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		want time.Duration
	}{
		{nil, "", 30 * 24 * time.Hour},
		{[]string{"--journal-retention", "0"}, "", worker.KeepJournal},
		{[]string{"--journal-retention", "7d"}, "", 7 * 24 * time.Hour},
		{nil, "12h", 12 * time.Hour},
	} {
		if tc.env != "" {
			t.Setenv("KPOOL_JOURNAL_RETENTION", tc.env)
		}
		var o runOptions
		if err := runCmdFor(&o).Flags().Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := o.workerConfig(io.Discard)
		if err != nil || cfg.JournalRetention != tc.want {
			t.Errorf("%v (env %q): retention %v, %v; want %v", tc.args, tc.env, cfg.JournalRetention, err, tc.want)
		}
		os.Unsetenv("KPOOL_JOURNAL_RETENTION")
	}
}

// TestRunCluster: `worker run --cluster` on the embedded server is a cluster of one: it
// owns every partition, and the client commands work through them unchanged.
func TestRunCluster(t *testing.T) {
	url, log, stop := startRunLogged(t, t.TempDir(), "--cluster", "--partitions", "4", "--worker-id", "solo")
	defer stop()
	for deadline := time.Now().Add(20 * time.Second); strings.Count(log.String(), "partition taken") < 4; {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not take its 4 partitions:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	if !strings.Contains(log.String(), "cluster mode") || !strings.Contains(log.String(), "worker=solo") {
		t.Fatalf("the log does not say cluster mode and the worker id:\n%s", log.String())
	}
	for _, p := range []string{"alice", "bob", "carol"} {
		if code, out, errOut := runCLI(t, "", "pool", "register", p, "--nats-url", url, "--identity", p); code != 0 {
			t.Fatalf("pool register %s: %d %s %s", p, code, out, errOut)
		}
	}
	code, out, errOut := runCLI(t, "", "pool", "list", "--nats-url", url)
	if code != 0 || !strings.Contains(out, "alice") || !strings.Contains(out, "bob") || !strings.Contains(out, "carol") {
		t.Fatalf("pool list: %d %s %s", code, out, errOut)
	}
}

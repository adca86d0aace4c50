package main

import (
	"bytes"
	"context"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
)

// runCLI runs one command line in-process, as main would, with stdin given.
func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = execute(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// commandPaths lists every command of the tree, e.g. "pool register".
func commandPaths(c *cobra.Command) []string {
	var out []string
	for _, sub := range c.Commands() {
		p := strings.TrimPrefix(sub.CommandPath(), "worker ")
		out = append(out, p)
		out = append(out, commandPaths(sub)...)
	}
	return out
}

// TestHelpOnStdout: --help, -h and `worker help CMD` print that command's help on stdout
// and exit 0, for every command.
func TestHelpOnStdout(t *testing.T) {
	paths := commandPaths(newRoot())
	if len(paths) < 20 {
		t.Fatalf("only %d commands found: %v", len(paths), paths)
	}
	for _, p := range append(paths, "") {
		words := strings.Fields(p)
		for _, args := range [][]string{append(words, "--help"), append(words, "-h"), append([]string{"help"}, words...)} {
			code, out, errOut := runCLI(t, "", args...)
			if code != exitOK || errOut != "" || !strings.Contains(out, "Usage:") || !strings.Contains(out, "worker "+p) {
				t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
			}
		}
	}
	// Each command's own help, not the root's.
	_, out, _ := runCLI(t, "", "help", "pool", "register")
	if !strings.Contains(out, "--identity") || !strings.Contains(out, "worker pool register POOL") {
		t.Errorf("help pool register:\n%s", out)
	}
	// A group without a subcommand lists its subcommands.
	if code, out, _ := runCLI(t, "", "ds"); code != exitOK || !strings.Contains(out, "simulate") {
		t.Errorf("worker ds: exit %d\n%s", code, out)
	}
}

// TestUsageErrors: every mistake on the command line exits 2 with the reason and where to
// find the help, on stderr, and prints nothing on stdout.
func TestUsageErrors(t *testing.T) {
	dead := "nats://127.0.0.1:1" // nothing listens: a usage error must be found before dialling
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"pool", "regster"}, `unknown command "regster" (did you mean "register"?)`},
		{[]string{"help", "pool", "bogus"}, `unknown help topic "pool bogus"`},
		{[]string{"pool", "list", "--nope"}, "unknown flag: --nope"},
		{[]string{"pool", "list", "extra", "--nats-url", dead}, `unexpected argument "extra"`},
		{[]string{"pool", "status", "--nats-url", dead}, "give exactly one pool id (got 0 arguments)"},
		{[]string{"pool", "register", "bad!pool", "--nats-url", dead}, "A-Z a-z 0-9 _ -"},
		{[]string{"pool", "register", "p", "--target", "ten", "--nats-url", dead}, `invalid argument "ten" for "--target"`},
		{[]string{"events", "tail", "bogus", "--nats-url", dead}, `unknown kind "bogus" (kinds: status, upload, withdraw, transition, alert, deadletter)`},
		{[]string{"events", "tail", "alerts", "--nats-url", dead}, `unknown kind "alerts"`},
		{[]string{"events", "publish", "replenish", "--pool", "p", "--wait", "--nats-url", dead}, "--wait follows events that name a KeyPackage"},
		{[]string{"events", "publish", "claimed", "--time", "noon", "--nats-url", dead}, `--time "noon"`},
		{[]string{"events", "publish", "claimed", "--pool", "p", "--ref", "XYZ", "--nats-url", dead}, "ref: must be lowercase hex"},
		{[]string{"events", "publish", "generated", "--pool", "p", "--nats-url", dead}, `"generated" is not a type other services publish`},
		{[]string{"ds", "simulate", "--pool", "a.b", "--nats-url", dead}, "--pool"},
		{[]string{"run", "--tick", "soon"}, `--tick "soon"`},
		{[]string{"db", "compact", "--replace", "--out", "/tmp/elsewhere"}, "--replace needs --out in the data directory"},
		{[]string{"keypackage", "inspect", "--format", "base32"}, `--format "base32": hex or base64`},
		{[]string{"replay", "--progress", "loud", "x.ndjson"}, `--progress "loud"`},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	} {
		code, out, errOut := runCLI(t, "", tc.args...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

// TestClientCommandsWithoutWorker: every command that talks to the worker says why it
// cannot, with the hint, and exits 1 — whether NATS is down or up without a worker.
func TestClientCommandsWithoutWorker(t *testing.T) {
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	ref := strings.Repeat("ab", 32)
	commands := [][]string{
		{"pool", "list"},
		{"pool", "status", "alice"},
		{"pool", "status", "alice", "--watch"},
		{"pool", "register", "alice", "--identity", "alice"},
		{"pool", "replenish", "alice"},
		{"events", "publish", "upload_ack", "--pool", "alice", "--ref", ref, "--timeout", "2s"},
		{"events", "tail"},
		{"ds", "simulate"},
		{"log", "export", "--stream"},
	}
	for _, server := range []struct{ url, want string }{
		{"nats://127.0.0.1:1", "connect to NATS at nats://127.0.0.1:1"},
		{ns.ClientURL(), ""},
	} {
		for _, args := range commands {
			if server.want == "" && (args[1] == "tail") {
				continue // tail needs NATS only: it runs until Ctrl-C
			}
			code, _, errOut := runCLI(t, "", append(args, "--nats-url", server.url)...)
			if code != exitFailure || !strings.Contains(errOut, server.want) || !strings.Contains(errOut, "is the worker running? `make run`") {
				t.Errorf("%q on %s: exit %d, stderr %q", args, server.url, code, errOut)
			}
		}
	}
}

// TestCompletion: the completion scripts docs/operations.md promises are printed.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, errOut := runCLI(t, "", "completion", shell)
		if code != exitOK || errOut != "" || !strings.Contains(out, "worker") || !strings.Contains(strings.ToLower(out), shell) {
			t.Errorf("completion %s: exit %d, stderr %q, %d bytes", shell, code, errOut, len(out))
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "", "version")
	if code != exitOK || !strings.HasPrefix(out, "worker ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("exit %d: %q", code, out)
	}
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0be1f9e0"}, {Key: "vcs.time", Value: "2026-11-30T05:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := describeBuild(bi), "v1.2.3, revision 0be1f9e0 (modified) 2026-11-30T05:00:00Z, go1.26.8"; got != want {
		t.Errorf("describeBuild = %q, want %q", got, want)
	}
	bi = &debug.BuildInfo{GoVersion: "go1.26.8"}
	if got := describeBuild(bi); !strings.HasPrefix(got, "(devel), no VCS revision") {
		t.Errorf("describeBuild without settings = %q", got)
	}
}

// waitFor polls s until it contains want, or fails after a deadline.
func waitFor(t *testing.T, what string, s interface{ String() string }, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within 20s in:\n%s", what, want, s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restartableNATS is an embedded NATS server that stops and starts again on the same
// address and JetStream store, for the clients' reconnect lines.
type restartableNATS struct {
	url, store string
	ns         *server.Server
}

func startRestartableNATS(t *testing.T) *restartableNATS {
	r := &restartableNATS{url: "nats://127.0.0.1:0", store: t.TempDir()}
	r.start(t)
	r.url = r.ns.ClientURL()
	t.Cleanup(r.stop)
	return r
}

func (r *restartableNATS) start(t *testing.T) {
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: strings.TrimPrefix(r.url, "nats://"), StoreDir: r.store})
	if err != nil {
		t.Fatal(err)
	}
	r.ns = ns
}

func (r *restartableNATS) stop() {
	r.ns.Shutdown()
	r.ns.WaitForShutdown()
}

// TestTailBannerAndReconnect: events tail says what it follows, prints each message, and
// says when NATS goes away and when it is back (then goes on printing).
func TestTailBannerAndReconnect(t *testing.T) {
	ns := startRestartableNATS(t)
	url := ns.url
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"events", "tail", "alert", "deadletter", "--pool", "alice", "--nats-url", url}, nil, stdout, stderr)
	}()
	waitFor(t, "banner", stderr, "tailing kpool.alerts.alice, kpool.deadletter at "+url)

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("kpool.alerts.alice", []byte(`{"kind":"low"}`)); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	waitFor(t, "message", stdout, `kpool.alerts.alice {"kind":"low"}`)

	ns.stop()
	waitFor(t, "disconnect line", stderr, "lost the connection to NATS")
	ns.start(t)
	waitFor(t, "reconnect line", stderr, "reconnected to NATS at "+url)
	nc, err = nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The subscription is restored after the reconnect; publish until it shows.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stdout.String(), "kpool.deadletter") {
		if time.Now().After(deadline) {
			t.Fatalf("nothing printed after the reconnect:\n%s", stdout.String())
		}
		_ = nc.Publish("kpool.deadletter", []byte(`{"code":"x"}`))
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK || strings.Count(stderr.String(), "lost the connection") != 1 {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
}

// TestFollowersReconnect: pool status --watch and ds simulate, like events tail, say when
// NATS goes away and when it is back, and go on working after it (here the NATS server
// the worker and the clients share restarts on the same port and store).
func TestFollowersReconnect(t *testing.T) {
	ns := startRestartableNATS(t)
	url := ns.url
	w, err := worker.Start(context.Background(), worker.Config{DataDir: t.TempDir(), NATSURL: url, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if code, _, errOut := runCLI(t, "", "pool", "register", "alice", "--identity", "alice", "--target", "2", "--low-watermark", "2", "--hard-cap", "4", "--nats-url", url); code != exitOK {
		t.Fatalf("register: %s", errOut)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchOut, watchErr, dsOut, dsErr := newSyncBuffer(), newSyncBuffer(), newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 2)
	go func() {
		done <- execute(ctx, []string{"pool", "status", "alice", "--watch", "--nats-url", url}, nil, watchOut, watchErr)
	}()
	go func() { done <- execute(ctx, []string{"ds", "simulate", "--nats-url", url}, nil, dsOut, dsErr) }()
	waitFor(t, "watch", watchOut, `"pool":"alice"`)
	waitFor(t, "ds simulate", dsOut, "stored and acked alice")

	ns.stop()
	waitFor(t, "watch disconnect line", watchErr, "lost the connection to NATS")
	waitFor(t, "ds disconnect line", dsErr, "lost the connection to NATS")
	ns.start(t)
	waitFor(t, "watch reconnect line", watchErr, "reconnected to NATS at "+url)
	waitFor(t, "ds reconnect line", dsErr, "reconnected to NATS at "+url)

	// Both still work: a claim is seen by the watch, and the refill it causes is acked.
	acked := strings.Count(dsOut.String(), "stored and acked")
	ref := unclaimedRef(t, dsOut.String())
	if code, _, errOut := runCLI(t, "", "events", "publish", "claimed", "--pool", "alice", "--ref", ref, "--wait", "--nats-url", url); code != exitOK {
		t.Fatalf("claim after the restart: %s", errOut)
	}
	waitFor(t, "watch after the restart", watchOut, `"claimed":1`)
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(dsOut.String(), "stored and acked") == acked {
		if time.Now().After(deadline) {
			t.Fatalf("ds simulate acked nothing after the restart:\n%s\n%s", dsOut.String(), dsErr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	for range 2 {
		if code := <-done; code != exitOK {
			t.Fatalf("exit %d:\n%s\n%s", code, watchErr.String(), dsErr.String())
		}
	}
}

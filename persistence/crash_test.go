package persistence

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// The crash test runs the commit loop in a child process (this test binary re-executed
// with crashChildEnv set), kills it with SIGKILL at many points, restarts it with the
// inputs not yet confirmed (as a broker redelivers unacked messages), and finally checks
// the database. The child prints one line per confirmed input after Submit returned.

const (
	crashChildEnv = "KPOOL_PERSISTENCE_CRASH_CHILD"
	crashInputs   = 3000
	crashKills    = 120
	crashPools    = 16
	crashGroup    = 64 // inputs per transaction at most
)

// crashStream is input i of a deterministic stream: pools registered first, then
// KeyPackages generated, acknowledged 20 inputs later (every 7th never, so it expires),
// every 5th claimed 30 inputs later, every 3rd consumed 40 inputs later (its bundle revealed), and a tick every 50. The
// never-acknowledged ones time out, are re-uploaded and finally given up on.
func crashStream() []Input {
	var out []Input
	var shift time.Duration
	at := func() time.Time { return t0.Add(shift + time.Duration(len(out))*10*time.Second) }
	pl := func(j int) string { return fmt.Sprintf("pool-%02d", j%crashPools) }
	for p := range crashPools {
		in := regInput(fmt.Sprintf("reg-%d", p), pl(p))
		in.Event.Time = at()
		out = append(out, in)
	}
	for j := 0; len(out) < crashInputs; j++ {
		out = append(out, genInput(fmt.Sprintf("gen-%d", j), pl(j), refOf(j), at()))
		if k := j - 20; k >= 0 && k%7 != 0 {
			out = append(out, Input{Event: evRef(fmt.Sprintf("ack-%d", k), events.TypeUploadAck, pl(k), refOf(k), at())})
		}
		if k := j - 30; k >= 0 && k%7 != 0 && k%5 == 0 {
			out = append(out, Input{Event: evRef(fmt.Sprintf("claim-%d", k), events.TypeClaimed, pl(k), refOf(k), at())})
		}
		if k := j - 40; k >= 0 && k%7 != 0 && k%3 == 0 {
			out = append(out, Input{Event: evRef(fmt.Sprintf("take-%d", k), events.TypeConsumed, pl(k), refOf(k), at()), Reveal: refOf(k)})
		}
		if j%50 == 0 {
			out = append(out, Input{Event: evTick(fmt.Sprintf("tick-%d", j), at())})
		}
		// Jumps in time: the first expires what exists, the second deletes the expired
		// ones (past not_after + grace) and purges the tombstones of the takes.
		if j == 450 || j == 900 {
			shift += map[int]time.Duration{450: 78 * 24 * time.Hour, 900: 40 * 24 * time.Hour}[j]
			out = append(out, Input{Event: evTick(fmt.Sprintf("jump-%d", j), at())})
		}
	}
	return out[:crashInputs]
}

func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("helper process for TestCrashRecovery")
	}
	os.Exit(crashChild(dir))
}

func crashChild(dir string) int {
	say := func(f string, a ...any) { fmt.Fprintf(os.Stdout, f+"\n", a...) }
	s, err := Open(filepath.Join(dir, "kpool.db"), Options{KeyFile: filepath.Join(dir, "kpool.key"), Timeout: 10 * time.Second})
	if err != nil {
		say("fatal open: %v", err)
		return 1
	}
	for _, p := range storeProblems(s) {
		say("bad %s", p)
	}
	c := newCommitter(s, (&pool.Core{}).Step) // holds the acks of the relay below
	// Start-up: publish what the previous run left in the outbox, same ids.
	publish := func() int {
		var ids []string
		s.Outbox(func(o events.Outbound) error { ids = append(ids, o.ID); return nil })
		for _, id := range ids {
			say("pub %s", id)
		}
		c.Ack(ids...)
		return len(ids)
	}
	say("ready %d", publish())

	data, err := os.ReadFile(filepath.Join(dir, "pending"))
	if err != nil {
		say("fatal pending: %v", err)
		return 1
	}
	stream := crashStream()
	todo := make(chan int)
	go func() {
		for _, f := range strings.Fields(string(data)) {
			i, _ := strconv.Atoi(f)
			todo <- i
		}
		close(todo)
	}()
	kick := make(chan struct{}, 1)
	pubDone := make(chan struct{})
	go func() { // the relay: publish after commits, ack in the next batch
		defer close(pubDone)
		for range kick {
			publish()
		}
	}()
	// The writer: groups of queued inputs share one transaction, as in the worker; the
	// outcomes are printed after the commit, so a kill can land between the two.
	step := (&pool.Core{}).Step
	for i := range todo {
		group := []int{i}
	more:
		for len(group) < crashGroup {
			select {
			case j, ok := <-todo:
				if !ok {
					break more
				}
				group = append(group, j)
			default:
				break more
			}
		}
		b, err := s.Begin(false)
		if err != nil {
			say("fatal begin: %v", err)
			return 1
		}
		results := make([]Result, len(group))
		for k, j := range group {
			if results[k], err = b.Apply(step, stream[j]); err != nil {
				say("fatal apply %d: %v", j, err)
				return 1
			}
		}
		if err := errors.Join(b.AckOutbox(c.takeAcks()), b.Commit()); err != nil {
			say("fatal commit: %v", err)
			return 1
		}
		for k, j := range group {
			res := results[k]
			if res.Err != nil {
				var rej *pool.RejectError
				code := "other"
				if errors.As(res.Err, &rej) {
					code = rej.Code
				}
				say("rej %d %s", j, code)
			} else {
				say("ok %d %d %t", j, res.Ready.Seq, res.Ready.Duplicate)
			}
		}
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	close(kick)
	<-pubDone
	publish()
	c.Close() // flushes the acks
	n := 0
	s.Outbox(func(events.Outbound) error { n++; return nil })
	if err := s.Close(); err != nil {
		say("fatal close: %v", err)
		return 1
	}
	say("done %d", n)
	return 0
}

type crashState struct {
	status    map[int]string // input index → "ok" or a rejection code
	seqOf     map[int]uint64
	published map[string]bool
	resends   int
	dups      int
	restarts  int
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: a few hundred child processes")
	}
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	stream := crashStream()
	st := &crashState{status: map[int]string{}, seqOf: map[int]uint64{}, published: map[string]bool{}}
	rng := rand.New(rand.NewPCG(1, 2))
	kills := 0
	for kills < crashKills {
		if len(st.status) == len(stream) {
			t.Fatalf("stream finished after %d kills; want %d: lower the kill offsets", kills, crashKills)
		}
		// Kill after 0..30 confirmed inputs: 0 lands during start-up and re-send.
		after := rng.IntN(31)
		if crashRun(t, dir, st, after) {
			t.Fatal("child finished before its kill point")
		}
		kills++
	}
	for len(st.status) < len(stream) {
		if !crashRun(t, dir, st, -1) {
			t.Fatal("final run did not finish")
		}
	}
	crashRun(t, dir, st, -1) // nothing pending: drains the outbox once more
	t.Logf("%d kills, %d restarts, %d messages re-sent at start-up, %d inputs committed but unconfirmed when killed",
		kills, st.restarts, st.resends, st.dups)
	if st.dups == 0 {
		t.Error("no kill landed between a commit and its confirmation: redelivery dedup was not exercised")
	}
	if st.resends == 0 {
		t.Error("no restart found messages to re-send: the outbox path was not exercised")
	}

	s, err := Open(filepath.Join(dir, "kpool.db"), Options{KeyFile: filepath.Join(dir, "kpool.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, p := range storeProblems(s) {
		t.Error(p)
	}
	journal := map[string]uint64{}
	s.Journal(0, 0, func(seq uint64, ev events.Event) error { journal[ev.ID] = seq; return nil })
	accepted := 0
	for i, in := range stream {
		seq, in_ := journal[in.Event.ID]
		switch st.status[i] {
		case "ok":
			accepted++
			if !in_ {
				t.Errorf("input %d (%s) confirmed but not in the journal", i, in.Event.ID)
			} else if want := st.seqOf[i]; want != 0 && want != seq {
				t.Errorf("input %d confirmed at seq %d, journal has %d", i, want, seq)
			}
		default:
			if in_ {
				t.Errorf("input %d (%s) rejected (%s) but journaled", i, in.Event.ID, st.status[i])
			}
		}
	}
	codes := map[string]int{}
	for _, c := range st.status {
		codes[c]++
	}
	var total events.Counts
	for _, p := range mustPools(t, s) {
		total.Created += p.Counts.Created
		total.Available += p.Counts.Available
		total.Claimed += p.Counts.Claimed
		total.Expired += p.Counts.Expired
		total.Deleted += p.Counts.Deleted
	}
	t.Logf("outcomes %v; final counts %+v", codes, total)
	if accepted < len(stream)*9/10 {
		t.Errorf("only %d of %d inputs accepted: the stream does not exercise the store", accepted, len(stream))
	}
	// Replaying the journal through the core gives the stored records exactly, and
	// every message an accepted input produced was published at least once.
	mem, produced := replayJournal(t, s)
	pools, _ := s.Pools()
	if len(pools) != len(mem.Pools()) {
		t.Errorf("%d pools stored, replay has %d", len(pools), len(mem.Pools()))
	}
	for _, p := range pools {
		want, _, _ := mem.Pool(p.ID)
		if a, b := jsonOf(p), jsonOf(want); a != b {
			t.Errorf("pool %s differs from replay:\n%s\n%s", p.ID, a, b)
		}
		for _, k := range mem.KeyPackages(p.ID) {
			got, ok, _ := s.KeyPackage(k.Ref)
			if a, b := jsonOf(got), jsonOf(k); !ok || a != b {
				t.Errorf("KeyPackage %s differs from replay:\n%s\n%s", k.Ref, a, b)
			}
		}
	}
	missing := 0
	for _, id := range produced {
		if !st.published[id] {
			missing++
		}
	}
	if missing > 0 || len(produced) == 0 {
		t.Errorf("%d of %d outbox messages never published", missing, len(produced))
	}
	var left int
	s.Outbox(func(events.Outbound) error { left++; return nil })
	if left != 0 {
		t.Errorf("%d outbox entries left after the final run acked everything", left)
	}
}

// crashRun starts a child with the unconfirmed inputs, SIGKILLs it after `after`
// confirmations (never when after < 0), and records what it confirmed. It reports
// whether the child finished by itself.
func crashRun(t *testing.T, dir string, st *crashState, after int) bool {
	t.Helper()
	var pending []string
	for i := range crashInputs {
		if _, done := st.status[i]; !done {
			pending = append(pending, strconv.Itoa(i))
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "pending"), []byte(strings.Join(pending, " ")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st.restarts++
	r := bufio.NewReader(out)
	confirmed, finished, killed := 0, false, false
	kill := func() {
		if !killed {
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break // EOF; a partial last line was cut by the kill
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "ready":
			n, _ := strconv.Atoi(f[1])
			st.resends += n
			if after == 0 {
				kill()
			}
		case "pub":
			st.published[f[1]] = true
		case "ok", "rej":
			i, _ := strconv.Atoi(f[1])
			// A line printed before the kill landed still confirms its input.
			if f[0] == "ok" {
				st.status[i] = "ok"
				if seq, _ := strconv.ParseUint(f[2], 10, 64); f[3] == "false" {
					st.seqOf[i] = seq
				} else {
					st.dups++ // committed by a killed run that never confirmed it
				}
			} else {
				st.status[i] = f[2]
			}
			confirmed++
			if after > 0 && confirmed >= after {
				kill()
			}
		case "done":
			finished = true
			if n, _ := strconv.Atoi(f[1]); n != 0 {
				t.Errorf("child exited with %d outbox entries after acking all", n)
			}
		case "bad", "fatal", "err":
			t.Errorf("child: %s", strings.TrimSpace(line))
		}
	}
	werr := cmd.Wait()
	if !killed && werr != nil {
		t.Fatalf("child failed: %v", werr)
	}
	return finished
}

// replayJournal steps the stored journal through the core into a MemStore and returns
// it with the ids of every outbox message the steps produced.
func replayJournal(t *testing.T, s *Store) (*pool.MemStore, []string) {
	t.Helper()
	mem, core := pool.NewMemStore(), &pool.Core{}
	var ids []string
	err := s.Journal(0, 0, func(seq uint64, ev events.Event) error {
		r, err := core.Step(mem, ev)
		if err != nil || r.Seq != seq {
			return fmt.Errorf("replay of %d (%s): seq %d, %v", seq, ev.ID, r.Seq, err)
		}
		mem.Apply(r)
		for _, o := range r.Outbox {
			ids = append(ids, o.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.CheckInvariants(mem); err != nil {
		t.Fatalf("replayed state: %v", err)
	}
	return mem, ids
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func mustPools(t *testing.T, s *Store) []pool.Pool {
	t.Helper()
	ps, err := s.Pools()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

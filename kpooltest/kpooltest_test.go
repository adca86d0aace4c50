package kpooltest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/replay"
)

const goldenDir = "../testdata/replay"

func readState(t *testing.T, path string) *replay.State {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := replay.ReadState(f)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// The golden logs, replayed over NATS into a deterministic worker, end in exactly the
// golden state files that `worker replay` checks: the same refs, records and counters.
func TestGoldenLogsOverNATS(t *testing.T) {
	for _, name := range []string{"normal-day", "exhaustion-last-resort", "expiry-wave", "duplicates-out-of-order", "bad-lines"} {
		t.Run(name, func(t *testing.T) {
			env := Start(t, Options{Deterministic: true})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := env.ReplayFile(ctx, filepath.Join(goldenDir, name+".ndjson"), ReplayOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Generated == 0 || res.Registered == 0 {
				t.Fatalf("result %+v", res)
			}
			if name == "bad-lines" && len(res.BadLines) != 8 {
				t.Fatalf("bad lines %q", res.BadLines)
			}
			got, err := env.State()
			if err != nil {
				t.Fatal(err)
			}
			diff, err := replay.Diff(readState(t, filepath.Join(goldenDir, name+".state.json")), got)
			if err != nil || len(diff) != 0 {
				t.Fatalf("state over NATS differs from the golden state (%v):\n%s", err, strings.Join(diff, "\n"))
			}
		})
	}
}

// A log recorded from a live run (this worker's journal) replays, in memory, to the
// worker's stored state; a different seed diverges at the first generated line.
func TestLiveJournalReplays(t *testing.T) {
	env := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.Client.RegisterSealed(ctx, "live", natsbus.RegisterRequest{
		Identity: "live@example.org", CipherSuite: 1, Policy: events.Policy{Target: new(5), LowWatermark: new(2), HardCap: new(10)}}); err != nil {
		t.Fatal(err)
	}
	ackAll := func() {
		t.Helper()
		if err := env.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		var refs []string
		env.Worker.Store().KeyPackages("live", func(kp pool.KeyPackage) bool {
			if kp.State == "created" {
				refs = append(refs, kp.Ref)
			}
			return true
		})
		for _, ref := range refs {
			if err := env.Client.UploadAck(ctx, "live", ref); err != nil {
				t.Fatal(err)
			}
		}
	}
	ackAll()
	st, err := env.WaitStatus(ctx, "live", func(s events.Status) bool { return s.Counts.Available == 6 })
	if err != nil {
		t.Fatal(err)
	}
	if st.Health != events.HealthHealthy {
		t.Fatalf("status %+v", st)
	}
	// Claims through the low watermark, a take, the refill acknowledged.
	var avail []string
	env.Worker.Store().KeyPackages("live", func(kp pool.KeyPackage) bool {
		if kp.State == "available" && !kp.LastResort {
			avail = append(avail, kp.Ref)
		}
		return true
	})
	for _, ref := range avail[:4] {
		if err := env.Client.Claimed(ctx, "live", ref); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.Client.Take(ctx, "live", avail[0], 1); err != nil {
		t.Fatal(err)
	}
	ackAll()
	if err := env.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	n, err := replay.Export(env.Worker.Store(), &log, replay.ExportOptions{})
	if err != nil || n < 15 {
		t.Fatalf("export: %d %v", n, err)
	}
	lr, err := events.NewLogReader(bytes.NewReader(log.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	mem := replay.NewMem(&pool.Core{Defaults: pool.DefaultConfig()})
	sum, err := replay.Run(ctx, lr, mem, replay.Options{StopOnBadLine: true})
	if err != nil || sum.Rejected != 0 || sum.Duplicates != 0 {
		t.Fatalf("replay: %v %+v", err, sum)
	}
	want, err := env.State()
	if err != nil {
		t.Fatal(err)
	}
	got, err := replay.Dump(mem)
	if err != nil {
		t.Fatal(err)
	}
	if diff, _ := replay.Diff(want, got); len(diff) != 0 {
		t.Fatalf("replayed journal differs from the live database:\n%s", strings.Join(diff, "\n"))
	}

	// The same log over NATS into a deterministic worker: its keys come from another
	// source, so the first generated line diverges, with a message that says why.
	other := Start(t, Options{Deterministic: true})
	_, err = other.ReplayLog(ctx, bytes.NewReader(log.Bytes()), ReplayOptions{})
	if !errors.Is(err, ErrDiverged) || !strings.Contains(err.Error(), "recorded with another seed or clock") {
		t.Fatalf("got %v", err)
	}
}

// WaitStatus gives up at the deadline and says what it last saw.
func TestWaitStatusDeadline(t *testing.T) {
	env := Start(t, Options{Deterministic: true})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := env.WaitHealth(ctx, "nobody", events.HealthHealthy)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pool nobody") || !strings.Contains(err.Error(), "unknown_pool") {
		t.Fatalf("got %v", err)
	}
}

func TestClockOnlyMovesForward(t *testing.T) {
	c := NewClock(DefaultOrigin)
	c.Set(DefaultOrigin.Add(-time.Hour))
	c.Advance(-time.Minute)
	if !c.Now().Equal(DefaultOrigin) {
		t.Fatalf("clock went back to %v", c.Now())
	}
	c.Advance(time.Minute)
	c.Set(DefaultOrigin.Add(time.Hour))
	if !c.Now().Equal(DefaultOrigin.Add(time.Hour)) {
		t.Fatalf("clock at %v", c.Now())
	}
}

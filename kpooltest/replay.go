package kpooltest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrDiverged: the worker did not mint the KeyPackage a `generated` line of the log
// names. The log was recorded with another seed, clock or order of operations.
var ErrDiverged = errors.New("kpooltest: the worker diverged from the log")

// DefaultWait bounds each wait when the context has no deadline.
const DefaultWait = 10 * time.Second

// pollEvery is the interval of the deadline-bounded polls below.
const pollEvery = 2 * time.Millisecond

// ReplayResult says what a replay over NATS did.
type ReplayResult struct {
	Published  int      // events published on their subjects
	Registered int      // pool_registered lines sent as pool.register calls
	Generated  int      // generated lines matched by the worker's own KeyPackages
	BadLines   []string // unreadable lines, skipped (as `worker replay` does)
}

// ReplayOptions tune ReplayLog.
type ReplayOptions struct {
	// IgnoreGenerated skips the check that the worker minted each `generated` line's ref
	// (for logs recorded on another seed: their acks and claims will then mostly be
	// dead-lettered as unknown refs, which may be what a test wants).
	IgnoreGenerated bool
}

// ReplayFile replays the log at path; see ReplayLog.
func (e *Env) ReplayFile(ctx context.Context, path string, o ReplayOptions) (ReplayResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return ReplayResult{}, err
	}
	defer f.Close()
	return e.ReplayLog(ctx, f, o)
}

// ReplayLog feeds an NDJSON event log to the worker over NATS, one line at a time, and
// waits for the worker to settle after each (WaitIdle), so the order of operations — and
// in deterministic mode the keys drawn — is the log's:
//
//   - public events (upload_ack, claimed, expiry_tick, ...) are published on their
//     subjects with their own id and time, as the delivery service or a scheduler would;
//   - pool_registered lines become pool.register calls with the line's id, identity,
//     suite and policy (the worker makes the signature key, from its seed);
//   - generated lines are the worker's own work: ReplayLog checks that the worker minted
//     that ref (ErrDiverged otherwise) and publishes nothing.
//
// In deterministic mode the clock is moved to each line's time first. Bad lines are
// skipped and listed in the result; a log of an unknown version is an error.
func (e *Env) ReplayLog(ctx context.Context, r io.Reader, o ReplayOptions) (ReplayResult, error) {
	var res ReplayResult
	lr, err := events.NewLogReader(r)
	if err != nil {
		return res, err
	}
	for {
		rec, err := lr.Next()
		if err == io.EOF {
			return res, nil
		}
		var le *events.LogLineError
		if errors.As(err, &le) {
			res.BadLines = append(res.BadLines, le.Error())
			continue
		}
		if err != nil {
			return res, err
		}
		ev := rec.Event
		if e.Clock != nil {
			e.Clock.Set(ev.Time)
		}
		switch ev.Type {
		case events.TypeGenerated:
			if err := e.WaitIdle(ctx); err != nil {
				return res, err
			}
			if o.IgnoreGenerated {
				continue
			}
			kp, ok, err := e.Worker.Store().KeyPackage(ev.Generated.Ref)
			if err != nil {
				return res, err
			}
			if !ok || kp.Pool != ev.Pool {
				return res, fmt.Errorf("%w: line %d (seq %d): pool %s has no KeyPackage %s; the log was recorded with another seed or clock (or ReplayOptions.IgnoreGenerated)",
					ErrDiverged, lr.Line(), rec.Seq, ev.Pool, ev.Generated.Ref)
			}
			res.Generated++
			continue
		case events.TypePoolRegistered:
			reg := ev.Register
			_, err := e.Client.RegisterSealed(ctx, ev.Pool, natsbus.RegisterRequest{
				ID: ev.ID, Identity: reg.Identity, CipherSuite: reg.CipherSuite, Policy: reg.Policy})
			if err != nil {
				// A refused registration is part of the log's story (the live worker refused
				// it too); go on like the worker does.
				var ae *natsbus.APIError
				if !errors.As(err, &ae) {
					return res, fmt.Errorf("line %d (seq %d): register %s: %w", lr.Line(), rec.Seq, ev.Pool, err)
				}
			}
			res.Registered++
		default:
			if _, err := e.Client.Publish(ctx, ev); err != nil {
				return res, fmt.Errorf("line %d (seq %d): %w", lr.Line(), rec.Seq, err)
			}
			res.Published++
		}
		if err := e.WaitIdle(ctx); err != nil {
			return res, fmt.Errorf("after line %d (seq %d): %w", lr.Line(), rec.Seq, err)
		}
	}
}

// WaitIdle waits until the worker has consumed (committed or dead-lettered) every
// published event and owes no pool a KeyPackage it was asked to generate.
func (e *Env) WaitIdle(ctx context.Context) error {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	js, err := jetstream.New(e.Conn)
	if err != nil {
		return err
	}
	streams := natsbus.StreamNames(e.subj.Prefix)
	// Everything stored in the input stream so far must be applied.
	stream, err := js.Stream(ctx, streams.Events)
	if err != nil {
		return err
	}
	si, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	last := si.State.LastSeq
	var why string
	err = poll(ctx, func() (bool, error) {
		if applied := e.Worker.AppliedSeq(); applied < last {
			why = fmt.Sprintf("inputs applied up to stream seq %d of %d", applied, last)
			return false, nil
		}
		pools, err := e.Worker.Store().Pools()
		if err != nil {
			return false, err
		}
		var owed []string
		for _, p := range pools {
			if p.Requested > 0 || p.LastResortRequested {
				owed = append(owed, fmt.Sprintf("%s owes %d (+last resort: %v)", p.ID, p.Requested, p.LastResortRequested))
			}
		}
		if len(owed) > 0 {
			sort.Strings(owed)
			why = "generation outstanding: " + strings.Join(owed, ", ")
			return false, nil
		}
		return true, nil
	})
	if err != nil && why != "" {
		return fmt.Errorf("kpooltest: worker not idle: %s: %w", why, err)
	}
	return err
}

// WaitStatus waits until the pool's current status satisfies ok and returns it. It reads
// the status from the worker's API, so it also sees a status that was reached before
// the call.
func (e *Env) WaitStatus(ctx context.Context, poolID string, ok func(events.Status) bool) (events.Status, error) {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	var last events.Status
	var lastErr error
	err := poll(ctx, func() (bool, error) {
		st, err := e.Client.Status(ctx, poolID)
		if err != nil {
			var ae *natsbus.APIError
			if errors.As(err, &ae) && ae.Code == pool.CodeUnknownPool {
				lastErr = err // not registered yet: keep waiting
				return false, nil
			}
			return false, err
		}
		last, lastErr = st, nil
		return ok(st), nil
	})
	if err != nil {
		if lastErr != nil {
			return last, fmt.Errorf("kpooltest: pool %s: %v: %w", poolID, lastErr, err)
		}
		return last, fmt.Errorf("kpooltest: pool %s did not reach the status (last: health %s, counts %+v): %w", poolID, last.Health, last.Counts, err)
	}
	return last, nil
}

// WaitHealth waits until the pool's health is health ("healthy", "low", "depleted").
func (e *Env) WaitHealth(ctx context.Context, poolID, health string) (events.Status, error) {
	return e.WaitStatus(ctx, poolID, func(s events.Status) bool { return s.Health == health })
}

func withDefaultDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultWait)
}

// poll calls cond until it returns true, an error, or ctx ends.
func poll(ctx context.Context, cond func() (bool, error)) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		done, err := cond()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

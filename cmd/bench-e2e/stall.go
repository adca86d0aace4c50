package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go"
)

// stallResult is the stall run's figure: the longest time the worker's applied sequence
// stood still while the stream held events it had not applied.
type stallResult struct {
	longest     time.Duration
	over2s      int // stalls longer than 2 s
	polls       int
	events      uint64 // input-stream messages applied during the run
	claims      int
	elapsed     time.Duration
	maxBacklog  uint64 // most events waiting at one poll
	meanBacklog float64
	depleted    int // depleted alerts during the run (the pools were full at its start)
	depletedIn  int // pools that went depleted
	low         int // low-watermark alerts
}

// stallRun publishes claims at a steady rate (their refills and acks follow, and the
// worker's tick a second) for d and polls the worker's applied sequence against the
// stream's last sequence every 10 ms.
func stallRun(pools, target int, rate float64, d time.Duration) (stallResult, error) {
	var r stallResult
	e, err := startEnv(envOptions{pools: pools, target: target, queue: true})
	if err != nil {
		return r, err
	}
	defer e.close()
	if err := e.waitFull(pools, target, 10*time.Minute); err != nil {
		return r, err
	}
	var alertMu sync.Mutex
	depletedPools := map[string]bool{}
	sub, err := e.nc.Subscribe(e.w.Subjects().Outbound(events.KindAlert, "*"), func(m *nats.Msg) {
		var a events.Alert
		if json.Unmarshal(m.Data, &a) != nil {
			return
		}
		alertMu.Lock()
		defer alertMu.Unlock()
		switch a.Kind {
		case events.AlertDepleted:
			r.depleted++
			depletedPools[a.Pool] = true
		case events.AlertLow:
			r.low++
		}
	})
	if err != nil {
		return r, err
	}
	defer sub.Unsubscribe()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	claimed := make(chan int, 1)
	claimErr := make(chan error, 1)
	go func() {
		n, err := e.claimLoop(ctx, rate, nil)
		claimed <- n
		claimErr <- err
	}()

	first := e.w.AppliedSeq()
	start := time.Now()
	var waitingSince time.Time // zero while nothing waits or the worker just advanced
	counted := false           // this wait is already counted in over2s
	prev := first
	var backlogSum float64
	lastLog := start
	for ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, err := e.streamLast(pctx)
		pcancel()
		if err != nil {
			return r, fmt.Errorf("stream info: %w", err)
		}
		now, applied := time.Now(), e.w.AppliedSeq()
		r.polls++
		if last > applied {
			r.maxBacklog = max(r.maxBacklog, last-applied)
			backlogSum += float64(last - applied)
		}
		switch {
		case last <= applied: // nothing waits
			waitingSince, counted = time.Time{}, false
		case applied != prev || waitingSince.IsZero(): // it moved (or events just arrived): a wait starts now
			waitingSince, counted = now, false
		default:
			g := now.Sub(waitingSince)
			r.longest = max(r.longest, g)
			if g > 2*time.Second && !counted {
				r.over2s, counted = r.over2s+1, true
			}
		}
		prev = applied
		if now.Sub(lastLog) > 30*time.Second {
			lastLog = now
			fmt.Fprintf(os.Stderr, "stall: %v, %d events applied, longest stall %v\n", now.Sub(start).Round(time.Second), applied-first, r.longest)
		}
	}
	r.elapsed = time.Since(start)
	r.events = e.w.AppliedSeq() - first
	r.claims = <-claimed
	if err := <-claimErr; err != nil {
		return r, fmt.Errorf("claims: %w", err)
	}
	if r.polls > 0 {
		r.meanBacklog = backlogSum / float64(r.polls)
	}
	alertMu.Lock()
	r.depletedIn = len(depletedPools)
	alertMu.Unlock()
	return r, nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// envOptions shape a worker under test and its delivery service.
type envOptions struct {
	pools, target int
	// clock is the worker's edge clock and the time of the events the load publishes
	// (default time.Now).
	clock func() time.Time
	// keepRefs records every uploaded ref per pool (the claims run picks from them).
	keepRefs bool
	// queue keeps the acknowledged refs, oldest first, for claimLoop.
	queue bool
	// natsURL is a NATS server to use instead of the worker's embedded one.
	natsURL string
}

// env is a real worker with default settings (fsync on, the default journal retention,
// a tick a second) and its delivery service.
type env struct {
	w    *worker.Worker
	nc   *nats.Conn
	js   jetstream.JetStream
	c    *natsbus.Client
	dir  string
	now  func() time.Time
	mu   sync.Mutex
	refs map[string][]string // pool → uploaded refs, in order (keepRefs)
	// ready holds acknowledged refs not yet claimed (queue), oldest at head.
	ready []readyRef
	head  int
}

type readyRef struct{ pool, ref string }

func startEnv(o envOptions) (*env, error) {
	if o.clock == nil {
		o.clock = time.Now
	}
	dir, _ := os.MkdirTemp("", "bench-kpool-")
	w, err := worker.Start(context.Background(), worker.Config{DataDir: dir, Listen: "127.0.0.1:0", NATSURL: o.natsURL, Tick: time.Second,
		Clock: o.clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(w.ClientURL())
	if err != nil {
		w.Close()
		return nil, err
	}
	e := &env{w: w, nc: nc, dir: dir, now: o.clock, refs: map[string][]string{}}
	e.js, _ = jetstream.New(nc)
	e.c, _ = natsbus.NewClient(nc, natsbus.WithClock(o.clock))
	// The delivery service: acknowledges every upload at once.
	if _, err := nc.Subscribe(w.Subjects().Outbound(events.KindUpload, "*"), func(m *nats.Msg) {
		var u events.Upload
		if json.Unmarshal(m.Data, &u) != nil {
			return
		}
		ev := events.Event{ID: "ack-" + u.Ref[:32], Type: events.TypeUploadAck, Time: e.now().UTC(), Pool: u.Pool, Ref: u.Ref}
		b, _ := json.Marshal(ev)
		_, _ = e.js.PublishAsync(w.Subjects().Event(u.Pool, ev.Type), b, jetstream.WithMsgID(ev.MsgID()))
		e.mu.Lock()
		if o.keepRefs {
			e.refs[u.Pool] = append(e.refs[u.Pool], u.Ref)
		}
		if o.queue && !u.LastResort {
			e.ready = append(e.ready, readyRef{u.Pool, u.Ref})
		}
		e.mu.Unlock()
	}); err != nil {
		e.close()
		return nil, err
	}
	policy := events.Policy{Target: new(o.target), LowWatermark: new(o.target / 2), HardCap: new(2 * o.target)}
	for i := range o.pools {
		id := fmt.Sprint("pool", i)
		if _, err := e.c.RegisterSealed(context.Background(), id, natsbus.RegisterRequest{Identity: id, CipherSuite: 1, Policy: policy}); err != nil {
			e.close()
			return nil, err
		}
	}
	return e, nil
}

func (e *env) close() {
	e.nc.Close()
	e.w.Close()
	os.RemoveAll(e.dir)
}

func (e *env) waitFull(pools, target int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ps, err := e.w.Store().Pools()
		if err != nil {
			return err
		}
		full := 0
		for _, p := range ps {
			if p.Fresh >= target {
				full++
			}
		}
		if full == pools {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d pools full after %v", full, pools, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// next takes the oldest acknowledged, unclaimed ref.
func (e *env) next() (readyRef, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.head == len(e.ready) {
		return readyRef{}, false
	}
	r := e.ready[e.head]
	e.head++
	if e.head > 4096 && e.head*2 > len(e.ready) { // drop the claimed prefix
		e.ready = append(e.ready[:0], e.ready[e.head:]...)
		e.head = 0
	}
	return r, true
}

// claimLoop claims acknowledged KeyPackages, oldest first, at rate claims per second
// (0: as fast as they are acknowledged, with at most 1 024 publishes in flight) until ctx
// ends; while paused it publishes nothing. Each claim is followed by the owner's
// `consumed` of the same KeyPackage: claimed KeyPackages count toward the hard cap until
// consumed or expired, so claims alone would stop the refills. It returns the claims
// published.
func (e *env) claimLoop(ctx context.Context, rate float64, paused *atomic.Bool) (int, error) {
	var gap time.Duration
	if rate > 0 {
		gap = time.Duration(float64(time.Second) / rate)
	}
	n, due := 0, time.Now()
	for ctx.Err() == nil {
		if paused != nil && paused.Load() {
			time.Sleep(10 * time.Millisecond)
			due = time.Now()
			continue
		}
		if gap > 0 {
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			due = due.Add(gap)
		}
		r, ok := e.next()
		for !ok || e.js.PublishAsyncPending() > 1024 {
			if ctx.Err() != nil {
				return n, nil
			}
			time.Sleep(time.Millisecond)
			if !ok {
				r, ok = e.next()
			}
		}
		for _, t := range []events.Type{events.TypeClaimed, events.TypeConsumed} {
			ev := events.Event{ID: fmt.Sprint(t, "-", n), Type: t, Time: e.now().UTC(), Pool: r.pool, Ref: r.ref}
			b, _ := json.Marshal(ev)
			if _, err := e.js.PublishAsync(e.w.Subjects().Event(ev.Pool, ev.Type), b, jetstream.WithMsgID(ev.MsgID())); err != nil {
				return n, err
			}
		}
		n++
	}
	return n, nil
}

// streamLast is the last sequence in the worker's input stream.
func (e *env) streamLast(ctx context.Context) (uint64, error) {
	s, err := e.js.Stream(ctx, natsbus.StreamNames(events.DefaultPrefix).Events)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// waitIdle waits until the worker has applied everything in its stream and nothing new
// arrived for three polls in a row (the refills of the last claims included).
func (e *env) waitIdle(within time.Duration) error {
	deadline := time.Now().Add(within)
	stable, last := 0, uint64(0)
	for stable < 3 {
		if time.Now().After(deadline) {
			return fmt.Errorf("worker not idle after %v (applied %d)", within, e.w.AppliedSeq())
		}
		time.Sleep(100 * time.Millisecond)
		seq, err := e.streamLast(context.Background())
		if err != nil {
			return err
		}
		switch {
		case e.w.AppliedSeq() != seq:
			stable = 0
		case seq == last:
			stable++
		default:
			last, stable = seq, 0
		}
	}
	return nil
}

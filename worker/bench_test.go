package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go/jetstream"
)

// publishTicks publishes n pool ticks, round-robin over pools, asynchronously and waits
// for the stream's acks.
func publishTicks(b *testing.B, js jetstream.JetStream, s events.Subjects, n int, t0 time.Time, pools ...string) {
	b.Helper()
	if len(pools) == 0 {
		pools = []string{"alice"}
	}
	for i := range n {
		p := pools[i%len(pools)]
		ev := events.Event{ID: fmt.Sprintf("bench-%d-%d", t0.UnixNano(), i), Type: events.TypeExpiryTick, Time: t0, Pool: p}
		// A full window of unacknowledged publishes waits for room (the default 200ms stall
		// wait fails the run when the worker shares the server's two cores).
		if _, err := js.PublishAsync(s.Event(p, events.TypeExpiryTick), mustJSON(ev), jetstream.WithMsgID(ev.ID), jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publish acks timed out")
	}
}

// BenchmarkInboundBaseline: the same messages through JetStream to a bare pull consumer
// that only acks — the NATS part of the worker's cost.
func BenchmarkInboundBaseline(b *testing.B) {
	ns := startNATSB(b)
	nc, _ := connectB(b, ns)
	js, _ := jetstream.New(nc)
	s := events.Subjects{Prefix: "kpool"}
	if err := natsbus.EnsureStreams(context.Background(), js, s, natsbus.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(context.Background(), natsbus.StreamNames("kpool").Events, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	publishTicks(b, js, s, b.N, time.Now())
	it, err := cons.Messages(jetstream.PullMaxMessages(64))
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	for range b.N {
		m, err := it.Next()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := events.Decode(m.Data()); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := m.DoubleAck(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
}

// BenchmarkInboundWorker: events through the whole worker (decode, core step, bbolt
// commit with fsync, ack), all for one pool: strictly sequential.
func BenchmarkInboundWorker(b *testing.B) { benchWorker(b, 1) }

// BenchmarkInboundWorker16Pools: the same spread over 16 pools, whose lanes commit
// together.
func BenchmarkInboundWorker16Pools(b *testing.B) { benchWorker(b, 16) }

func benchWorker(b *testing.B, nPools int) {
	ns := startNATSB(b)
	cfgPool := pool.DefaultConfig()
	cfgPool.Target, cfgPool.LowWatermark, cfgPool.HardCap = 2, 1, 4
	clock := newClock()
	w, err := worker.Start(context.Background(), worker.Config{DataDir: b.TempDir(), NATSURL: ns.URL(), Clock: clock.Now, Defaults: &cfgPool})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	nc, c := connectB(b, ns)
	js, _ := jetstream.New(nc)
	var pools []string
	for i := range nPools {
		p := fmt.Sprintf("pool%d", i)
		pools = append(pools, p)
		if _, err := c.Register(context.Background(), p, natsbus.RegisterRequest{Identity: p, CipherSuite: 1}, nil); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, id := range pools {
		for p, _, _ := w.Store().Pool(id); p.Requested > 0 || p.LastResortRequested; p, _, _ = w.Store().Pool(id) {
			if time.Now().After(deadline) {
				b.Fatal("generation did not settle")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	m0, _ := w.Store().Meta()
	b.ResetTimer()
	publishTicks(b, js, w.Subjects(), b.N, clock.Now(), pools...)
	for m, _ := w.Store().Meta(); m.Seq < m0.Seq+uint64(b.N); m, _ = w.Store().Meta() {
		if time.Now().After(deadline.Add(5 * time.Minute)) {
			b.Fatalf("applied %d of %d", m.Seq-m0.Seq, b.N)
		}
		time.Sleep(time.Millisecond)
	}
}

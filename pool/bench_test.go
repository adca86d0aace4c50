package pool

import (
	"fmt"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
)

// benchStore builds, through real Steps, a pool p1 holding n available KeyPackages
// plus a few created ones, and returns the store and the refs of each group.
func benchStore(b *testing.B, n int) (*MemStore, []string, []string) {
	b.Helper()
	c := &Core{}
	m := NewMemStore()
	clock := start
	id := 0
	step := func(in events.Event) {
		id++
		in.ID, in.Time = fmt.Sprintf("b%d", id), clock
		r, err := c.Step(m, in)
		if err != nil {
			b.Fatal(err)
		}
		m.Apply(r)
	}
	step(events.Event{Type: events.TypePoolRegistered, Pool: "p1", Register: &events.Register{Identity: "alice", CipherSuite: 1, SignatureKey: []byte("k"),
		Policy: events.Policy{Target: new(n), LowWatermark: new(n / 5), HardCap: new(2*n + 20)}}})
	var avail, created []string
	for i := range n + 10 {
		ref := refOf(fmt.Sprintf("bench-%d", i))
		step(events.Event{Type: events.TypeGenerated, Pool: "p1", Generated: &events.Generated{Ref: ref, KeyPackage: []byte("kp"),
			NotBefore: clock.Add(-time.Hour).Unix(), NotAfter: clock.Add(84 * 24 * time.Hour).Unix()}})
		if i < n {
			step(events.Event{Type: events.TypeUploadAck, Pool: "p1", Ref: ref})
			avail = append(avail, ref)
		} else {
			created = append(created, ref)
		}
	}
	return m, avail, created
}

// BenchmarkStep measures one Step against a pool of 100 and of 100 000 stored
// KeyPackages. Step is pure, so each iteration steps the same stored state without
// applying: the figure is the core's cost per event. Compare the two sizes' ns/op.
func BenchmarkStep(b *testing.B) {
	for _, n := range []int{100, 100_000} {
		m, avail, created := benchStore(b, n)
		c := &Core{}
		at := start.Add(time.Minute)
		b.Run(fmt.Sprintf("claim/kps=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				in := events.Event{ID: "x", Type: events.TypeClaimed, Time: at, Pool: "p1", Ref: avail[i%len(avail)]}
				if _, err := c.Step(m, in); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("ack/kps=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				in := events.Event{ID: "x", Type: events.TypeUploadAck, Time: at, Pool: "p1", Ref: created[i%len(created)]}
				if _, err := c.Step(m, in); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("tick/kps=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := c.Step(m, events.Event{ID: "x", Type: events.TypeExpiryTick, Time: at}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStepScaling interleaves the same claim Step on a pool of 100 and of 100 000
// stored KeyPackages and reports their cost ratio (1.0 = independent of pool size),
// so machine noise hits both sides alike.
func BenchmarkStepScaling(b *testing.B) {
	small, sa, _ := benchStore(b, 100)
	large, la, _ := benchStore(b, 100_000)
	c := &Core{}
	at := start.Add(time.Minute)
	var ts, tl time.Duration
	i := 0
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.Step(small, events.Event{ID: "x", Type: events.TypeClaimed, Time: at, Pool: "p1", Ref: sa[i%len(sa)]}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := c.Step(large, events.Event{ID: "x", Type: events.TypeClaimed, Time: at, Pool: "p1", Ref: la[(i*7919)%len(la)]}); err != nil {
			b.Fatal(err)
		}
		tl += time.Since(t1)
		ts += t1.Sub(t0)
		i++
	}
	b.ReportMetric(float64(ts.Nanoseconds())/float64(i), "ns/step@100")
	b.ReportMetric(float64(tl.Nanoseconds())/float64(i), "ns/step@100k")
	b.ReportMetric(float64(tl)/float64(ts), "ratio")
}

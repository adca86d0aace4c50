package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/kpooltest"
	"github.com/kpool/kpool/mls"
)

// BenchmarkRefillVsSuite1 measures the refill rate of a pool on each post-quantum suite —
// register, generate, commit, upload, acknowledge, until target + last resort are
// available — against a suite-1 pool in the same worker and run. Each iteration fills one
// pool of each (alternating which goes first, so load hits both alike) and it reports
// KeyPackages per second for both and ratio = PQ rate ÷ suite-1 rate (docs/benchmarks.md).
func BenchmarkRefillVsSuite1(b *testing.B) {
	const target = 20
	for _, s := range mls.PQSuites {
		b.Run(fmt.Sprintf("suite=%d", s), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			env := kpooltest.Start(b, kpooltest.Options{})
			ackUploads(ctx, b, env, nil)
			n := 0
			fill := func(suite mls.CipherSuite) time.Duration {
				id := fmt.Sprintf("p%d-%d", suite, n)
				t0 := time.Now()
				if _, err := env.Client.RegisterSealed(ctx, id, natsbus.RegisterRequest{Identity: id, CipherSuite: uint16(suite),
					Policy: events.Policy{Target: new(target), LowWatermark: new(target / 2)}}); err != nil {
					b.Fatal(err)
				}
				if _, err := env.WaitStatus(ctx, id, func(st events.Status) bool {
					return st.AvailableFresh == target && st.LastResortRef != "" && st.Counts.Created == 0
				}); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			}
			var base, pq time.Duration
			for b.Loop() {
				if n%2 == 0 {
					base += fill(1)
					pq += fill(s)
				} else {
					pq += fill(s)
					base += fill(1)
				}
				n++
			}
			kps := float64((target + 1) * n)
			b.ReportMetric(kps/base.Seconds(), "suite1-kp/s")
			b.ReportMetric(kps/pq.Seconds(), "kp/s")
			b.ReportMetric(base.Seconds()/pq.Seconds(), "ratio")
		})
	}
}

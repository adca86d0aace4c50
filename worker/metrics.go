package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the worker's Prometheus series, on a registry of its own so several
// workers can run in one process (tests).
type metrics struct {
	reg              *prometheus.Registry
	events           *prometheus.CounterVec
	deadLetters      *prometheus.CounterVec
	duplicates       prometheus.Counter
	stepSeconds      prometheus.Histogram
	generated        *prometheus.CounterVec
	generatePending  *prometheus.GaugeVec
	relayed          *prometheus.CounterVec
	outboxPending    prometheus.Gauge
	ticks            prometheus.Counter
	api              *prometheus.CounterVec
	poolCount        *prometheus.GaugeVec
	poolFresh        *prometheus.GaugeVec
	internalFailures prometheus.Counter
	inputGaps        prometheus.Counter
	ready            prometheus.GaugeFunc
}

func newMetrics(ready func() bool) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kpool_events_total",
			Help: "Inputs by type and result (applied, duplicate, refused)."}, []string{"type", "result"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kpool_dead_letters_total",
			Help: "Rejected inbound messages by code."}, []string{"code"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "kpool_duplicates_total",
			Help: "Inputs whose event id was already applied."}),
		stepSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kpool_event_seconds",
			Help: "Time from fetch to commit of one inbound event.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		generated: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kpool_keypackages_generated_total",
			Help: "KeyPackages minted, by outcome (committed, rejected)."}, []string{"result"}),
		generatePending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kpool_generate_outstanding",
			Help: "KeyPackages the core requested and the generator has not delivered yet, per pool."}, []string{"pool"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kpool_outbox_published_total",
			Help: "Outbox messages published, by kind."}, []string{"kind"}),
		outboxPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kpool_outbox_pending",
			Help: "Outbox messages left after the last relay pass."}),
		ticks: prometheus.NewCounter(prometheus.CounterOpts{Name: "kpool_ticks_published_total",
			Help: "expiry_tick events published by the internal ticker."}),
		api: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kpool_api_requests_total",
			Help: "API requests by endpoint and result code (ok or an error code)."}, []string{"endpoint", "code"}),
		poolCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kpool_pool_keypackages",
			Help: "KeyPackages per pool and state, from the last published status."}, []string{"pool", "state"}),
		poolFresh: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kpool_pool_available_fresh",
			Help: "Available KeyPackages still valid at now + expiry margin, from the last published status."}, []string{"pool"}),
		internalFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "kpool_internal_failures_total",
			Help: "Input groups that failed inside the worker (store, view, invariant, bug); retried, never dead-lettered."}),
		inputGaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "kpool_input_gap_messages_total",
			Help: "Inputs that left the stream (age or purge) before the worker applied them."}),
		ready: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kpool_ready",
			Help: "1 while the worker applies inputs, 0 after repeated internal failures."}, func() float64 {
			if ready() {
				return 1
			}
			return 0
		}),
	}
	m.reg.MustRegister(m.events, m.deadLetters, m.duplicates, m.stepSeconds, m.generated, m.generatePending,
		m.relayed, m.outboxPending, m.ticks, m.api, m.poolCount, m.poolFresh, m.internalFailures, m.inputGaps, m.ready,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeStatus mirrors a published status into the pool gauges.
func (m *metrics) observeStatus(body []byte) {
	var st events.Status
	if json.Unmarshal(body, &st) != nil || st.Pool == "" {
		return
	}
	m.observe(st)
}

// observe sets a pool's gauges from its status.
func (m *metrics) observe(st events.Status) {
	c := st.Counts
	for state, n := range map[string]int{"created": c.Created, "available": c.Available, "claimed": c.Claimed, "expired": c.Expired, "deleted": c.Deleted} {
		m.poolCount.WithLabelValues(st.Pool, state).Set(float64(n))
	}
	m.poolFresh.WithLabelValues(st.Pool).Set(float64(st.AvailableFresh))
}

// forget removes a pool's gauges: its partition moved to another worker, which reports it.
func (m *metrics) forget(pool string) {
	m.poolCount.DeletePartialMatch(prometheus.Labels{"pool": pool})
	m.poolFresh.DeleteLabelValues(pool)
}

// Gatherer exposes the worker's metrics (tests, embedding).
func (w *Worker) Gatherer() prometheus.Gatherer { return w.metrics.reg }

// MetricsAddr is the address metrics are served on ("" when off).
func (w *Worker) MetricsAddr() string {
	if w.httpSrv == nil {
		return ""
	}
	return w.httpSrv.Addr
}

func (w *Worker) serveMetrics(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("worker: metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(w.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !w.Ready() {
			http.Error(rw, "not ready: inputs keep failing inside the worker (see the log)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ready")
	})
	w.httpSrv = &http.Server{Addr: ln.Addr().String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := w.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("metrics server stopped", "err", err)
		}
	}()
	w.log.Info("metrics", "url", "http://"+w.httpSrv.Addr+"/metrics")
	return nil
}

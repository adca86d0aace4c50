package worker

import (
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

// generator mints KeyPackages for the core's generate requests and feeds each back as a
// `generated` input with its private bundle. It runs beside the consumer so a refill does
// not hold up inbound events; requests are durable in the pool records (outstanding
// count), so a restart resumes them.
type generator struct {
	w     *Worker
	mu    sync.Mutex
	queue []pool.GenerateRequest
	kick  chan struct{}
}

func newGenerator(w *Worker) *generator {
	return &generator{w: w, kick: make(chan struct{}, 1)}
}

func (g *generator) enqueue(r pool.GenerateRequest) {
	if r.Count <= 0 {
		return
	}
	g.mu.Lock()
	g.queue = append(g.queue, r)
	g.mu.Unlock()
	g.w.metrics.generatePending.Add(float64(r.Count))
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// resume queues the outstanding requests of every pool, read from the pool records.
func (g *generator) resume() error {
	pools, err := g.w.store.Pools()
	if err != nil {
		return fmt.Errorf("worker: read pools: %w", err)
	}
	for _, p := range pools {
		for _, r := range outstanding(p) {
			g.w.log.Info("resuming KeyPackage generation", "pool", p.ID, "count", r.Count, "last_resort", r.LastResort)
			g.enqueue(r)
		}
	}
	return nil
}

func (g *generator) next() (pool.GenerateRequest, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.queue) == 0 {
		return pool.GenerateRequest{}, false
	}
	r := g.queue[0]
	g.queue = g.queue[1:]
	return r, true
}

// requeue puts back what is left of a request after a transient failure.
func (g *generator) requeue(r pool.GenerateRequest) {
	g.mu.Lock()
	g.queue = append([]pool.GenerateRequest{r}, g.queue...)
	g.mu.Unlock()
}

func (g *generator) loop() {
	defer g.w.loops.Done()
	signers := map[string]mls.Signer{}
	for {
		r, ok := g.next()
		if !ok {
			select {
			case <-g.w.ctx.Done():
				return
			case <-g.kick:
				continue
			}
		}
		for r.Count > 0 {
			if g.w.ctx.Err() != nil {
				return // the rest stays outstanding in the pool record
			}
			err := g.mintOne(r, signers)
			var perm *permanentError
			switch {
			case err == nil:
				r.Count--
				g.w.metrics.generatePending.Dec()
			case errors.As(err, &perm):
				g.w.log.Warn("generation request dropped", "pool", r.Pool, "left", r.Count, "err", err)
				g.w.metrics.generatePending.Sub(float64(r.Count))
				r.Count = 0
			default:
				g.w.log.Error("KeyPackage generation failed; retrying", "pool", r.Pool, "err", err)
				g.requeue(r)
				if !g.w.sleepCtx(time.Second) {
					return
				}
				r.Count = 0 // requeued
			}
		}
	}
}

// permanentError ends a generation request (pool gone, core refuses more).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// mintOne generates one KeyPackage with the pool's signature key, its lifetime taken from
// the pool's policy relative to the core's time (never the wall clock, so a replay of the
// journal sees the same inputs), and commits it as a `generated` input.
func (g *generator) mintOne(r pool.GenerateRequest, signers map[string]mls.Signer) error {
	w := g.w
	p, ok, err := w.store.Pool(r.Pool)
	if err != nil {
		return err
	}
	if !ok {
		return &permanentError{fmt.Errorf("pool %s does not exist", r.Pool)}
	}
	meta, err := w.store.Meta()
	if err != nil {
		return err
	}
	suite := mls.CipherSuite(p.CipherSuite)
	signer := signers[p.ID]
	if signer == nil {
		priv, err := w.store.Secret(persistence.PoolSecretID(p.ID))
		if err != nil {
			return &permanentError{fmt.Errorf("pool %s signature key: %w", p.ID, err)}
		}
		signer, err = mls.SignerFromPrivate(suite, priv)
		clear(priv)
		if err != nil {
			return &permanentError{fmt.Errorf("pool %s signature key: %w", p.ID, err)}
		}
		signers[p.ID] = signer
	}
	now := meta.Time
	notBefore, notAfter := now.Add(-p.Config.NotBeforeBackdate).Unix(), now.Add(p.Config.Lifetime).Unix()
	kp, bundle, err := mls.Generate(suite, signer, []byte(p.Identity), mls.GenerateOptions{
		NotBefore:  uint64(notBefore),
		NotAfter:   uint64(notAfter),
		Now:        now,
		LastResort: r.LastResort,
		Rand:       w.cfg.Rand,
	})
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	ref, err := kp.Ref()
	if err != nil {
		return fmt.Errorf("generate: ref: %w", err)
	}
	msg := mls.MarshalMLSMessage(kp)
	secret, err := bundle.MarshalBinary()
	bundle.Wipe()
	if err != nil {
		return fmt.Errorf("generate: bundle: %w", err)
	}
	hexRef := hex.EncodeToString(ref)
	ev := events.Event{
		ID:   "gen-" + hexRef,
		Type: events.TypeGenerated,
		Time: now,
		Pool: p.ID,
		Generated: &events.Generated{
			Ref: hexRef, KeyPackage: msg, LastResort: r.LastResort,
			NotBefore: notBefore,
			NotAfter:  notAfter,
		},
	}
	res, err := w.submit(persistence.Input{Event: ev, Secrets: map[string][]byte{hexRef: secret}})
	clear(secret)
	if err != nil {
		return err
	}
	if res.Err != nil {
		code, _ := codeOf(res.Err)
		w.metrics.generated.WithLabelValues("rejected").Inc()
		return &permanentError{fmt.Errorf("core refused generated KeyPackage (%s): %w", code, res.Err)}
	}
	w.metrics.generated.WithLabelValues("committed").Inc()
	return nil
}

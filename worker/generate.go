package worker

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

// generator mints KeyPackages for the pools the core asked for, and feeds each back as a
// `generated` input with its private bundle. It runs beside the consumer so a refill does
// not hold up inbound events. The pool record's outstanding counters (Requested,
// LastResortRequested) are the source of truth: a generate request only marks a pool as
// needing work, so a re-issued request (replenish, start-up) never doubles the work, and a
// restart resumes where the last run stopped.
type generator struct {
	w     *Worker
	mu    sync.Mutex
	dirty []string // pools to look at, in request order, without repeats
	kick  chan struct{}

	active   map[string]bool       // pools being filled: one filler per pool
	failures map[string]int        // failures in a row per pool
	signers  map[string]mls.Signer // pool signature keys, read once
}

// poolsInParallel is how many pools are filled at once: enough inputs in flight that
// the writer's groups stay large during a mass refill.
const poolsInParallel = 16

func newGenerator(w *Worker) *generator {
	return &generator{w: w, kick: make(chan struct{}, 1), active: map[string]bool{}, failures: map[string]int{}, signers: map[string]mls.Signer{}}
}

func (g *generator) enqueue(r pool.GenerateRequest) {
	g.mu.Lock()
	if !slices.Contains(g.dirty, r.Pool) {
		g.dirty = append(g.dirty, r.Pool)
	}
	g.mu.Unlock()
	g.wake()
}

func (g *generator) wake() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// resume marks every pool with outstanding requests.
func (g *generator) resume() error {
	pools, err := g.w.store.Pools()
	if err != nil {
		return fmt.Errorf("worker: read pools: %w", err)
	}
	for _, p := range pools {
		for _, r := range p.Outstanding() {
			g.w.log.Info("resuming KeyPackage generation", "pool", p.ID, "count", r.Count, "last_resort", r.LastResort)
			g.enqueue(r)
		}
	}
	return nil
}

// next takes the first queued pool that is not being filled, and marks it active.
func (g *generator) next() (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, id := range g.dirty {
		if !g.active[id] {
			g.dirty = slices.Delete(g.dirty, i, i+1)
			g.active[id] = true
			return id, true
		}
	}
	return "", false
}

func (g *generator) loop() {
	defer g.w.loops.Done()
	var fillers sync.WaitGroup
	defer fillers.Wait()
	slots := make(chan struct{}, poolsInParallel)
	for {
		id, ok := g.next()
		if !ok {
			select {
			case <-g.w.ctx.Done():
				return
			case <-g.kick:
				continue
			}
		}
		select {
		case slots <- struct{}{}:
		case <-g.w.ctx.Done():
			return
		}
		fillers.Add(1)
		go func() {
			defer fillers.Done()
			g.fill(id)
			g.mu.Lock()
			delete(g.active, id)
			g.mu.Unlock()
			<-slots
			g.wake() // its pool may have been queued again meanwhile
		}()
	}
}

func (g *generator) failed(id string, reset bool) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if reset {
		delete(g.failures, id)
		return 0
	}
	g.failures[id]++
	return g.failures[id]
}

// fill mints for one pool until its outstanding counters are zero. false means stop.
func (g *generator) fill(id string) bool {
	w := g.w
	for {
		if w.ctx.Err() != nil {
			return false // the rest stays outstanding in the pool record
		}
		p, ok, err := w.store.Pool(id)
		if err != nil {
			w.log.Error("reading pool for generation", "pool", id, "err", err)
			return w.sleepCtx(time.Second) && g.retry(id)
		}
		if !ok {
			return true
		}
		reqs := p.Outstanding()
		w.log.Debug("generation", "pool", id, "outstanding", reqs)
		w.metrics.generatePending.WithLabelValues(id).Set(float64(p.Requested + b2i(p.LastResortRequested)))
		if len(reqs) == 0 {
			return true
		}
		// The last resort alone; regular ones in parallel, up to a window, so a refill
		// uses every core and its inputs share the writer's transactions.
		n := 1
		if !reqs[0].LastResort {
			n = min(reqs[0].Count, g.w.cfg.GenerateWorkers*genWindowPerWorker)
		}
		err = g.mintMany(p, reqs[0].LastResort, n)
		var perm *permanentError
		switch {
		case err == nil:
			g.failed(id, true)
		case errors.As(err, &perm):
			// Not retried until the core asks again (next request, replenish, restart).
			w.log.Warn("generation stopped for pool", "pool", id, "err", err)
			g.report(p, err)
			return true
		default:
			n := g.failed(id, false)
			w.log.Error("KeyPackage generation failed; retrying", "pool", id, "err", err, "failures", n)
			if n == reportAfter {
				g.report(p, err)
			}
			return w.sleepCtx(time.Second) && g.retry(id)
		}
	}
}

// reportAfter is how many failures in a row of a retried error make it reported.
const reportAfter = 5

// report tells the core that a pool's generation fails, as a generation_failed input:
// the pool's status (health generation_failing, generation_error) and an alert say so
// until a KeyPackage is generated again. A refusal for lack of room is no failure.
func (g *generator) report(p pool.Pool, cause error) {
	var re *pool.RejectError
	if errors.As(cause, &re) && (re.Code == pool.CodeOverCap || re.Code == pool.CodeUnknownPool) {
		return
	}
	reason := cause.Error()
	if p.GenerationError == reason {
		return
	}
	meta, err := g.w.store.Meta()
	if err != nil {
		g.w.log.Warn("reporting a generation failure failed", "pool", p.ID, "err", err)
		return
	}
	// the core's time, like the generated inputs it stands for
	ev := events.Event{ID: natsbus.NewEventID(), Type: events.TypeGenerationFailed, Time: meta.Time, Pool: p.ID, Reason: reason}
	if _, err := g.w.submit(persistence.Input{Event: ev}); err != nil {
		g.w.log.Warn("reporting a generation failure failed", "pool", p.ID, "err", err)
	}
}

func (g *generator) retry(id string) bool {
	g.enqueue(pool.GenerateRequest{Pool: id})
	return true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// permanentError ends a generation request (pool gone, core refuses more).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// genWindowPerWorker bounds the KeyPackages one generator worker has in flight.
const genWindowPerWorker = 32

// mintMany mints n KeyPackages on GenerateWorkers goroutines, each committed as its own
// `generated` input; it returns the first error (a permanent one first).
func (g *generator) mintMany(p pool.Pool, lastResort bool, n int) error {
	signer, err := g.signer(p)
	if err != nil {
		return err
	}
	meta, err := g.w.store.Meta()
	if err != nil {
		return err
	}
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(n, g.w.cfg.GenerateWorkers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = g.mintOne(p, signer, meta.Time, lastResort)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	var first error
	for _, err := range errs {
		var perm *permanentError
		if errors.As(err, &perm) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// signer is the pool's signature key, read once per pool.
func (g *generator) signer(p pool.Pool) (mls.Signer, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.signers[p.ID]; s != nil {
		return s, nil
	}
	priv, err := g.w.store.Secret(persistence.PoolSecretID(p.ID))
	if err != nil {
		return nil, &permanentError{fmt.Errorf("pool %s signature key: %w", p.ID, err)}
	}
	s, err := mls.SignerFromPrivate(mls.CipherSuite(p.CipherSuite), priv)
	clear(priv)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("pool %s signature key: %w", p.ID, err)}
	}
	g.signers[p.ID] = s
	return s, nil
}

// mintOne generates one KeyPackage with the pool's signature key, its lifetime taken from
// the pool's policy relative to the core's time now (never the wall clock, so a replay of
// the journal sees the same inputs), and commits it as a `generated` input.
func (g *generator) mintOne(p pool.Pool, signer mls.Signer, now time.Time, lastResort bool) error {
	w := g.w
	suite := mls.CipherSuite(p.CipherSuite)
	notBefore, notAfter := now.Add(-p.Config.NotBeforeBackdate).Unix(), now.Add(p.Config.Lifetime).Unix()
	opts, err := pool.KeyPackageOptions(p) // capabilities, credential, extensions: the policy as it is now
	if err != nil {
		return &permanentError{fmt.Errorf("pool %s policy: %w", p.ID, err)}
	}
	opts.NotBefore, opts.NotAfter, opts.Now, opts.LastResort, opts.Rand = uint64(notBefore), uint64(notAfter), now, lastResort, w.cfg.Rand
	kp, bundle, err := mls.Generate(suite, signer, []byte(p.Identity), opts)
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
		ID:   natsbus.NewEventID(), // random: a take must not be able to name it
		Type: events.TypeGenerated,
		Time: now,
		Pool: p.ID,
		Generated: &events.Generated{
			Ref: hexRef, KeyPackage: msg, LastResort: lastResort,
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

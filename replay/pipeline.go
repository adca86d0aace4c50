package replay

import (
	"context"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
)

// AsyncTarget is a Target that can queue an input without waiting for its commit, so a
// sequential replay fills whole transactions. Inputs are applied in the order queued;
// wait returns what Step would have.
type AsyncTarget interface {
	Target
	StepAsync(ctx context.Context, ev events.Event) (wait func() (r pool.Ready, rejected error, err error), err error)
}

// pipelineDepth bounds the inputs in flight (the committer's queue holds 512).
const pipelineDepth = 1024

type inflight struct {
	rec  events.LogRecord
	line int
	wait func() (pool.Ready, error, error)
}

// pipeline applies inputs through a target and records their outcomes in log order. On
// an AsyncTarget up to pipelineDepth inputs are in flight; otherwise each input is
// stepped and recorded at once.
type pipeline struct {
	t     Target
	async AsyncTarget
	s     *Summary
	opts  Options
	queue []inflight
}

func newPipeline(t Target, s *Summary, opts Options) *pipeline {
	p := &pipeline{t: t, s: s, opts: opts}
	p.async, _ = t.(AsyncTarget)
	return p
}

func (p *pipeline) push(ctx context.Context, rec events.LogRecord, line int) error {
	if p.async == nil {
		r, rejected, err := p.t.Step(ctx, rec.Event)
		return p.finish(inflight{rec: rec, line: line}, r, rejected, err)
	}
	wait, err := p.async.StepAsync(ctx, rec.Event)
	if err != nil {
		return fmt.Errorf("line %d (seq %d): %w", line, rec.Seq, err)
	}
	p.queue = append(p.queue, inflight{rec: rec, line: line, wait: wait})
	if len(p.queue) >= pipelineDepth {
		return p.pop()
	}
	return nil
}

func (p *pipeline) pop() error {
	f := p.queue[0]
	p.queue[0] = inflight{}
	p.queue = p.queue[1:]
	r, rejected, err := f.wait()
	return p.finish(f, r, rejected, err)
}

func (p *pipeline) finish(f inflight, r pool.Ready, rejected, err error) error {
	if err == nil {
		err = p.s.record(f.rec, f.line, r, rejected, p.opts)
	}
	if err != nil {
		return fmt.Errorf("line %d (seq %d): %w", f.line, f.rec.Seq, err)
	}
	return nil
}

// drain waits for every input in flight, recording each.
func (p *pipeline) drain() error {
	for len(p.queue) > 0 {
		if err := p.pop(); err != nil {
			return err
		}
	}
	return nil
}

// abandon waits for inputs still in flight after an early return, without recording
// them: they are committed (a resume will find them), and the caller must not close the
// target under them.
func (p *pipeline) abandon() {
	for _, f := range p.queue {
		f.wait()
	}
	p.queue = nil
}

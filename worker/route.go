package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// In cluster mode every worker answers the `kpool` micro service (one queue group), and
// the one that receives a call hands it to the owner of the pool's partition — its own
// engine, or the owner's on <prefix>.route.<partition>.<endpoint>[.<pool>] — whose answer
// it relays unchanged. The partition is the stream transform's (events.PartitionOf).

// routeTimeout bounds a forwarded call: the owner's own wait plus the hop.
const routeTimeout = callTimeout + 5*time.Second

func (w *Worker) routeSubject(p int, ep endpoint, pool string) string {
	s := w.subj.Prefix + ".route." + strconv.Itoa(p) + "." + ep.name
	if ep.perPool {
		s += "." + pool
	}
	return s
}

// call answers an API call in cluster mode.
func (c *cluster) call(ep endpoint, id string, data []byte) (any, error) {
	if err := checkPoolArg(ep, id); err != nil {
		return nil, err
	}
	if c.w.ctx.Err() != nil {
		return nil, apiErr(natsbus.CodeUnavailable, "the worker is shutting down")
	}
	if !ep.perPool {
		return c.list(ep, data)
	}
	return c.callPartition(events.PartitionOf(id, c.n), ep, id, data)
}

func (c *cluster) callPartition(p int, ep endpoint, id string, data []byte) (any, error) {
	// While a partition changes hands (a failover, a rebalance) nobody answers for it;
	// the call waits for the new owner, up to a lease period and a bit.
	deadline := time.Now().Add(c.ttl + 2*time.Second)
	for {
		if e := c.engine(p); e != nil {
			resp, err := e.callAPI(ep, id, data)
			// The engine stopped (its partition moved) before the call's input reached
			// the log: the call goes to the partition's next owner.
			if stopped := e.ctx.Err() != nil && (errors.Is(err, errNothingChanged) || errors.Is(err, errShuttingDown)); !stopped || time.Now().After(deadline) {
				return resp, err
			}
			continue
		}
		msg, err := c.w.nc.Request(c.w.routeSubject(p, ep, id), data, routeTimeout)
		if errors.Is(err, nats.ErrNoResponders) && time.Now().Before(deadline) && c.w.sleepCtx(100*time.Millisecond) {
			continue
		}
		return routed(p, msg, err)
	}
}

// routed is the answer of a forwarded call.
func routed(p int, msg *nats.Msg, err error) (any, error) {
	if err != nil {
		return nil, apiErr(natsbus.CodeUnavailable, "partition %d has no owner answering (%v): a failover is under way or too few workers run; retry", p, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, &apiError{code: code, desc: msg.Header.Get(micro.ErrorHeader)}
	}
	return json.RawMessage(msg.Data), nil
}

// list gathers every partition's pools.
func (c *cluster) list(ep endpoint, data []byte) (any, error) {
	var all natsbus.PoolList
	for p := range c.n {
		r, err := c.callPartition(p, ep, "", data)
		if err != nil {
			return nil, err
		}
		switch v := r.(type) {
		case natsbus.PoolList:
			all.Pools = append(all.Pools, v.Pools...)
		case json.RawMessage:
			var l natsbus.PoolList
			if err := json.Unmarshal(v, &l); err != nil {
				return nil, fmt.Errorf("partition %d: list: %w", p, err)
			}
			all.Pools = append(all.Pools, l.Pools...)
		}
	}
	slices.SortFunc(all.Pools, func(a, b events.Status) int { return strings.Compare(a.Pool, b.Pool) })
	return all, nil
}

// serveRoute answers the calls other workers route to this engine's partition.
func (w *Worker) serveRoute() error {
	prefix := w.subj.Prefix + ".route." + strconv.Itoa(w.part) + "."
	sub, err := w.nc.Subscribe(prefix+">", func(m *nats.Msg) {
		name, id, _ := strings.Cut(strings.TrimPrefix(m.Subject, prefix), ".")
		i := slices.IndexFunc(endpoints, func(ep endpoint) bool { return ep.name == name })
		if i < 0 || m.Reply == "" {
			return
		}
		go w.answerRoute(m, endpoints[i], id)
	})
	if err != nil {
		return fmt.Errorf("worker: route subscription: %w", err)
	}
	w.route = sub
	return w.nc.Flush()
}

func (w *Worker) answerRoute(m *nats.Msg, ep endpoint, id string) {
	reply := nats.NewMsg(m.Reply)
	resp, err := w.callAPI(ep, id, m.Data)
	if err == nil {
		reply.Data, err = json.Marshal(resp)
	}
	if err != nil {
		ae := toAPIError(err)
		reply.Header.Set(micro.ErrorHeader, ae.desc)
		reply.Header.Set(micro.ErrorCodeHeader, ae.code)
	}
	_ = w.nc.PublishMsg(reply)
}

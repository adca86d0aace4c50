package natsbus

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stop ends a subscription.
type Stop func()

func (c *Client) outSubject(k events.Kind, pool string) string {
	if pool == "" {
		pool = "*"
	}
	return c.subj.Outbound(k, pool)
}

// WatchStatus calls fn with the current status of a pool ("" = every pool) at once, then
// with every new status. Delivery is ordered per pool; Seq increases with each status.
func (c *Client) WatchStatus(ctx context.Context, pool string, fn func(events.Status)) (Stop, error) {
	cons, err := c.js.OrderedConsumer(ctx, c.streams.Status, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.outSubject(events.KindStatus, pool)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: watch status: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var st events.Status
		if json.Unmarshal(m.Data(), &st) == nil {
			fn(st)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: watch status: %w", err)
	}
	return cc.Stop, nil
}

// LastStatus reads the last published status of a pool from the status stream without
// asking the worker. found is false when the pool never published one.
func (c *Client) LastStatus(ctx context.Context, pool string) (st events.Status, found bool, err error) {
	s, err := c.js.Stream(ctx, c.streams.Status)
	if err != nil {
		return st, false, fmt.Errorf("natsbus: last status: %w", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, c.subj.Outbound(events.KindStatus, pool))
	if err == jetstream.ErrMsgNotFound {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("natsbus: last status: %w", err)
	}
	return st, true, json.Unmarshal(m.Data, &st)
}

func subscribeJSON[T any](nc *nats.Conn, subject string, fn func(T)) (Stop, error) {
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var v T
		if json.Unmarshal(m.Data, &v) == nil {
			fn(v)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: subscribe %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// SubscribeAlerts calls fn for every alert of a pool ("" = every pool) from now on.
func (c *Client) SubscribeAlerts(pool string, fn func(events.Alert)) (Stop, error) {
	return subscribeJSON(c.nc, c.outSubject(events.KindAlert, pool), fn)
}

// SubscribeTransitions calls fn for every KeyPackage transition (and every refused one,
// with Error set) of a pool ("" = every pool) from now on.
func (c *Client) SubscribeTransitions(pool string, fn func(events.Transition)) (Stop, error) {
	return subscribeJSON(c.nc, c.outSubject(events.KindTransition, pool), fn)
}

// SubscribeDeadLetters calls fn for every rejected input from now on.
func (c *Client) SubscribeDeadLetters(fn func(events.DeadLetter)) (Stop, error) {
	return subscribeJSON(c.nc, c.subj.DeadLetter(), fn)
}

// DeliveryHandler is what a delivery service does with kpool's requests. A non-nil error
// leaves the message unacknowledged, so it is delivered again.
type DeliveryHandler struct {
	Upload   func(events.Upload) error
	Withdraw func(events.Withdraw) error
}

// ConsumeDeliveries runs durable JetStream consumers over the upload and withdraw requests
// of a pool ("" = every pool), so a delivery service that was down gets what it missed.
// Each message is acked after its handler returns nil.
//
// There are two consumers, <durable>-upload and <durable>-withdraw, each with one filter
// subject (kpool.upload.<pool>, kpool.withdraw.<pool>): with one filter the subject of the
// create request names it, so NATS permissions can restrict a delivery service to its own
// pools' consumers (docs/security.md).
func (c *Client) ConsumeDeliveries(ctx context.Context, durable, pool string, h DeliveryHandler) (Stop, error) {
	var stops []Stop
	stopAll := func() {
		for _, s := range stops {
			s()
		}
	}
	for _, kind := range []events.Kind{events.KindUpload, events.KindWithdraw} {
		stop, err := c.consumeKind(ctx, DeliveryConsumer(durable, kind), c.outSubject(kind, pool), kind, h)
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("natsbus: consume deliveries: %w", err)
		}
		stops = append(stops, stop)
	}
	return stopAll, nil
}

// DeliveryConsumer is the name of the durable consumer ConsumeDeliveries uses for kind.
func DeliveryConsumer(durable string, kind events.Kind) string {
	return durable + "-" + string(kind)
}

func (c *Client) consumeKind(ctx context.Context, name, filter string, kind events.Kind, h DeliveryHandler) (Stop, error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, c.streams.Outbound, jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var err error
		if kind == events.KindUpload {
			var u events.Upload
			if json.Unmarshal(m.Data(), &u) != nil {
				_ = m.Term() // not from kpool; redelivering cannot help
				return
			}
			if h.Upload != nil {
				err = h.Upload(u)
			}
		} else {
			var w events.Withdraw
			if json.Unmarshal(m.Data(), &w) != nil {
				_ = m.Term()
				return
			}
			if h.Withdraw != nil {
				err = h.Withdraw(w)
			}
		}
		if err != nil {
			_ = m.Nak()
			return
		}
		_ = m.Ack()
	})
	if err != nil {
		return nil, err
	}
	return cc.Stop, nil
}

package natsbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// Client talks to kpool over NATS: publish events, subscribe to what kpool publishes, call
// its API. It is safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	subj    events.Subjects
	streams Streams
	now     func() time.Time
}

// Option configures a Client.
type Option func(*Client)

// WithPrefix sets the subject prefix (default "kpool"); it must match the worker's
// --subject-prefix.
func WithPrefix(prefix string) Option {
	return func(c *Client) { c.subj = events.Subjects{Prefix: prefix}; c.streams = StreamNames(prefix) }
}

// WithClock sets the clock used to stamp events whose Time is zero (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

// NewClient wraps a NATS connection. It needs JetStream on the server for publishing
// events and watching status.
func NewClient(nc *nats.Conn, opts ...Option) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsbus: %w", err)
	}
	c := &Client{nc: nc, js: js, subj: events.Subjects{Prefix: events.DefaultPrefix}, streams: StreamNames(events.DefaultPrefix), now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Subjects returns the subjects the client uses.
func (c *Client) Subjects() events.Subjects { return c.subj }

// NewEventID returns a random event id (32 hex characters).
func NewEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// Publish validates an event and publishes it to its subject on the inbound stream. A zero
// ID gets a random one and a zero Time the client's clock; the event as sent is returned.
// The id is also the Nats-Msg-Id, so a retried publish is deduplicated by JetStream (and,
// beyond its window, by the worker).
func (c *Client) Publish(ctx context.Context, ev events.Event) (events.Event, error) {
	if ev.ID == "" {
		ev.ID = NewEventID()
	}
	if ev.Time.IsZero() {
		ev.Time = c.now().UTC()
	}
	if err := events.Validate(ev); err != nil {
		return ev, err
	}
	if !slices.Contains(events.PublicTypes, ev.Type) {
		return ev, fmt.Errorf("%w: %q is produced by the worker itself", events.ErrUnknownType, ev.Type)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return ev, err
	}
	if _, err := c.js.Publish(ctx, c.subj.Event(ev.Pool, ev.Type), data, jetstream.WithMsgID(ev.MsgID())); err != nil {
		return ev, fmt.Errorf("natsbus: publish %s: %w", ev.Type, err)
	}
	return ev, nil
}

// UploadAck tells kpool the delivery service stored a KeyPackage.
func (c *Client) UploadAck(ctx context.Context, pool, ref string) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeUploadAck, Pool: pool, Ref: ref})
	return err
}

// UploadRejected tells kpool the delivery service refused a KeyPackage; retry marks a
// transient failure (kpool uploads it again).
func (c *Client) UploadRejected(ctx context.Context, pool, ref, reason string, retry bool) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeUploadRejected, Pool: pool, Ref: ref, Reason: reason, Retry: retry})
	return err
}

// Claimed tells kpool the delivery service handed a KeyPackage out.
func (c *Client) Claimed(ctx context.Context, pool, ref string) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeClaimed, Pool: pool, Ref: ref})
	return err
}

// Consumed tells kpool a KeyPackage was used without a take (its private keys are
// erased). A client that needs the private keys calls Take instead.
func (c *Client) Consumed(ctx context.Context, pool, ref string) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeConsumed, Pool: pool, Ref: ref})
	return err
}

// ExpiryTick moves kpool's time to t (zero = now). pool "" ticks every pool.
func (c *Client) ExpiryTick(ctx context.Context, pool string, t time.Time) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeExpiryTick, Pool: pool, Time: t})
	return err
}

// ReplenishEvent publishes a replenish event: top a pool up to its target now. Replenish
// does the same through the API and returns the status after.
func (c *Client) ReplenishEvent(ctx context.Context, pool string) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeReplenish, Pool: pool})
	return err
}

// APIError is an error answer of the kpool service: a stable code and a description.
type APIError struct {
	Code        string
	Description string
}

func (e *APIError) Error() string { return fmt.Sprintf("kpool: %s: %s", e.Code, e.Description) }

// ErrNoWorker means no kpool worker answered (none running, or not on this prefix).
var ErrNoWorker = errors.New("natsbus: no kpool worker answered")

// call sends a request to an endpoint and decodes the answer or the micro error headers.
func (c *Client) call(ctx context.Context, verb, pool string, req, resp any) error {
	if pool != "" {
		if err := events.ValidPoolID(pool); err != nil {
			return err
		}
	}
	var data []byte
	if req != nil {
		var err error
		if data, err = json.Marshal(req); err != nil {
			return err
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	msg, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: APISubject(c.subj, verb, pool), Data: data})
	if errors.Is(err, nats.ErrNoResponders) {
		return ErrNoWorker
	}
	if err != nil {
		return fmt.Errorf("natsbus: %s: %w", verb, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &APIError{Code: code, Description: msg.Header.Get(micro.ErrorHeader)}
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("natsbus: %s: bad answer: %w", verb, err)
	}
	return nil
}

// RegisterSealed creates a pool (or updates its policy) and returns the worker's answer
// as is. Register opens the sealed signature key for you.
func (c *Client) RegisterSealed(ctx context.Context, pool string, req RegisterRequest) (PoolInfo, error) {
	var info PoolInfo
	err := c.call(ctx, VerbRegister, pool, req, &info)
	return info, err
}

// Status returns a pool's current status.
func (c *Client) Status(ctx context.Context, pool string) (events.Status, error) {
	var st events.Status
	err := c.call(ctx, VerbStatus, pool, nil, &st)
	return st, err
}

// List returns the status of every pool.
func (c *Client) List(ctx context.Context) ([]events.Status, error) {
	var l PoolList
	err := c.call(ctx, VerbList, "", nil, &l)
	return l.Pools, err
}

// Replenish asks a pool to top up to its target now and returns its status after.
func (c *Client) Replenish(ctx context.Context, pool string) (events.Status, error) {
	var st events.Status
	err := c.call(ctx, VerbReplenish, pool, ReplenishRequest{}, &st)
	return st, err
}

// Get returns a KeyPackage's public data and state.
func (c *Client) Get(ctx context.Context, pool, ref string) (KeyPackageInfo, error) {
	var kp KeyPackageInfo
	err := c.call(ctx, VerbGet, pool, GetRequest{Ref: ref}, &kp)
	return kp, err
}

// TakeSealed consumes a KeyPackage and returns its private bundle sealed to
// req.RecipientKey. Take opens it for you.
func (c *Client) TakeSealed(ctx context.Context, pool string, req TakeRequest) (TakeResponse, error) {
	var tr TakeResponse
	err := c.call(ctx, VerbTake, pool, req, &tr)
	return tr, err
}

package natsbus

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go/jetstream"
)

// The client side of client custody (docs/client-custody.md): an MLS client application
// that keeps its own private keys lets kpool keep its pool full and tell it what to delete.
// The application supplies a KeyStore backed by its MLS library; RunClient wires it to
// kpool's subjects.

// KeyStore is what an MLS client application supplies. Its methods are called from one
// goroutine at a time.
type KeyStore interface {
	// Generate makes req.Count KeyPackages for the pool's identity and cipher suite (one
	// of them with the last_resort extension when req.LastResort), not after
	// req.MaxNotAfter, stores their private keys, and returns their serializations
	// (MLSMessage or bare KeyPackage). OpenMLS: KeyPackage::builder()…build(), then
	// tls_serialize the KeyPackage.
	Generate(ctx context.Context, req events.ClientGenerate) ([][]byte, error)
	// Delete removes the KeyPackages named by refs (hex KeyPackageRefs) with their private
	// keys. Refs it does not hold are not an error. OpenMLS: delete_key_package(ref).
	Delete(ctx context.Context, refs []string) error
	// Refs lists the refs of every KeyPackage it holds for the pool.
	Refs(ctx context.Context) ([]string, error)
}

// ClientOptions tune RunClient.
type ClientOptions struct {
	// OnRejected is called with every submission kpool refused (after the refused
	// KeyPackage was deleted from the KeyStore). Optional.
	OnRejected func(events.ClientRejected)
	// OnError is called when a KeyStore call or a publish fails; kpool asks again later.
	OnError func(error)
}

// RunClient serves one client-custody pool: it reports the KeyStore's inventory, then
// follows the pool's generate, delete and rejected messages (starting with the last of
// each, so a client that was offline sees the current demand at once), answering with
// submitted, deleted and inventory events. It returns when ctx ends or Stop is called.
func (c *Client) RunClient(ctx context.Context, pool string, ks KeyStore, o ClientOptions) (Stop, error) {
	if err := events.ValidPoolID(pool); err != nil {
		return nil, err
	}
	if o.OnError == nil {
		o.OnError = func(error) {}
	}
	if err := c.SendInventory(ctx, pool, ks); err != nil {
		return nil, err
	}
	cons, err := c.js.OrderedConsumer(ctx, c.streams.Client, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{c.subj.Client(pool, "generate"), c.subj.Client(pool, "delete"), c.subj.Client(pool, "rejected")},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("natsbus: client %s: %w", pool, err)
	}
	var mu sync.Mutex // one KeyStore call at a time
	handle := func(m jetstream.Msg) {
		mu.Lock()
		defer mu.Unlock()
		what := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
		if err := c.clientMessage(ctx, pool, what, m.Data(), ks, o); err != nil {
			o.OnError(fmt.Errorf("natsbus: client %s: %s: %w", pool, what, err))
		}
	}
	cc, err := cons.Consume(handle)
	if err != nil {
		return nil, fmt.Errorf("natsbus: client %s: %w", pool, err)
	}
	return cc.Stop, nil
}

func (c *Client) clientMessage(ctx context.Context, pool, what string, data []byte, ks KeyStore, o ClientOptions) error {
	switch what {
	case "generate":
		var req events.ClientGenerate
		if err := json.Unmarshal(data, &req); err != nil {
			return err
		}
		if req.Count <= 0 {
			return nil
		}
		kps, err := ks.Generate(ctx, req)
		if err != nil {
			return err
		}
		for _, kp := range kps {
			if _, err := c.Publish(ctx, events.Event{Type: events.TypeSubmitted, Pool: pool, KeyPackage: kp, RequestID: req.RequestID}); err != nil {
				return err
			}
		}
	case "delete":
		var d events.ClientDelete
		if err := json.Unmarshal(data, &d); err != nil {
			return err
		}
		if err := ks.Delete(ctx, d.Refs); err != nil {
			return err
		}
		_, err := c.Publish(ctx, events.Event{Type: events.TypeDeleted, Pool: pool, Refs: d.Refs})
		return err
	case "rejected":
		var r events.ClientRejected
		if err := json.Unmarshal(data, &r); err != nil {
			return err
		}
		if r.Ref != "" { // kpool will not track it: nothing should ever use it
			if err := ks.Delete(ctx, []string{r.Ref}); err != nil {
				return err
			}
		}
		if o.OnRejected != nil {
			o.OnRejected(r)
		}
	}
	return nil
}

// SendInventory reports every ref the KeyStore holds (at start-up, or any time): kpool
// answers with delete instructions for refs it does not know and retires the ones the
// client no longer holds.
func (c *Client) SendInventory(ctx context.Context, pool string, ks KeyStore) error {
	refs, err := ks.Refs(ctx)
	if err != nil {
		return fmt.Errorf("natsbus: inventory of %s: %w", pool, err)
	}
	if refs == nil {
		refs = []string{}
	}
	_, err = c.Publish(ctx, events.Event{Type: events.TypeInventory, Pool: pool, Refs: refs})
	return err
}

// Submit publishes one KeyPackage the client generated (answering requestID, if any).
func (c *Client) Submit(ctx context.Context, pool string, keyPackage []byte, requestID string) error {
	_, err := c.Publish(ctx, events.Event{Type: events.TypeSubmitted, Pool: pool, KeyPackage: keyPackage, RequestID: requestID})
	return err
}

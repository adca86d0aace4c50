package natsbus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishOutbound publishes one outbox message on its subject with Nats-Msg-Id = o.ID, so a
// re-send after a crash is deduplicated by the stream that captures it.
func PublishOutbound(ctx context.Context, js jetstream.JetStream, s events.Subjects, o events.Outbound) error {
	if err := events.ValidPoolID(o.Pool); err != nil {
		return fmt.Errorf("natsbus: outbox message %s: %w", o.ID, err)
	}
	if _, err := js.Publish(ctx, s.Outbound(o.Kind, o.Pool), o.Body, jetstream.WithMsgID(o.ID)); err != nil {
		return fmt.Errorf("natsbus: relay %s %s: %w", o.Kind, o.ID, err)
	}
	return nil
}

// PublishOutboundAsync publishes an outbox message without waiting for the stream's
// acknowledgement (see PublishOutbound); the future says whether it was stored.
func PublishOutboundAsync(js jetstream.JetStream, s events.Subjects, o events.Outbound) (jetstream.PubAckFuture, error) {
	if err := events.ValidPoolID(o.Pool); err != nil {
		return nil, fmt.Errorf("natsbus: outbox message %s: %w", o.ID, err)
	}
	f, err := js.PublishAsync(s.Outbound(o.Kind, o.Pool), o.Body, jetstream.WithMsgID(o.ID))
	if err != nil {
		return nil, fmt.Errorf("natsbus: relay %s %s: %w", o.Kind, o.ID, err)
	}
	return f, nil
}

// MaxDeadLetterData bounds the copy of the rejected payload in a dead letter.
const MaxDeadLetterData = 1024

// NewDeadLetter builds the dead letter for a rejected input.
func NewDeadLetter(subject, eventID, code, reason string, data []byte, at time.Time) events.DeadLetter {
	d := events.DeadLetter{Subject: subject, EventID: eventID, Code: code, Reason: reason, Time: at.UTC()}
	if len(data) > MaxDeadLetterData {
		d.Data = string(data[:MaxDeadLetterData]) + "…"
	} else {
		d.Data = string(data)
	}
	return d
}

// PublishDeadLetter publishes a dead letter. msgID (e.g. derived from the rejected
// message's stream sequence) lets a redelivered bad message produce one dead letter only.
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, s events.Subjects, d events.DeadLetter, msgID string) error {
	data, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if _, err := js.Publish(ctx, s.DeadLetter(), data, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("natsbus: dead letter: %w", err)
	}
	return nil
}

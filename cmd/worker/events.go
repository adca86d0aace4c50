package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go"
)

func init() {
	register(command{name: "events publish", summary: "publish an inbound event (upload_ack, claimed, expiry_tick, ...)", run: eventsPublish})
	register(command{name: "events tail", summary: "print what kpool publishes (status, uploads, transitions, alerts, dead letters)", run: eventsTail})
}

func eventsPublish(args []string, stdout, stderr io.Writer) int {
	var ev events.Event
	var typ, at, raw string
	c, fs, closeFn, err := clientCommand("events publish", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&typ, "type", "", "event type: upload_ack, upload_rejected, claimed, consumed, expiry_tick, replenish")
		fs.StringVar(&ev.Pool, "pool", "", "pool id (empty for an expiry_tick of every pool)")
		fs.StringVar(&ev.Ref, "ref", "", "KeyPackageRef, lowercase hex")
		fs.StringVar(&ev.Reason, "reason", "", "upload_rejected: the delivery service's reason")
		fs.BoolVar(&ev.Retry, "retry", false, "upload_rejected: transient, upload again")
		fs.StringVar(&ev.ID, "id", "", "event id (default: random)")
		fs.StringVar(&at, "time", "", "event time, RFC 3339 (default: now)")
		fs.StringVar(&raw, "json", "", "the whole event as JSON instead of the flags ('-' reads stdin)")
	})
	if err != nil {
		return 2
	}
	defer closeFn()
	if fs.NArg() == 1 && typ == "" {
		typ = fs.Arg(0) // `events publish upload_ack --pool p --ref r`
	}
	if raw != "" {
		data := []byte(raw)
		if raw == "-" {
			if data, err = io.ReadAll(os.Stdin); err != nil {
				return cliFail(stderr, "events publish", err)
			}
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil {
			return cliFail(stderr, "events publish", fmt.Errorf("--json: %w", err))
		}
	} else {
		ev.Type = events.Type(typ)
	}
	if at != "" {
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return cliFail(stderr, "events publish", fmt.Errorf("--time %q: %w", at, err))
		}
		ev.Time = t
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sent, err := c.Publish(ctx, ev)
	if err != nil {
		return cliFail(stderr, "events publish", err)
	}
	printJSON(stdout, sent)
	return 0
}

func eventsTail(args []string, stdout, stderr io.Writer) int {
	var pool string
	fs := flag.NewFlagSet("worker events tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs, defaultClientURL)
	fs.StringVar(&pool, "pool", "", "only this pool (default: every pool)")
	if err := fs.Parse(reorder(args)); err != nil {
		return 2
	}
	kinds := fs.Args()
	if len(kinds) == 0 {
		kinds = []string{"status", "upload", "withdraw", "transitions", "alerts", "deadletter"}
	}
	nc, err := cf.connect("kpool-tail")
	if err != nil {
		return cliFail(stderr, "events tail", err)
	}
	defer nc.Close()
	s := events.Subjects{Prefix: cf.prefix}
	p := pool
	if p == "" {
		p = "*"
	}
	for _, k := range kinds {
		subject := s.Outbound(events.Kind(k), p)
		if k == "deadletter" {
			subject = s.DeadLetter()
		}
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
			fmt.Fprintf(stdout, "%s %s\n", m.Subject, m.Data)
		}); err != nil {
			return cliFail(stderr, "events tail", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0
}

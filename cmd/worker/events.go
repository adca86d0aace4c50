package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
)

func eventsCmd() *cobra.Command {
	return group("events", "publish inbound events and follow what kpool publishes",
		eventsPublishCmd(), eventsTailCmd())
}

// refEvents are the types that act on one KeyPackage: the worker answers each with a
// transition (or a refused one, or a dead letter) carrying the event's id.
var refEvents = []events.Type{events.TypeUploadAck, events.TypeUploadRejected, events.TypeClaimed, events.TypeConsumed}

func eventsPublishCmd() *cobra.Command {
	var c client
	var ev events.Event
	var typ, at, raw string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "publish [TYPE] [flags]",
		Short: "publish an inbound event (upload_ack, claimed, expiry_tick, ...)",
		Long: "Publish an event on the inbound stream. The worker applies it asynchronously: without\n" +
			"--wait, exit 0 means JetStream stored it, and a refusal shows up only as a dead letter\n" +
			"(`worker events tail deadletter`). --wait follows an event that names a KeyPackage\n" +
			"(upload_ack, upload_rejected, claimed, consumed) to its transition, and exits 1 when\n" +
			"the worker refuses it.",
		Args: atMostOne("event type"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if typ != "" {
					return usagef("the type is given twice (%q and --type %q)", args[0], typ)
				}
				typ = args[0] // `events publish upload_ack --pool p --ref r`
			}
			if raw != "" {
				if err := decodeEventJSON(cmd.InOrStdin(), raw, &ev); err != nil {
					return err
				}
			} else {
				ev.Type = events.Type(typ)
			}
			if at != "" {
				t, err := time.Parse(time.RFC3339Nano, at)
				if err != nil {
					return usagef("--time %q: %w", at, err)
				}
				ev.Time = t
			}
			if wait && !slices.Contains(refEvents, ev.Type) {
				return usagef("--wait follows events that name a KeyPackage (%s); %s has no per-event answer (for replenish, `worker pool replenish` answers synchronously)", typeList(refEvents), ev.Type)
			}
			if ev.ID == "" {
				ev.ID = natsbus.NewEventID() // known before publishing, to match the verdict
			}
			if ev.Time.IsZero() {
				ev.Time = time.Now().UTC()
			}
			// A malformed event is a usage error, found before dialling.
			if !slices.Contains(events.PublicTypes, ev.Type) {
				return usagef("%q is not a type other services publish (%s)", ev.Type, typeList(events.PublicTypes))
			}
			if err := events.Validate(ev); err != nil {
				return usageError{err}
			}
			if err := c.dial(); err != nil {
				return err
			}
			defer c.close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var verdicts <-chan verdict
			if wait {
				var err error
				if verdicts, err = followVerdict(ctx, &c, ev); err != nil {
					return err
				}
			}
			sent, err := c.Publish(ctx, ev)
			if err != nil {
				return c.hint(err)
			}
			printJSON(cmd.OutOrStdout(), sent)
			if !wait {
				fmt.Fprintln(cmd.ErrOrStderr(), "published; the worker applies it asynchronously (a refusal goes to the dead letters; --wait follows it)")
				return nil
			}
			select {
			case v := <-verdicts:
				if v.err != nil {
					return v.err
				}
				printJSON(cmd.OutOrStdout(), v.applied)
				return nil
			case <-ctx.Done():
				return fmt.Errorf("no verdict on event %s within %v %s", ev.ID, timeout, noWorkerHint)
			}
		},
	}
	c.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&typ, "type", "", "event type: "+typeList(events.PublicTypes))
	fs.StringVar(&ev.Pool, "pool", "", "pool id (empty for an expiry_tick of every pool)")
	fs.StringVar(&ev.Ref, "ref", "", "KeyPackageRef, lowercase hex")
	fs.StringVar(&ev.Reason, "reason", "", "upload_rejected: the delivery service's reason")
	fs.BoolVar(&ev.Retry, "retry", false, "upload_rejected: transient, upload again")
	fs.StringVar(&ev.ID, "id", "", "event id (default: random)")
	fs.StringVar(&at, "time", "", "event time, RFC 3339 (default: now)")
	fs.StringVar(&raw, "json", "", "the whole event as JSON instead of the flags ('-' reads stdin)")
	fs.BoolVar(&wait, "wait", false, "wait for the worker's verdict; exit 1 when it refuses the event")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the publish (and, with --wait, the verdict)")
	return cmd
}

func typeList(ts []events.Type) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}

func decodeEventJSON(stdin io.Reader, raw string, ev *events.Event) error {
	data := []byte(raw)
	if raw == "-" {
		var err error
		if data, err = io.ReadAll(stdin); err != nil {
			return err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(ev); err != nil {
		return usagef("--json: %w", err)
	}
	return nil
}

// followVerdict subscribes, before the event is published, to what the worker says about
// it: a transition carrying its id (applied, or refused when Error is set) or a dead
// letter. A refusal arrives as an error.
func followVerdict(ctx context.Context, c *client, ev events.Event) (<-chan verdict, error) {
	out := make(chan verdict, 2)
	stopT, err := c.SubscribeTransitions(ev.Pool, func(t events.Transition) {
		switch {
		case t.EventID != ev.ID:
		case t.Error != "":
			out <- verdict{err: fmt.Errorf("event %s refused: %s", ev.ID, t.Error)}
		default:
			out <- verdict{applied: &t}
		}
	})
	if err != nil {
		return nil, err
	}
	stopD, err := c.SubscribeDeadLetters(func(d events.DeadLetter) {
		if d.EventID == ev.ID {
			out <- verdict{err: fmt.Errorf("event %s refused (dead letter %s): %s", ev.ID, d.Code, d.Reason)}
		}
	})
	if err != nil {
		stopT()
		return nil, err
	}
	context.AfterFunc(ctx, func() { stopT(); stopD() })
	// The subscriptions are on the server before the event is.
	if err := c.nc.FlushWithContext(ctx); err != nil {
		return nil, err
	}
	return out, nil
}

// verdict is the worker's answer to one event: the transition it made, or why it refused.
type verdict struct {
	applied *events.Transition
	err     error
}

// tailKinds are what `events tail` can follow, by singular name, with their subjects.
var tailKinds = []string{"status", "upload", "withdraw", "transition", "alert", "deadletter"}

func tailSubject(s events.Subjects, kind, pool string) string {
	switch kind {
	case "status":
		return s.Outbound(events.KindStatus, pool)
	case "upload":
		return s.Outbound(events.KindUpload, pool)
	case "withdraw":
		return s.Outbound(events.KindWithdraw, pool)
	case "transition":
		return s.Outbound(events.KindTransition, pool)
	case "alert":
		return s.Outbound(events.KindAlert, pool)
	default: // deadletter: one subject for every pool
		return s.DeadLetter()
	}
}

func eventsTailCmd() *cobra.Command {
	var c client
	var pool string
	cmd := &cobra.Command{
		Use:   "tail [KIND...] [--pool P]",
		Short: "print what kpool publishes (status, upload, withdraw, transition, alert, deadletter)",
		Long: "Print every message kpool publishes from now on, one line each: the subject, then the\n" +
			"JSON body. KIND narrows it to some of: " + strings.Join(tailKinds, ", ") + "\n" +
			"(default: all). --pool narrows it to one pool; dead letters are never per pool.",
		RunE: func(cmd *cobra.Command, args []string) error {
			kinds := args
			if len(kinds) == 0 {
				kinds = tailKinds
			}
			for _, k := range kinds {
				if !slices.Contains(tailKinds, k) {
					return usagef("unknown kind %q (kinds: %s)", k, strings.Join(tailKinds, ", "))
				}
			}
			p := "*"
			if pool != "" {
				if err := events.ValidPoolID(pool); err != nil {
					return usagef("--pool: %w", err)
				}
				p = pool
			}
			if err := c.dialFollowing(cmd.ErrOrStderr()); err != nil {
				return err
			}
			defer c.close()
			stdout := &lockedWriter{w: cmd.OutOrStdout()} // each subscription has its own goroutine
			s := events.Subjects{Prefix: c.conn.prefix}
			var subjects []string
			for _, k := range kinds {
				subject := tailSubject(s, k, p)
				if _, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
					fmt.Fprintf(stdout, "%s %s\n", m.Subject, m.Data)
				}); err != nil {
					return err
				}
				subjects = append(subjects, subject)
			}
			if err := c.nc.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "tailing %s at %s (Ctrl-C to stop)\n", strings.Join(subjects, ", "), c.nc.ConnectedUrlRedacted())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
	c.register(cmd)
	cmd.Flags().StringVar(&pool, "pool", "", "only this pool (default: every pool)")
	return cmd
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Package natsbus is kpool's NATS adapter and the Go client other services import: the
// JetStream streams kpool uses, typed publishers for every inbound event, subscribers for
// status, alerts, uploads and dead letters, and calls to the worker's `kpool` micro
// service (register, status, list, replenish, get, take — including opening the sealed
// private bundle a take returns).
package natsbus

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Streams names the three JetStream streams of one subject prefix.
type Streams struct {
	Events   string // inbound events: <prefix>.events.>
	Status   string // last status per pool: <prefix>.status.>
	Outbound string // uploads, withdrawals, transitions, alerts, dead letters
	Client   string // client custody: <prefix>.client.> (generate, delete, rejected)
}

var unsafeStreamChars = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// StreamNames derives stream names from a subject prefix ("kpool" → KPOOL_EVENTS, ...), so
// several prefixes can share one NATS account.
func StreamNames(prefix string) Streams {
	base := strings.ToUpper(unsafeStreamChars.ReplaceAllString(prefix, "_"))
	return Streams{Events: base + "_EVENTS", Status: base + "_STATUS", Outbound: base + "_OUTBOUND", Client: base + "_CLIENT"}
}

// StreamOptions bounds what the streams keep.
type StreamOptions struct {
	// DuplicateWindow is how long JetStream remembers Nats-Msg-Ids (default 2m). Beyond it
	// the worker's own dedup (every applied event id is stored) still holds.
	DuplicateWindow time.Duration
	// EventsMaxAge bounds the inbound stream (default 30 days): the worker acks messages
	// after commit, and the store keeps the journal for replay.
	EventsMaxAge time.Duration
	// EventsMaxBytes bounds the inbound stream's size (default 1 GiB). When it is full a
	// publish is refused (discard new): the stream is the log of inputs the worker has not
	// all applied yet, so dropping the oldest would lose them.
	EventsMaxBytes int64
	// EventsMaxPerSubject is each pool's publish budget per event type: at most this many
	// messages per subject <prefix>.events.<pool>.<type> (and per worker input subject)
	// within EventsMaxAge (default 100 000); further publishes on that subject are refused
	// while other pools go on. One pool's publisher cannot fill the stream for the others.
	EventsMaxPerSubject int64
	// OutboundMaxAge bounds uploads, transitions, alerts and dead letters (default 7 days).
	OutboundMaxAge time.Duration
	// OutboundMaxBytes bounds that stream's size (default 1 GiB; the oldest messages go
	// first: a lost upload is sent again after upload_timeout, and dead letters and
	// transitions are reports). Refused inputs each add a dead letter, so without it a
	// publisher could grow the store through refusals alone.
	OutboundMaxBytes int64
	// Replicas for clustered deployments (default 1).
	Replicas int
	// Partitions spreads the inbound stream over this many partitions with a subject
	// transform (scale-out; 0 or 1: none). It is fixed per deployment: EnsureStreams
	// refuses to change it (docs/scale-out.md, "Changing P").
	Partitions int
}

// Stream limit defaults (docs/events.md, "Limits").
const (
	DefaultStreamMaxBytes      = 1 << 30
	DefaultEventsMaxPerSubject = 100_000
)

func (o StreamOptions) withDefaults() StreamOptions {
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = 2 * time.Minute
	}
	if o.EventsMaxAge <= 0 {
		o.EventsMaxAge = 30 * 24 * time.Hour
	}
	if o.OutboundMaxAge <= 0 {
		o.OutboundMaxAge = 7 * 24 * time.Hour
	}
	if o.EventsMaxBytes <= 0 {
		o.EventsMaxBytes = DefaultStreamMaxBytes
	}
	if o.EventsMaxPerSubject <= 0 {
		o.EventsMaxPerSubject = DefaultEventsMaxPerSubject
	}
	if o.OutboundMaxBytes <= 0 {
		o.OutboundMaxBytes = DefaultStreamMaxBytes
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	return o
}

// StreamConfigs returns the stream configurations for a prefix.
func StreamConfigs(s events.Subjects, o StreamOptions) []jetstream.StreamConfig {
	o = o.withDefaults()
	n := StreamNames(s.Prefix)
	return []jetstream.StreamConfig{
		{
			Name:        n.Events,
			Description: "kpool inputs: inbound events and the worker's own inputs, in the order they are applied",
			Subjects:    []string{s.Events(), s.Inputs()},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      o.EventsMaxAge,
			MaxMsgSize:  events.MaxEventSize * 4, // larger ones still reach the worker and are dead-lettered with a reason
			// Full means refuse the publish, never drop an input the worker has not applied.
			MaxBytes:             o.EventsMaxBytes,
			MaxMsgsPerSubject:    o.EventsMaxPerSubject,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			Duplicates:           o.DuplicateWindow,
			Replicas:             o.Replicas,
			SubjectTransform:     partitionTransform(s, o.Partitions),
		},
		{
			// One message per subject: a new subscriber gets each pool's current status at once.
			Name:              n.Status,
			Description:       "kpool pool status, last value per pool",
			Subjects:          []string{s.Prefix + "." + string(events.KindStatus) + ".>"},
			Storage:           jetstream.FileStorage,
			MaxMsgsPerSubject: 1,
			Duplicates:        o.DuplicateWindow,
			AllowDirect:       true,
			Replicas:          o.Replicas,
		},
		{
			Name:        n.Outbound,
			Description: "kpool uploads, withdrawals, transitions, alerts and dead letters",
			Subjects: []string{
				s.Prefix + "." + string(events.KindUpload) + ".>",
				s.Prefix + "." + string(events.KindWithdraw) + ".>",
				s.Prefix + "." + string(events.KindTransition) + ".>",
				s.Prefix + "." + string(events.KindAlert) + ".>",
				s.DeadLetter(),
			},
			Storage:    jetstream.FileStorage,
			MaxAge:     o.OutboundMaxAge,
			MaxBytes:   o.OutboundMaxBytes,
			Duplicates: o.DuplicateWindow,
			Replicas:   o.Replicas,
		},
		{
			// A client that comes online reads the last message of each of its subjects
			// (its pool's current demand) and then follows new ones.
			Name:        n.Client,
			Description: "kpool instructions to MLS clients that hold their pools' keys: generate, delete, rejected",
			Subjects:    []string{s.Prefix + ".client.>"},
			Storage:     jetstream.FileStorage,
			MaxAge:      o.OutboundMaxAge,
			Duplicates:  o.DuplicateWindow,
			Replicas:    o.Replicas,
		},
	}
}

// ErrNoJetStream means the NATS server does not have JetStream enabled.
var ErrNoJetStream = errors.New("natsbus: JetStream is not enabled on the NATS server (kpool needs it)")

// EnsureStreams creates kpool's streams if absent. An existing stream is left as the
// operator configured it (replicas, limits, placement), except that its subjects are
// extended when kpool's are missing. It is idempotent; the worker calls it on every start.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, s events.Subjects, o StreamOptions) error {
	for _, cfg := range StreamConfigs(s, o) {
		st, err := js.Stream(ctx, cfg.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			_, err = js.CreateStream(ctx, cfg)
		case err == nil:
			existing := st.CachedInfo().Config
			if err := samePartitions(existing, cfg); err != nil {
				return err
			}
			if missing := missingSubjects(existing.Subjects, cfg.Subjects); len(missing) > 0 {
				existing.Subjects = append(existing.Subjects, missing...)
				_, err = js.UpdateStream(ctx, existing)
			}
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return ErrNoJetStream
		}
		if err != nil {
			return fmt.Errorf("natsbus: stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

func partitionTransform(s events.Subjects, n int) *jetstream.SubjectTransformConfig {
	if n <= 1 {
		return nil
	}
	src, dest := s.PartitionTransform(n)
	return &jetstream.SubjectTransformConfig{Source: src, Destination: dest}
}

// ErrPartitionsChanged means the inbound stream is partitioned differently from what the
// worker was started with.
var ErrPartitionsChanged = errors.New("natsbus: the inbound stream's partitions differ from the worker's")

// samePartitions refuses a start whose partition count differs from the stream's: pools
// would move to other partitions while their state stays behind.
func samePartitions(have, want jetstream.StreamConfig) error {
	h, w := "none", "none"
	if have.SubjectTransform != nil {
		h = have.SubjectTransform.Destination
	}
	if want.SubjectTransform != nil {
		w = want.SubjectTransform.Destination
	}
	if h != w && (have.SubjectTransform != nil || want.SubjectTransform != nil) && have.Name == want.Name {
		return fmt.Errorf("%w: stream %s transforms to %q, the worker wants %q; changing the number of partitions is an offline procedure (docs/scale-out.md)", ErrPartitionsChanged, have.Name, h, w)
	}
	return nil
}

func missingSubjects(have, want []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(have, w) {
			out = append(out, w)
		}
	}
	return out
}

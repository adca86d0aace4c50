package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
)

// bestEffortID pulls the id out of a payload that failed validation, for the dead letter.
func bestEffortID(data []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	if len(data) > events.MaxEventSize || json.Unmarshal(data, &v) != nil || len(v.ID) > events.MaxIDLength {
		return ""
	}
	return v.ID
}

// edgeError is a rejection decided at the edge, before the core.
type edgeError struct{ code, reason, ref string }

func (e *edgeError) Error() string { return e.reason }

// codeOf maps any rejection to its stable code and reason.
func codeOf(err error) (code, reason string) {
	var ee *edgeError
	var re *pool.RejectError
	var ie *persistence.InputError
	switch {
	case errors.As(err, &ee):
		return ee.code, ee.reason
	case errors.As(err, &re):
		return re.Code, re.Error()
	case errors.As(err, &ie):
		return CodeStore, ie.Error()
	}
	return events.Code(err), err.Error()
}

// deadLetter reports a refused input on <prefix>.deadletter. Its Nats-Msg-Id is derived
// from the stream sequence, so an input re-read after a crash yields one dead letter.
func (w *Worker) deadLetter(in inbound, eventID string, cause error) {
	if eventID == "" {
		eventID = bestEffortID(in.data)
	}
	code, reason := codeOf(cause)
	w.metrics.deadLetters.WithLabelValues(code).Inc()
	d := natsbus.NewDeadLetter(in.subject, eventID, code, reason, in.data, w.cfg.Clock())
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	msgID := "dl-" + w.streams.Events + "-" + strconv.FormatUint(in.seq, 10)
	if err := natsbus.PublishDeadLetter(ctx, w.js, w.subj, d, msgID); err != nil {
		w.log.Error("dead letter not published", "code", code, "reason", reason, "err", err)
		return
	}
	w.log.Info("dead letter", "subject", in.subject, "event", eventID, "code", code, "reason", reason)
}

// refusedOutbound is the transition-log record of a refused input, for the outbox.
func refusedOutbound(t events.Transition, seq uint64) events.Outbound {
	body, _ := json.Marshal(t) // a plain struct
	return events.Outbound{ID: "refused-" + strconv.FormatUint(seq, 10), Kind: events.KindTransition, Pool: t.Pool, Body: body}
}

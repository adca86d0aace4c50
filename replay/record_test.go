package replay

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
)

// recorder plays the worker and the delivery service around a real core to record
// realistic golden logs: it answers every generate request at once with a real,
// deterministic RFC 9420 KeyPackage (suite 1, seeded keys, times from the core's clock,
// exactly as worker/generate.go does) and writes every input to a log.
type recorder struct {
	t       testing.TB
	core    *pool.Core
	mem     *MemTarget
	buf     bytes.Buffer
	w       *events.LogWriter
	seq     uint64
	now     time.Time
	rand    *rand.ChaCha8
	subj    events.Subjects
	signers map[string]mls.Signer
	n       int // event id counter
	// created holds each pool's refs awaiting an upload ack, in order of generation.
	created map[string][]string
	// available holds each pool's acknowledged refs, oldest first.
	available  map[string][]string
	lastResort map[string]string
}

var recordOrigin = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func newRecorder(t testing.TB, source string) *recorder {
	r := &recorder{t: t, core: &pool.Core{Defaults: pool.DefaultConfig()}, now: recordOrigin,
		rand: rand.NewChaCha8([32]byte{'k', 'p', 'o', 'o', 'l'}), subj: events.Subjects{Prefix: events.DefaultPrefix},
		signers: map[string]mls.Signer{}, created: map[string][]string{}, available: map[string][]string{}, lastResort: map[string]string{}}
	r.mem = NewMem(r.core)
	w, err := events.NewLogWriter(&r.buf, events.LogHeader{Source: source})
	if err != nil {
		t.Fatal(err)
	}
	r.w = w
	return r
}

func (r *recorder) advance(d time.Duration) { r.now = r.now.Add(d) }

func (r *recorder) id(kind string) string {
	r.n++
	return fmt.Sprintf("%s-%04d", kind, r.n)
}

// write appends ev to the log without applying it (for scenarios that need raw lines).
func (r *recorder) write(ev events.Event) {
	r.seq++
	if err := r.w.Write(events.LogRecord{Seq: r.seq, Subject: r.subj.Event(ev.Pool, ev.Type), Event: ev}); err != nil {
		r.t.Fatal(err)
	}
}

// input records and applies one input, then fulfils the generate requests it caused.
func (r *recorder) input(ev events.Event) error {
	r.write(ev)
	ready, rejected, err := r.mem.Step(context.Background(), ev)
	if err != nil {
		r.t.Fatal(err)
	}
	if rejected != nil {
		return rejected
	}
	if ready.Duplicate {
		return nil
	}
	for _, o := range ready.Outbox {
		if o.Kind != events.KindUpload {
			continue
		}
		var u events.Upload
		if err := json.Unmarshal(o.Body, &u); err != nil {
			r.t.Fatal(err)
		}
		if u.Attempt == 1 {
			r.created[u.Pool] = append(r.created[u.Pool], u.Ref)
		}
	}
	for _, g := range ready.Generate {
		for range g.Count {
			r.generate(g.Pool, g.LastResort)
		}
	}
	return nil
}

func (r *recorder) must(ev events.Event) {
	r.t.Helper()
	if err := r.input(ev); err != nil {
		r.t.Fatalf("%s %s: %v", ev.Type, ev.ID, err)
	}
}

func (r *recorder) register(id string, pol events.Policy) {
	priv, pub, err := mls.NewSignatureKey(mls.CipherSuite(1), r.rand)
	if err != nil {
		r.t.Fatal(err)
	}
	s, err := mls.SignerFromPrivate(mls.CipherSuite(1), priv)
	if err != nil {
		r.t.Fatal(err)
	}
	r.signers[id] = s
	r.must(events.Event{ID: r.id("reg"), Type: events.TypePoolRegistered, Time: r.now, Pool: id,
		Register: &events.Register{Identity: id + "@example.org", CipherSuite: 1, SignatureKey: pub, Policy: pol}})
}

// generate mints like worker/generate.go: lifetime from the pool's config around the
// core's time, id "gen-<ref>".
func (r *recorder) generate(poolID string, lastResort bool) {
	p, _, _ := r.mem.Store.Pool(poolID)
	m, _ := r.mem.Store.Meta()
	now := m.Time
	nb, na := now.Add(-p.Config.NotBeforeBackdate).Unix(), now.Add(p.Config.Lifetime).Unix()
	kp, _, err := mls.Generate(mls.CipherSuite(1), r.signers[poolID], []byte(p.Identity), mls.GenerateOptions{
		NotBefore: uint64(nb), NotAfter: uint64(na), Now: now, LastResort: lastResort, Rand: r.rand})
	if err != nil {
		r.t.Fatal(err)
	}
	ref, err := kp.Ref()
	if err != nil {
		r.t.Fatal(err)
	}
	h := hex.EncodeToString(ref)
	if lastResort {
		r.lastResort[poolID] = h
	}
	r.must(events.Event{ID: "gen-" + h, Type: events.TypeGenerated, Time: now, Pool: poolID,
		Generated: &events.Generated{Ref: h, KeyPackage: mls.MarshalMLSMessage(kp), NotBefore: nb, NotAfter: na, LastResort: lastResort}})
}

func (r *recorder) ev(t events.Type, poolID, ref string) events.Event {
	return events.Event{ID: r.id(string(t)), Type: t, Time: r.now, Pool: poolID, Ref: ref}
}

// ackAll acknowledges every upload in flight for the pool.
func (r *recorder) ackAll(poolID string) {
	for len(r.created[poolID]) > 0 {
		ref := r.created[poolID][0]
		r.created[poolID] = r.created[poolID][1:]
		r.must(r.ev(events.TypeUploadAck, poolID, ref))
		r.available[poolID] = append(r.available[poolID], ref)
	}
}

// claim hands out the oldest regular available KeyPackage; ok is false when only the
// last resort is left.
func (r *recorder) claim(poolID string) (string, bool) {
	for i, ref := range r.available[poolID] {
		if ref == r.lastResort[poolID] {
			continue
		}
		r.available[poolID] = append(r.available[poolID][:i:i], r.available[poolID][i+1:]...)
		r.must(r.ev(events.TypeClaimed, poolID, ref))
		return ref, true
	}
	return "", false
}

func (r *recorder) tick() {
	r.must(events.Event{ID: r.id("tick"), Type: events.TypeExpiryTick, Time: r.now})
}

// raw appends a line as is (for bad-line scenarios).
func (r *recorder) raw(line string) {
	if err := r.w.Flush(); err != nil {
		r.t.Fatal(err)
	}
	r.buf.WriteString(line + "\n")
}

func (r *recorder) bytes() []byte {
	if err := r.w.Flush(); err != nil {
		r.t.Fatal(err)
	}
	return r.buf.Bytes()
}

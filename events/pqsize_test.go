package events_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
)

// The largest KeyPackage kpool makes — post-quantum suite 85/86, ML-KEM-1024 keys and two
// ML-DSA-87 signatures, about 15 KB — fits every size limit on the event path with an
// identity of up to 1 KiB, as docs/events.md ("Size limits") promises: the generated event
// decodes, its log line writes and reads back, a register with an ML-DSA-87 key decodes,
// and the inbound stream takes messages of MaxEventSize.
func TestLargestPQKeyPackageFitsTheLimits(t *testing.T) {
	now := time.Unix(1_800_000_000, 0).UTC()
	priv, pub, err := mls.NewSignatureKey(85, nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := mls.SignerFromPrivate(85, priv)
	if err != nil {
		t.Fatal(err)
	}
	kp, _, err := mls.Generate(85, signer, []byte(strings.Repeat("i", 1024)), mls.GenerateOptions{Now: now, LastResort: true})
	if err != nil {
		t.Fatal(err)
	}
	msg := mls.MarshalMLSMessage(kp)
	if len(msg) < 16_000 {
		t.Fatalf("KeyPackage of %d bytes; this test wants the largest", len(msg))
	}
	ref, _ := kp.Ref()
	ev := events.Event{
		ID: strings.Repeat("e", events.MaxIDLength), Type: events.TypeGenerated, Time: now, Pool: strings.Repeat("p", 64),
		Generated: &events.Generated{Ref: hex.EncodeToString(ref), KeyPackage: msg, NotBefore: 1, NotAfter: 2, LastResort: true},
	}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > events.MaxEventSize {
		t.Fatalf("generated event of %d bytes over MaxEventSize %d", len(data), events.MaxEventSize)
	}
	got, err := events.Decode(data)
	if err != nil || !bytes.Equal(got.Generated.KeyPackage, msg) {
		t.Fatalf("decode: %v", err)
	}

	var log bytes.Buffer
	lw, err := events.NewLogWriter(&log, events.LogHeader{Prefix: "kpool", Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := lw.Write(events.LogRecord{Seq: 1, Subject: events.Subjects{Prefix: "kpool"}.Event(ev.Pool, ev.Type), Event: ev}); err != nil {
		t.Fatal(err)
	}
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	lr, err := events.NewLogReader(&log)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := lr.Next()
	if err != nil || !bytes.Equal(rec.Event.Generated.KeyPackage, msg) {
		t.Fatalf("log line: %v", err)
	}

	reg := events.Event{ID: "r", Type: events.TypePoolRegistered, Time: now, Pool: "pq",
		Register: &events.Register{Identity: strings.Repeat("i", 1024), CipherSuite: 85, SignatureKey: pub}}
	data, _ = json.Marshal(reg)
	if _, err := events.Decode(data); err != nil {
		t.Fatalf("register with an ML-DSA-87 key: %v", err)
	}

	if got := natsbus.StreamConfigs(events.Subjects{Prefix: "kpool"}, natsbus.StreamOptions{})[0].MaxMsgSize; got < events.MaxEventSize {
		t.Fatalf("inbound stream takes %d bytes, less than MaxEventSize", got)
	}
}

func TestKnownCipherSuite(t *testing.T) {
	for s := range 100 {
		want := mls.CipherSuite(s).Valid()
		if got := events.KnownCipherSuite(uint16(s)); got != want {
			t.Errorf("%d: events says %v, mls says %v", s, got, want)
		}
	}
}

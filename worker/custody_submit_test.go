package worker_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
)

// TestClientCustodyRefusesBadSubmissions submits every kind of bad KeyPackage to a full
// client pool: each is refused with its own code, on the dead-letter subject and on the
// client's rejected subject, and nothing is recorded or uploaded.
func TestClientCustodyRefusesBadSubmissions(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	w := startWorker(t, ns.URL(), t.TempDir(), clock)
	nc, c := clockedClient(t, ns.URL(), clock)
	ds := startDS(t, c, true)
	dls := collectDeadLetters(t, c)
	rejected := watchSubject(t, nc, "kpool.client.carol.rejected")

	small := events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)}
	cl := newMLSClient(t, 1, "carol", clock)
	other := newMLSClient(t, 1, "dave", clock)
	for id, m := range map[string]*mlsClient{"carol": cl, "dave": other} {
		if _, err := c.RegisterSealed(ctx(t), id, natsbus.RegisterRequest{Identity: string(id), CipherSuite: 1, Policy: small,
			Custody: events.CustodyClient, SignatureKey: m.signer.Public()}); err != nil {
			t.Fatal(err)
		}
		stop, err := c.RunClient(context.Background(), id, m, natsbus.ClientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
	}
	eventually(t, 30*time.Second, "pools full", func() bool {
		for _, id := range []string{"carol", "dave"} {
			st, err := c.Status(ctx(t), id)
			if err != nil || st.AvailableFresh != 2 || st.LastResortRef == "" || st.Counts.Created != 0 {
				return false
			}
		}
		return true
	})

	now := clock.Now()
	gen := func(suite uint16, signer mls.Signer, identity string, o mls.GenerateOptions) *mls.KeyPackage {
		t.Helper()
		o.Now = now
		kp, bundle, err := mls.Generate(mls.CipherSuite(suite), signer, []byte(identity), o)
		if err != nil {
			t.Fatal(err)
		}
		bundle.Wipe()
		return kp
	}
	valid := func() *mls.KeyPackage { return gen(1, cl.signer, "carol", mls.GenerateOptions{}) }
	suite3Priv, _, err := mls.NewSignatureKey(3, nil)
	if err != nil {
		t.Fatal(err)
	}
	suite3, err := mls.SignerFromPrivate(3, suite3Priv)
	if err != nil {
		t.Fatal(err)
	}
	unix := func(d time.Duration) uint64 { return uint64(now.Add(d).Unix()) }
	day := 24 * time.Hour
	msg := mls.MarshalMLSMessage

	cases := []struct {
		name string
		kp   []byte
		ev   func(*events.Event)
		code string
	}{
		{"bad signature", func() []byte { kp := valid(); kp.Signature[3] ^= 1; return msg(kp) }(), nil, worker.CodeBadSignature},
		{"another signature key", msg(gen(1, other.signer, "carol", mls.GenerateOptions{})), nil, worker.CodeWrongSignatureKey},
		{"another identity", msg(gen(1, cl.signer, "mallory", mls.GenerateOptions{})), nil, worker.CodeWrongIdentity},
		{"another suite", msg(gen(3, suite3, "carol", mls.GenerateOptions{})), nil, worker.CodeWrongSuite},
		{"lifetime too long", msg(gen(1, cl.signer, "carol", mls.GenerateOptions{NotBefore: unix(-time.Hour), NotAfter: unix(100 * day)})), nil, worker.CodeLifetimeTooLong},
		{"already expired", msg(gen(1, cl.signer, "carol", mls.GenerateOptions{NotBefore: unix(-40 * day), NotAfter: unix(-day)})), nil, worker.CodeExpired},
		{"not yet valid beyond the skew", msg(gen(1, cl.signer, "carol", mls.GenerateOptions{NotBefore: unix(time.Hour), NotAfter: unix(30 * day)})), nil, worker.CodeNotYetValid},
		{"init key = encryption key", func() []byte { kp := valid(); kp.InitKey = kp.LeafNode.EncryptionKey; return msg(kp) }(), nil, worker.CodeInitKeyIsEncryption},
		{"missing capability", func() []byte { kp := valid(); kp.LeafNode.Capabilities.Credentials = nil; return msg(kp) }(), nil, worker.CodeMissingCapability},
		{"last_resort when not asked", msg(gen(1, cl.signer, "carol", mls.GenerateOptions{LastResort: true})), nil, pool.CodeNotAsked},
		{"garbage bytes", []byte("not a KeyPackage at all"), nil, worker.CodeInvalidKeyPackage},
		{"a KeyPackage of another pool", msg(gen(1, other.signer, "dave", mls.GenerateOptions{})), nil, worker.CodeWrongSignatureKey},
		{"more than asked", msg(valid()), nil, pool.CodeOverCap},
		{"validated fields sent by the client", msg(valid()), func(e *events.Event) {
			e.Generated = &events.Generated{Ref: hex.EncodeToString(make([]byte, 32)), KeyPackage: []byte{1}, NotBefore: 1, NotAfter: 2}
		}, worker.CodeInternalField},
	}
	before := poolRecord(t, w, "carol")
	uploads := ds.count()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := events.Event{Type: events.TypeSubmitted, Pool: "carol", KeyPackage: tc.kp, RequestID: "test"}
			if tc.ev != nil {
				tc.ev(&ev)
			}
			sent, err := c.Publish(ctx(t), ev)
			if err != nil {
				t.Fatal(err)
			}
			var got events.ClientRejected
			eventually(t, 20*time.Second, "rejected message", func() bool {
				for _, r := range decodeAll[events.ClientRejected](t, rejected) {
					if r.EventID == sent.ID {
						got = r
						return true
					}
				}
				return false
			})
			if got.Code != tc.code || got.Pool != "carol" || got.RequestID != "test" || got.Reason == "" {
				t.Fatalf("rejected %+v, want code %s", got, tc.code)
			}
			eventually(t, 10*time.Second, "dead letter", func() bool {
				for _, d := range dls.list() {
					if d.EventID == sent.ID {
						if d.Code != tc.code {
							t.Fatalf("dead letter code %s, want %s", d.Code, tc.code)
						}
						return true
					}
				}
				return false
			})
		})
	}
	// a payload that does not decode (key_package not base64) is told to the client too
	raw := []byte(`{"id":"undecodable-1","type":"submitted","time":"` + now.Format(time.RFC3339) + `","pool":"carol","key_package":"not base64!"}`)
	if err := nc.Publish("kpool.events.carol.submitted", raw); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "rejected message for an undecodable submission", func() bool {
		for _, r := range decodeAll[events.ClientRejected](t, rejected) {
			if r.EventID == "undecodable-1" {
				if r.Code != "malformed" || r.Pool != "carol" || !strings.Contains(r.Reason, "base64") {
					t.Fatalf("rejected %+v, want malformed (base64)", r)
				}
				return true
			}
		}
		return false
	})
	after := poolRecord(t, w, "carol")
	if after.Counts != before.Counts || after.StatusSeq != before.StatusSeq || ds.count() != uploads {
		t.Fatalf("bad submissions changed the pool: counts %+v → %+v, uploads %d → %d", before.Counts, after.Counts, uploads, ds.count())
	}
}

// TestClientCustodyAcceptsInteropKeyPackages registers a client pool per KeyPackage of
// an independent implementation (the interop vectors, testdata/README.md) with its own
// identity, suite and signature key, at a time inside its lifetime: each is accepted,
// recorded under its KeyPackageRef and uploaded.
func TestClientCustodyAcceptsInteropKeyPackages(t *testing.T) {
	data, err := os.ReadFile("testdata/interop-keypackages.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []struct {
		Index int    `json:"index"`
		Suite uint16 `json:"cipher_suite"`
		KP    string `json:"mls_key_package"`
	}
	if err := json.Unmarshal(data, &vs); err != nil || len(vs) != 3 {
		t.Fatalf("%d vectors, %v", len(vs), err)
	}
	ns := startNATS(t)
	clock := newClock()
	clock.Advance(time.Unix(1678279716+24*3600, 0).Sub(clock.Now())) // one day into their lifetime
	w := startWorker(t, ns.URL(), t.TempDir(), clock)
	_, c := clockedClient(t, ns.URL(), clock)
	ds := startDS(t, c, true)
	for _, v := range vs {
		raw, _ := hex.DecodeString(v.KP)
		kp, err := mls.DecodeMLSMessage(raw)
		if err != nil || uint16(kp.CipherSuite) != v.Suite {
			t.Fatalf("vector %d: %v", v.Index, err)
		}
		ref, _ := kp.Ref()
		id := "interop" + string(rune('0'+v.Suite))
		if _, err := c.RegisterSealed(ctx(t), id, natsbus.RegisterRequest{Identity: string(kp.LeafNode.Credential.Identity), CipherSuite: v.Suite,
			Policy:  events.Policy{Target: new(1), LowWatermark: new(0), HardCap: new(2), LastResort: new(false)},
			Custody: events.CustodyClient, SignatureKey: kp.LeafNode.SignatureKey}); err != nil {
			t.Fatalf("vector %d: register: %v", v.Index, err)
		}
		if err := c.Submit(ctx(t), id, raw, ""); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "interop KeyPackage available", func() bool {
			kpi, err := c.Get(ctx(t), id, hex.EncodeToString(ref))
			return err == nil && kpi.State == "available"
		})
		if got := ds.refs(id, false); len(got) != 1 || got[0] != hex.EncodeToString(ref) {
			t.Fatalf("vector %d: DS got %v", v.Index, got)
		}
		if p := poolRecord(t, w, id); p.Requested != 0 || p.Counts.Available != 1 {
			t.Fatalf("vector %d: pool %+v", v.Index, p.Counts)
		}
	}
}

// TestClientCustodyEverySuite fills a client-custody pool in each RFC 9420 cipher suite
// with a simulated client's KeyPackages, side by side in one worker (the post-quantum
// suites: TestPQClientCustody).
func TestClientCustodyEverySuite(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	startWorker(t, ns.URL(), t.TempDir(), clock)
	_, c := clockedClient(t, ns.URL(), clock)
	startDS(t, c, true)
	rfcSuites := []mls.CipherSuite{1, 2, 3, 4, 5, 6, 7}
	for _, suite := range rfcSuites {
		id := fmt.Sprintf("s%d", suite)
		cl := newMLSClient(t, uint16(suite), id, clock)
		if _, err := c.RegisterSealed(ctx(t), id, natsbus.RegisterRequest{Identity: id, CipherSuite: uint16(suite),
			Policy:  events.Policy{Target: new(2), LowWatermark: new(1), HardCap: new(4)},
			Custody: events.CustodyClient, SignatureKey: cl.signer.Public()}); err != nil {
			t.Fatalf("suite %d: register: %v", suite, err)
		}
		stop, err := c.RunClient(context.Background(), id, cl, natsbus.ClientOptions{OnError: func(err error) { t.Errorf("suite %d: %v", suite, err) }})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
	}
	for _, suite := range rfcSuites {
		id := fmt.Sprintf("s%d", suite)
		eventually(t, 60*time.Second, "pool "+id+" full", func() bool {
			st, err := c.Status(ctx(t), id)
			return err == nil && st.AvailableFresh == 2 && st.LastResortRef != "" && st.CipherSuite == uint16(suite)
		})
	}
}

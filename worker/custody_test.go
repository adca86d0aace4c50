package worker_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
)

// mlsClient is the simulated MLS client of a client-custody pool: kpool's own mls
// package behind natsbus.MemKeyStore, keys in this process's memory only. It remembers
// every private key byte it ever held, for the leak scan.
type mlsClient struct {
	*natsbus.MemKeyStore
	signPriv []byte
	signer   mls.Signer

	mu      sync.Mutex
	secrets [][]byte // copies of every private key it held
	asks    []events.ClientGenerate
}

func newMLSClient(t *testing.T, suite uint16, identity string, clock *testClock) *mlsClient {
	t.Helper()
	priv, _, err := mls.NewSignatureKey(mls.CipherSuite(suite), nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := mls.SignerFromPrivate(mls.CipherSuite(suite), priv)
	if err != nil {
		t.Fatal(err)
	}
	ks := natsbus.NewMemKeyStore(suite, signer, identity)
	ks.Now = clock.Now
	return &mlsClient{MemKeyStore: ks, signPriv: priv, signer: signer, secrets: [][]byte{bytes.Clone(priv)}}
}

// Generate records the private keys it made before handing the KeyPackages over.
func (m *mlsClient) Generate(ctx context.Context, req events.ClientGenerate) ([][]byte, error) {
	out, err := m.MemKeyStore.Generate(ctx, req)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asks = append(m.asks, req)
	for _, b := range out {
		kp, derr := mls.DecodeMLSMessage(b)
		if derr != nil {
			return nil, derr
		}
		ref, _ := kp.Ref()
		if bundle, ok := m.Bundle(hexRef(ref)); ok {
			m.secrets = append(m.secrets, bytes.Clone(bundle.InitPriv), bytes.Clone(bundle.EncryptionPriv))
		}
	}
	return out, err
}

func (m *mlsClient) held(t *testing.T) []string {
	refs, err := m.Refs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

func hexRef(b []byte) string { return hex.EncodeToString(b) }

// clockedClient connects a client that stamps its events with the test's clock.
func clockedClient(t *testing.T, url string, clock *testClock) (*nats.Conn, *natsbus.Client) {
	t.Helper()
	nc, _ := connect(t, url)
	c, err := natsbus.NewClient(nc, natsbus.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	return nc, c
}

// records counts a pool's stored KeyPackages per state.
func records(t *testing.T, w *worker.Worker, id string) map[fsm.State][]string {
	t.Helper()
	out := map[fsm.State][]string{}
	err := w.Store().KeyPackages(id, func(k pool.KeyPackage) bool {
		out[k.State] = append(out[k.State], k.Ref)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func live(r map[fsm.State][]string) []string {
	l := slices.Concat(r[fsm.Created], r[fsm.Available], r[fsm.Claimed])
	slices.Sort(l)
	return l
}

// subjectLog collects the messages of one subject.
type subjectLog struct {
	mu   sync.Mutex
	msgs [][]byte
}

func watchSubject(t *testing.T, nc *nats.Conn, subject string) *subjectLog {
	t.Helper()
	l := &subjectLog{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		l.mu.Lock()
		l.msgs = append(l.msgs, m.Data)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

func (l *subjectLog) n() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.msgs) }

func decodeAll[T any](t *testing.T, l *subjectLog) []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []T
	for _, m := range l.msgs {
		var v T
		if err := json.Unmarshal(m, &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// tick moves the edge clock and kpool's time by d.
func tick(t *testing.T, c *natsbus.Client, clock *testClock, d time.Duration) {
	t.Helper()
	if err := c.ExpiryTick(ctx(t), "", clock.Advance(d)); err != nil {
		t.Fatal(err)
	}
}

// TestClientCustodyEndToEnd runs a client-custody pool beside a kpool-custody pool in one
// worker, with a simulated MLS client that keeps its own keys and a delivery service:
// fill to target, take refused, claims and a refill answered, consumed and the delete
// instruction confirmed, inventory reconciliation both ways, an offline client asked on a
// backoff, expiry to deletion; then a scan that no private key byte of the client
// reached kpool's database, the NATS streams or the logs, and an exact replay.
func TestClientCustodyEndToEnd(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	dir := t.TempDir()
	var logs bytes.Buffer
	var logMu sync.Mutex
	w := startWorker(t, ns.URL(), dir, clock, func(c *worker.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&lockedWriter{w: &logs, mu: &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.JournalRetention = worker.KeepJournal // 96 days of ticks, replayed from seq 1 at the end
	})
	nc, c := clockedClient(t, ns.URL(), clock)
	ds := startDS(t, c, true)
	dls := collectDeadLetters(t, c)
	deletes := watchSubject(t, nc, "kpool.client.carol.delete")
	generates := watchSubject(t, nc, "kpool.client.carol.generate")

	// kpool custody beside client custody
	if _, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil); err != nil {
		t.Fatal(err)
	}
	cl := newMLSClient(t, 1, "carol@example.org", clock)
	info, err := c.RegisterSealed(ctx(t), "carol", natsbus.RegisterRequest{Identity: "carol@example.org", CipherSuite: 1,
		Custody: events.CustodyClient, SignatureKey: cl.signer.Public()})
	if err != nil || info.Custody != events.CustodyClient || !info.Created || info.SealedSignatureKey != nil ||
		info.Policy.DeleteAlertAfter == nil || time.Duration(*info.Policy.DeleteAlertAfter) != 24*time.Hour {
		t.Fatalf("register client pool: %+v, %v", info, err)
	}
	stop, err := c.RunClient(context.Background(), "carol", cl, natsbus.ClientOptions{OnError: func(err error) { t.Logf("client: %v", err) }})
	if err != nil {
		t.Fatal(err)
	}

	full := func(id string) func() bool {
		return func() bool {
			st, err := c.Status(ctx(t), id)
			return err == nil && st.AvailableFresh == 10 && st.LastResortRef != "" && st.Counts.Created == 0
		}
	}
	eventually(t, 30*time.Second, "both pools full", func() bool { return full("alice")() && full("carol")() })
	carol := records(t, w, "carol")
	if got, want := cl.held(t), live(carol); !slices.Equal(got, want) {
		t.Fatalf("client holds %d refs, kpool tracks %d live", len(got), len(want))
	}
	if len(ds.refs("carol", false)) != 10 || len(ds.refs("carol", true)) != 1 {
		t.Fatalf("DS got %d + %d uploads of carol", len(ds.refs("carol", false)), len(ds.refs("carol", true)))
	}
	// the uploads are the client's KeyPackages: signed with its key, its identity
	for _, ref := range ds.refs("carol", false)[:2] {
		kpi, err := c.Get(ctx(t), "carol", ref)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := mls.DecodeMLSMessage(kpi.KeyPackage)
		if err != nil || !bytes.Equal(kp.LeafNode.SignatureKey, cl.signer.Public()) || string(kp.LeafNode.Credential.Identity) != "carol@example.org" {
			t.Fatalf("upload %s is not the client's KeyPackage (%v)", ref, err)
		}
	}
	p := poolRecord(t, w, "carol")
	if p.Custody != events.CustodyClient || p.ClientAsk != (time.Time{}) {
		t.Fatalf("pool record: custody %q, re-ask %v (nothing outstanding)", p.Custody, p.ClientAsk)
	}

	// take is refused for a client pool
	regular := ds.refs("carol", false)
	_, err = c.Take(ctx(t), "carol", regular[0], 1)
	var ae *natsbus.APIError
	if !errors.As(err, &ae) || ae.Code != pool.CodeCustody {
		t.Fatalf("take on a client pool: %v, want code %s", err, pool.CodeCustody)
	}

	// claims below the watermark: the refill is asked of the client and answered
	for _, ref := range regular[:7] {
		if err := c.Claimed(ctx(t), "carol", ref); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "refill answered by the client", full("carol"))
	// the client processed Welcomes for two claimed ones and reports them consumed
	for _, ref := range regular[:2] {
		if err := c.Consumed(ctx(t), "carol", ref); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "delete instructions confirmed", func() bool {
		p := poolRecord(t, w, "carol")
		h := cl.held(t)
		return p.DeletePending == 0 && p.Counts.Deleted == 2 && !slices.Contains(h, regular[0]) && !slices.Contains(h, regular[1])
	})
	if dels := decodeAll[events.ClientDelete](t, deletes); len(dels) == 0 || !slices.Contains(slices.Concat(sliceRefs(dels)...), regular[0]) {
		t.Fatalf("delete instructions %+v", dels)
	}

	// inventory both ways: the client lost one it holds, and holds one kpool never saw
	lostRef := regular[3] // claimed, not yet consumed
	if err := cl.Delete(ctx(t), []string{lostRef}); err != nil {
		t.Fatal(err)
	}
	stray, err := cl.Generate(ctx(t), events.ClientGenerate{Pool: "carol", Count: 1, MaxNotAfter: clock.Now().Add(80 * 24 * time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	strayKP, _ := mls.DecodeMLSMessage(stray[0])
	strayRefB, _ := strayKP.Ref()
	strayRef := hexRef(strayRefB)
	if err := c.SendInventory(ctx(t), "carol", cl); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "inventory reconciled", func() bool {
		kpi, err := c.Get(ctx(t), "carol", lostRef)
		return err == nil && kpi.State == string(fsm.Deleted) && !slices.Contains(cl.held(t), strayRef)
	})
	if kpi, _ := c.Get(ctx(t), "carol", lostRef); kpi.Reason != "lost: absent from the client's inventory" {
		t.Fatalf("lost KeyPackage reason %q", kpi.Reason)
	}

	// the client goes offline; claims make a refill due; ticks over a day ask again on a
	// backoff, always for the whole outstanding demand, never more
	stop()
	eventually(t, 20*time.Second, "pool settled", func() bool {
		p := poolRecord(t, w, "carol")
		return p.DeletePending == 0 && p.Counts.Created == 0
	})
	avail := records(t, w, "carol")[fsm.Available]
	var claimedNow []string
	for _, ref := range avail {
		if ref == poolRecord(t, w, "carol").LastResort {
			continue
		}
		if err := c.Claimed(ctx(t), "carol", ref); err != nil {
			t.Fatal(err)
		}
		claimedNow = append(claimedNow, ref)
		if len(claimedNow) == 8 {
			break
		}
	}
	eventually(t, 20*time.Second, "refill asked", func() bool { return poolRecord(t, w, "carol").Requested > 0 })
	outstanding := poolRecord(t, w, "carol").Requested
	before := generates.n()
	for range 24 * 60 / 10 { // a day in 10-minute ticks
		tick(t, c, clock, 10*time.Minute)
	}
	eventually(t, 20*time.Second, "ticks applied", func() bool {
		m, _ := w.Store().Meta()
		return !m.Time.Before(clock.Now())
	})
	asks := decodeAll[events.ClientGenerate](t, generates)[before:]
	// backoff 5m, 10m, 20m … 640m: 8 asks within a day, at most one per tick
	if len(asks) < 5 || len(asks) > 9 {
		t.Fatalf("%d asks in a day of 144 ticks, want a backoff (5-9)", len(asks))
	}
	for _, a := range asks {
		if a.Count != outstanding {
			t.Fatalf("ask for %d, want the %d outstanding", a.Count, outstanding)
		}
	}
	// back online: it reads the current demand and fills the pool
	stop, err = c.RunClient(context.Background(), "carol", cl, natsbus.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	eventually(t, 30*time.Second, "refilled after the client came back", func() bool {
		st, err := c.Status(ctx(t), "carol")
		return err == nil && st.AvailableFresh >= 4 && st.Counts.Created == 0 && poolRecord(t, w, "carol").Requested == 0
	})

	// expiry: 90 days later every KeyPackage of the first generation is past not_after
	// and delete_grace; the client is told to delete each, and confirms
	first := live(carol)
	for range 12 {
		tick(t, c, clock, 8*24*time.Hour)
	}
	eventually(t, 60*time.Second, "expired KeyPackages deleted at the client", func() bool {
		h := cl.held(t)
		for _, ref := range first {
			if slices.Contains(h, ref) {
				return false
			}
		}
		p := poolRecord(t, w, "carol")
		return p.DeletePending == 0
	})
	eventually(t, 30*time.Second, "client pool full again", full("carol"))
	// The client deletes a refused surplus when its rejected message arrives: wait for it.
	eventually(t, 30*time.Second, "client holds what kpool tracks as live", func() bool {
		return slices.Equal(cl.held(t), live(records(t, w, "carol")))
	})
	// Time jumps of 8 days make every re-ask due before the client's answers land: the
	// surplus is refused (over_cap, not_asked) and the client deletes it on the rejected
	// message (the inventory equality above holds). Nothing else may be refused.
	for _, d := range dls.list() {
		switch d.Code {
		case pool.CodeOverCap, pool.CodeNotAsked, pool.CodeInvalidTransition:
		default:
			t.Errorf("unexpected dead letter: %s %s", d.Code, d.Reason)
		}
	}
	stop()

	// scan: no private key byte of the client anywhere kpool writes
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	logMu.Lock()
	logText := bytes.Clone(logs.Bytes())
	logMu.Unlock()
	cl.mu.Lock()
	secrets := slices.Clone(cl.secrets)
	cl.mu.Unlock()
	if len(secrets) < 40 {
		t.Fatalf("only %d client secrets recorded", len(secrets))
	}
	blobs := map[string][]byte{"logs": logText}
	for _, root := range []string{dir, ns.dir} {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if b, rerr := os.ReadFile(path); rerr == nil {
					blobs[path] = b
				}
			}
			return nil
		})
	}
	if len(blobs) < 3 {
		t.Fatalf("scanned only %d files", len(blobs))
	}
	for name, b := range blobs {
		for _, s := range secrets {
			if len(s) >= 16 && bytes.Contains(b, s) {
				t.Fatalf("a private key of the client appears in %s", name)
			}
		}
	}

	// replay of the journal is exact, and db check holds for both custody kinds
	if n := verifyDir(t, dir); n < 100 {
		t.Fatalf("replay applied only %d inputs", n)
	}
}

func sliceRefs(d []events.ClientDelete) [][]string {
	out := make([][]string, len(d))
	for i, x := range d {
		out[i] = x.Refs
	}
	return out
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

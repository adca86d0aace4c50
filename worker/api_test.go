package worker_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

func apiCode(t *testing.T, err error) string {
	t.Helper()
	var ae *natsbus.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an API error", err)
	}
	if ae.Description == "" {
		t.Fatalf("API error %s without a description", ae.Code)
	}
	return ae.Code
}

// TestAPI covers discovery and every endpoint's errors; each refused call changes nothing.
func TestAPI(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock(), func(c *worker.Config) { c.MetricsAddr = "127.0.0.1:0" })
	nc, c := connect(t, ns.URL())
	ds := startDS(t, c, true)

	// Discovery: $SRV.PING/INFO answer for "kpool".
	m, err := nc.Request("$SRV.INFO.kpool", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Name != natsbus.ServiceName || len(info.Endpoints) != 6 {
		t.Fatalf("INFO: %+v %v", info, err)
	}

	// A bad recipient key refuses the registration before anything is stored.
	_, err = c.RegisterSealed(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, RecipientKey: []byte{1, 2, 3}})
	if code := apiCode(t, err); code != natsbus.CodeInvalidRecipient {
		t.Fatalf("bad recipient key: %s", code)
	}
	if pools, _ := w.Store().Pools(); len(pools) != 0 {
		t.Fatalf("a refused registration stored %d pools", len(pools))
	}
	for _, tc := range []struct {
		name string
		req  natsbus.RegisterRequest
		code string
	}{
		{"bad suite", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 9}, "invalid_field"},
		{"no identity", natsbus.RegisterRequest{CipherSuite: 1}, "invalid_field"},
		{"bad policy", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{Target: new(50), HardCap: new(10)}}, pool.CodeInvalidConfig},
	} {
		_, err := c.RegisterSealed(ctx(t), "alice", tc.req)
		if code := apiCode(t, err); code != tc.code {
			t.Errorf("%s: code %s, want %s (%v)", tc.name, code, tc.code, err)
		}
	}
	if pools, _ := w.Store().Pools(); len(pools) != 0 {
		t.Fatalf("refused registrations stored %d pools", len(pools))
	}

	reg, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1}, nil)
	if err != nil || !reg.Created || reg.SealedSignatureKey != nil {
		t.Fatalf("register without recipient: %+v %v", reg, err)
	}
	// Re-registering updates the policy; it never hands out the key again.
	rk, _ := natsbus.NewRecipientKey(1)
	again, err := c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "alice", CipherSuite: 1, Policy: events.Policy{Target: new(12)}}, rk)
	if err != nil || again.Created || again.SealedSignatureKey != nil || again.SignaturePrivateKey != nil {
		t.Fatalf("re-register: %+v %v", again, err)
	}
	if got := poolRecord(t, w, "alice").Config.Target; got != 12 {
		t.Fatalf("target after policy update: %d", got)
	}
	_, err = c.Register(ctx(t), "alice", natsbus.RegisterRequest{Identity: "mallory", CipherSuite: 1}, nil)
	if code := apiCode(t, err); code != pool.CodeConflict {
		t.Fatalf("re-register with another identity: %s", code)
	}
	if _, err := c.Register(ctx(t), "bob", natsbus.RegisterRequest{Identity: "bob", CipherSuite: 2}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "pools full", func() bool {
		return poolRecord(t, w, "alice").Fresh == 12 && poolRecord(t, w, "bob").Fresh == 10
	})

	// Status, list, replenish.
	st, err := c.Status(ctx(t), "alice")
	if err != nil || st.Pool != "alice" || st.AvailableFresh != 12 || st.Seq != poolRecord(t, w, "alice").StatusSeq {
		t.Fatalf("status: %+v %v", st, err)
	}
	if _, err := c.Status(ctx(t), "carol"); apiCode(t, err) != pool.CodeUnknownPool {
		t.Fatalf("status of unknown pool: %v", err)
	}
	list, err := c.List(ctx(t))
	if err != nil || len(list) != 2 || list[0].Pool != "alice" || list[1].Pool != "bob" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if st, err := c.Replenish(ctx(t), "alice"); err != nil || st.Pool != "alice" {
		t.Fatalf("replenish: %+v %v", st, err)
	}
	if _, err := c.Replenish(ctx(t), "carol"); apiCode(t, err) != pool.CodeUnknownPool {
		t.Fatalf("replenish unknown pool: %v", err)
	}

	// Raw requests the client would refuse to send.
	raw := func(subject, body string) (string, string) {
		m, err := nc.Request(subject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
	}
	if code, desc := raw("kpool.api.pool.status."+strings.Repeat("x", 65), ""); code != natsbus.CodeInvalidPoolID || !strings.Contains(desc, "A-Z a-z 0-9 _ -") {
		t.Fatalf("long pool id: %s %q", code, desc)
	}
	if code, _ := raw("kpool.api.keypackage.get.alice", `{"ref":`); code != natsbus.CodeBadRequest {
		t.Fatalf("malformed body: %s", code)
	}
	if code, _ := raw("kpool.api.keypackage.get.alice", `{"ref":"00","extra":1}`); code != natsbus.CodeBadRequest {
		t.Fatalf("unknown field: %s", code)
	}

	// Get and take refuse what is not theirs; a refused take consumes nothing.
	aliceRef := ds.refs("alice", false)[0]
	bobRef := ds.refs("bob", false)[0]
	if _, err := c.Get(ctx(t), "alice", "zz"); apiCode(t, err) != "invalid_field" {
		t.Fatalf("get bad ref: %v", err)
	}
	if _, err := c.Get(ctx(t), "alice", strings.Repeat("00", 32)); apiCode(t, err) != pool.CodeUnknownRef {
		t.Fatalf("get unknown ref: %v", err)
	}
	_, err = c.Get(ctx(t), "alice", bobRef)
	if apiCode(t, err) != pool.CodeWrongPool || strings.Contains(err.Error(), "bob") {
		t.Fatalf("get another pool's ref: %v (must not name the other pool)", err)
	}
	if _, err := c.Take(ctx(t), "alice", bobRef, 1); apiCode(t, err) != pool.CodeWrongPool {
		t.Fatalf("take another pool's ref: %v", err)
	}
	p256, _ := natsbus.NewRecipientKey(2)
	if _, err := c.TakeWith(ctx(t), "alice", aliceRef, p256); apiCode(t, err) != natsbus.CodeInvalidRecipient {
		t.Fatalf("take with a key of another suite: %v", err)
	}
	if _, err := c.TakeSealed(ctx(t), "alice", natsbus.TakeRequest{Ref: aliceRef, RecipientKey: []byte("short")}); apiCode(t, err) != natsbus.CodeInvalidRecipient {
		t.Fatalf("take with a malformed key: %v", err)
	}
	if kp, _, _ := w.Store().KeyPackage(aliceRef); kp.State != "available" {
		t.Fatalf("refused takes changed the KeyPackage to %s", kp.State)
	}
	if ok, _ := w.Store().HasSecret(aliceRef); !ok {
		t.Fatal("refused takes erased the private keys")
	}
	// bob's pool is on P-256: take works with a P-256 recipient.
	if b, err := c.TakeWith(ctx(t), "bob", bobRef, p256); err != nil || len(b) == 0 {
		t.Fatalf("take on suite 2: %v", err)
	}

	// Metrics are served and count what happened.
	resp, err := http.Get("http://" + w.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`kpool_api_requests_total{code="wrong_pool",endpoint="keypackage_get"} 1`, `kpool_pool_available_fresh{pool="alice"} 12`, "kpool_keypackages_generated_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestTicker: the internal ticker publishes expiry_tick events with the edge's clock into
// the stream, and the core's time follows.
func TestTicker(t *testing.T) {
	ns := startNATS(t)
	clock := newClock()
	w := startWorker(t, ns.URL(), t.TempDir(), clock, func(c *worker.Config) { c.Tick = 20 * time.Millisecond })
	nc, _ := connect(t, ns.URL())
	ticks := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(w.Subjects().Event("", events.TypeExpiryTick), ticks)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	want := clock.Advance(time.Hour)
	eventually(t, 10*time.Second, "core time follows the ticks", func() bool {
		m, _ := w.Store().Meta()
		return m.Time.Equal(want)
	})
	select {
	case m := <-ticks:
		ev, err := events.Decode(m.Data)
		if err != nil || ev.Type != events.TypeExpiryTick || ev.Pool != "" {
			t.Fatalf("tick message: %+v %v", ev, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no tick seen on the subject")
	}
}

// TestShutdownStopsAPI: after Close the service no longer answers and Close is idempotent.
func TestShutdownStopsAPI(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.URL(), t.TempDir(), newClock())
	_, c := connect(t, ns.URL())
	if _, err := c.List(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-w.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if _, err := c.List(ctx(t)); !errors.Is(err, natsbus.ErrNoWorker) {
		t.Fatalf("list after shutdown: %v, want ErrNoWorker", err)
	}
}

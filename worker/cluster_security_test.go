package worker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// securedClusterWorker is a cluster-mode worker connected as the `worker` user of
// docs/security.md; violations collects what the server refused it.
type securedClusterWorker struct {
	w   *worker.Worker
	log *syncBuffer // String keeps only the tail; logged reads it all

	mu         sync.Mutex
	violations []string
}

func (s *securedClusterWorker) refused() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// logged reports whether the worker has logged a line matching re.
func (s *securedClusterWorker) logged(re *regexp.Regexp) bool {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	return re.Match(s.log.b.Bytes())
}

func startSecuredClusterWorker(t *testing.T, url, keyFile, id string) *securedClusterWorker {
	t.Helper()
	s := &securedClusterWorker{log: &syncBuffer{}}
	s.w = startWorker(t, url, t.TempDir(), newClock(), func(c *worker.Config) {
		c.KeyFile = keyFile
		c.Cluster = worker.ClusterConfig{Enabled: true, WorkerID: id, Partitions: 4, LeaseTTL: 2 * time.Second, SnapshotEvery: 100 * time.Millisecond}
		c.Logger = slog.New(slog.NewTextHandler(s.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
		c.NATSOptions = []nats.Option{nats.UserInfo("worker", "worker-secret"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			s.mu.Lock()
			s.violations = append(s.violations, err.Error())
			s.mu.Unlock()
		})}
	})
	return s
}

// lastMsg is the last message on subject in stream, read by direct get with the role's
// rights; nil when there is none or it is a key-value delete or purge marker.
func (r *role) lastMsg(t *testing.T, stream, subject string) *nats.Msg {
	t.Helper()
	m, err := r.nc.Request("$JS.API.DIRECT.GET."+stream+"."+subject, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: direct get of %s: %v", r.name, subject, err)
	}
	if m.Header.Get("Status") != "" || m.Header.Get("KV-Operation") != "" {
		return nil
	}
	return m
}

// TestClusterSecurityConfig runs two cluster-mode workers (4 partitions, one
// nats-server) as the `worker` user of exactly the configuration of docs/security.md:
// leases, heartbeats, checkpoints, sealed keys in KPOOL_KEYS, partition snapshots
// (stored, replaced, restored by the worker that takes a partition over) and calls
// routed between the workers all work without a single permission violation (and a
// 3 MB object is read back past the flow-control window), while the delivery service,
// the MLS client and operators are refused the buckets and the route subjects.
func TestClusterSecurityConfig(t *testing.T) {
	url := startSecureNATS(t)
	keyFile := filepath.Join(t.TempDir(), "kpool.key")
	w1 := startSecuredClusterWorker(t, url, keyFile, "w1")
	eventually(t, 20*time.Second, "w1 owns the 4 partitions", func() bool { return len(w1.w.Partitions()) == 4 })
	ds := dialRole(t, url, "ds-ab", "ds-ab-secret", "_INBOX_ds_ab")
	alice := dialRole(t, url, "client-alice", "client-alice-secret", "_INBOX_client_alice")
	ops := dialRole(t, url, "ops", "ops-secret", "_INBOX_ops")
	// The test inspects the buckets with the worker's own rights.
	inspector := dialRole(t, url, "worker", "worker-secret", "")

	// alice is in partition 3, bob in partition 0: when w2 joins, w1 gives up its highest
	// partitions (2 and 3), so alice moves to w2 and bob stays.
	alicePart, bobPart := events.PartitionOf("alice", 4), events.PartitionOf("bob", 4)
	if alicePart != 3 || bobPart != 0 {
		t.Fatalf("partitions of alice and bob: %d, %d (the test relies on 3 and 0)", alicePart, bobPart)
	}
	rk, _ := natsbus.NewRecipientKey(1)
	acked := registerAndAck(t, alice, ops, ds, rk)
	full := func(p string) bool {
		st, err := ops.c.Status(ctx(t), p)
		return err == nil && st.Counts.Available >= 10
	}
	eventually(t, 30*time.Second, "both pools full", func() bool { return full("alice") && full("bob") })

	// w1 has stored alice's partition, keys included, in the snapshots object store.
	applied, _ := w1.w.PartitionApplied(alicePart)
	eventually(t, 20*time.Second, "a snapshot of alice's partition as filled", func() bool {
		m := inspector.lastMsg(t, "OBJ_KPOOL_SNAPSHOTS", "$O.KPOOL_SNAPSHOTS.M."+base64.URLEncoding.EncodeToString([]byte("part-0003")))
		var info jetstream.ObjectInfo
		if m == nil || json.Unmarshal(m.Data, &info) != nil {
			return false
		}
		seq, _ := strconv.ParseUint(info.Headers.Get("Kpool-Input-Seq"), 10, 64)
		return seq >= applied
	})

	// A snapshot larger than the server's flow-control window (about 1 MB of unanswered
	// deliveries) is read back only if the reader may answer flow control.
	probe(t, inspector)

	// w2 joins with an empty data directory: it takes partitions 2 and 3 from w1 and
	// rebuilds alice's from the snapshot.
	w2 := startSecuredClusterWorker(t, url, keyFile, "w2")
	eventually(t, 30*time.Second, "w1 and w2 share the partitions", func() bool {
		p1, p2 := w1.w.Partitions(), w2.w.Partitions()
		return len(p1) == 2 && len(p2) == 2 && p1[0] == 0 && p1[1] == 1 && p2[0] == 2 && p2[1] == 3
	})
	// The lease shows before the takeover's log line is written.
	eventually(t, 10*time.Second, "w2 logs taking partition 3", func() bool {
		return w2.logged(regexp.MustCompile(`partition taken".*partition=3 `))
	})
	if !w2.logged(regexp.MustCompile(`partition taken".*partition=3 .*from_snapshot=[1-9]`)) {
		t.Fatalf("w2 did not rebuild partition 3 from the snapshot:\n%s", w2.log.String())
	}

	// Calls for either pool reach its owner from either worker: the list always crosses
	// the route (each worker asks the other for its two partitions).
	for range 4 {
		pools, err := ops.c.List(ctx(t))
		if err != nil || len(pools) != 2 {
			t.Fatalf("ops lists the pools across both workers: %v %v", pools, err)
		}
	}
	aliceRef, bobRef := acked.ref("alice", 0), acked.ref("bob", 0)
	if _, err := alice.c.Get(ctx(t), "alice", aliceRef); err != nil {
		t.Fatalf("client-alice reads a KeyPackage of alice: %v", err)
	}
	if _, err := alice.c.TakeWith(ctx(t), "alice", aliceRef, rk); err != nil {
		t.Fatalf("client-alice takes a KeyPackage of alice (owned by w2): %v", err)
	}
	// The take erased its keys: the owner purges them from KPOOL_KEYS.
	if inspector.lastMsg(t, "KV_KPOOL_KEYS", "$KV.KPOOL_KEYS.kp."+bobRef) == nil {
		t.Fatal("bob's KeyPackage has no sealed keys in KPOOL_KEYS")
	}
	eventually(t, 20*time.Second, "the taken keys purged from KPOOL_KEYS", func() bool {
		return inspector.lastMsg(t, "KV_KPOOL_KEYS", "$KV.KPOOL_KEYS.kp."+aliceRef) == nil
	})
	bobBefore, err := ops.c.Get(ctx(t), "bob", bobRef)
	if err != nil || bobBefore.State != "available" {
		t.Fatalf("bob's KeyPackage: %+v %v", bobBefore, err)
	}

	// Forbidden: the buckets (sealed private keys, leases, snapshots) and the route subjects
	// are the workers' alone.
	route := "kpool.route." + strconv.Itoa(bobPart) + ".keypackage_take.bob"
	for _, r := range []*role{ds, alice, ops} {
		forbid := []struct {
			what    string
			subject string
			act     func(ctx context.Context) error
		}{
			{"subscribe to the keys bucket's subjects", "$KV.KPOOL_KEYS.>", func(context.Context) error {
				_, err := r.nc.Subscribe("$KV.KPOOL_KEYS.>", func(*nats.Msg) {})
				return err
			}},
			{"direct get of sealed keys", "$JS.API.DIRECT.GET.KV_KPOOL_KEYS.$KV.KPOOL_KEYS.kp." + bobRef, func(ctx context.Context) error {
				_, err := r.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_KPOOL_KEYS.$KV.KPOOL_KEYS.kp."+bobRef, nil)
				return err
			}},
			{"open the keys bucket", "$JS.API.STREAM.INFO.KV_KPOOL_KEYS", func(ctx context.Context) error {
				_, err := r.js.KeyValue(ctx, "KPOOL_KEYS")
				return err
			}},
			{"create a consumer on the keys bucket", "$JS.API.CONSUMER.CREATE.KV_KPOOL_KEYS.spy", func(ctx context.Context) error {
				_, err := r.js.CreateOrUpdateConsumer(ctx, "KV_KPOOL_KEYS", jetstream.ConsumerConfig{Durable: "spy", FilterSubject: "$KV.KPOOL_KEYS.>"})
				return err
			}},
			{"create a consumer on the snapshots", "$JS.API.CONSUMER.CREATE.OBJ_KPOOL_SNAPSHOTS.spy", func(ctx context.Context) error {
				_, err := r.js.CreateOrUpdateConsumer(ctx, "OBJ_KPOOL_SNAPSHOTS", jetstream.ConsumerConfig{Durable: "spy", FilterSubject: "$O.KPOOL_SNAPSHOTS.>"})
				return err
			}},
			{"plain publish of a lease", "$KV.KPOOL_OWNERS.p.0", func(context.Context) error {
				if err := r.nc.Publish("$KV.KPOOL_OWNERS.p.0", []byte(r.name)); err != nil {
					return err
				}
				return r.nc.Flush()
			}},
			{"take through the route subject", route, func(ctx context.Context) error {
				_, err := r.nc.RequestWithContext(ctx, route, []byte(`{"ref":"`+bobRef+`","recipient_key":"AA==","cipher_suite":1}`))
				return err
			}},
			{"subscribe to routed calls", "kpool.route.>", func(context.Context) error {
				_, err := r.nc.Subscribe("kpool.route.>", func(*nats.Msg) {})
				return err
			}},
		}
		for _, f := range forbid {
			r.refused(t, f.what, f.subject, f.act)
		}
	}
	if bobAfter, err := ops.c.Get(ctx(t), "bob", bobRef); err != nil || bobAfter.State != "available" {
		t.Fatalf("a forbidden route take changed bob's KeyPackage: %+v %v", bobAfter, err)
	}

	// w2 stops: w1 takes its partitions back (released leases, checkpoints).
	if err := w2.w.Close(); err != nil {
		t.Fatalf("w2 stops: %v", err)
	}
	eventually(t, 20*time.Second, "w1 owns the 4 partitions again", func() bool { return len(w1.w.Partitions()) == 4 })
	if st, err := alice.c.Status(ctx(t), "alice"); err != nil || st.Counts.Available < 10 {
		t.Fatalf("alice after the hand-back: %+v %v", st, err)
	}
	for _, s := range []*securedClusterWorker{w1, w2} {
		if v := s.refused(); len(v) > 0 {
			t.Errorf("the worker user was refused under docs/security.md: %q", v)
		}
	}
	inspector.mu.Lock()
	defer inspector.mu.Unlock()
	if len(inspector.denied) > 0 {
		t.Errorf("the worker user was refused under docs/security.md: %q", inspector.denied)
	}
}

// probe stores and reads back a 3 MB object in the snapshots bucket the way a worker
// stores and restores a partition's view, with the worker user's rights.
func probe(t *testing.T, worker *role) {
	t.Helper()
	b, err := natsbus.EnsureBuckets(ctx(t), worker.js, "kpool", 1, 2*time.Second)
	if err != nil {
		t.Fatalf("the worker user opens the cluster's buckets: %v", err)
	}
	big := bytes.Repeat([]byte("kpool snapshot probe "), 150_000)
	if _, err := b.Snapshots.Put(ctx(t), jetstream.ObjectMeta{Name: "probe"}, bytes.NewReader(big)); err != nil {
		t.Fatalf("the worker user stores a 3 MB object: %v", err)
	}
	path := filepath.Join(t.TempDir(), "probe")
	if err := b.Snapshots.GetFile(ctx(t), "probe", path); err != nil {
		t.Fatalf("the worker user reads back a 3 MB object: %v", err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("the 3 MB object read back differs (%d bytes, %v)", len(got), err)
	}
	if err := b.Snapshots.Delete(ctx(t), "probe"); err != nil {
		t.Fatalf("the worker user deletes the probe: %v", err)
	}
}

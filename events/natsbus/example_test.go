package natsbus_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/pool"
	"github.com/kpool/kpool/worker"
	"github.com/nats-io/nats.go"
)

// exampleWorker starts a worker on an embedded NATS server (random port, temp data dir)
// with a small pool policy, and connects a client to it. Your service would instead
// connect to the NATS server your kpool worker uses.
func exampleWorker() (*natsbus.Client, func()) {
	dir, err := os.MkdirTemp("", "kpool-example")
	if err != nil {
		panic(err)
	}
	defaults := pool.DefaultConfig()
	defaults.Target, defaults.LowWatermark, defaults.HardCap = 5, 2, 10
	w, err := worker.Start(context.Background(), worker.Config{DataDir: dir, Listen: "127.0.0.1:0", Defaults: &defaults, NoSync: true})
	if err != nil {
		panic(err)
	}
	nc, err := nats.Connect(w.ClientURL())
	if err != nil {
		panic(err)
	}
	c, err := natsbus.NewClient(nc)
	if err != nil {
		panic(err)
	}
	return c, func() { nc.Close(); w.Close(); os.RemoveAll(dir) }
}

// A delivery service: store what kpool asks to publish and acknowledge it.
func ExampleClient_ConsumeDeliveries() {
	c, done := exampleWorker()
	defer done()
	ctx := context.Background()

	uploads := make(chan events.Upload, 16)
	stop, err := c.ConsumeDeliveries(ctx, "my-ds", "", natsbus.DeliveryHandler{
		Upload: func(u events.Upload) error {
			// ... store u.KeyPackage for u.Pool, then:
			uploads <- u
			return c.UploadAck(ctx, u.Pool, u.Ref)
		},
		Withdraw: func(w events.Withdraw) error { return nil /* stop offering w.Ref */ },
	})
	if err != nil {
		panic(err)
	}
	defer stop()

	if _, err := c.Register(ctx, "alice", natsbus.RegisterRequest{Identity: "alice@example.org", CipherSuite: 1}, nil); err != nil {
		panic(err)
	}
	u := <-uploads
	kp, err := mls.DecodeMLSMessage(u.KeyPackage)
	fmt.Println(u.Pool, kp.CipherSuite, string(kp.LeafNode.Credential.Identity), err)
	// Output: alice MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 alice@example.org <nil>
}

// Register a pool and follow its status: the current value arrives at once, then every
// change.
func ExampleClient_WatchStatus() {
	c, done := exampleWorker()
	defer done()
	ctx := context.Background()

	rk, _ := natsbus.NewRecipientKey(1) // receives the pool's signature private key
	reg, err := c.Register(ctx, "alice", natsbus.RegisterRequest{Identity: "alice@example.org", CipherSuite: 1}, rk)
	if err != nil {
		panic(err)
	}
	fmt.Println("created:", reg.Created, "signature key received:", len(reg.SignaturePrivateKey) > 0)

	statuses := make(chan events.Status, 64)
	stop, err := c.WatchStatus(ctx, "alice", func(st events.Status) { statuses <- st })
	if err != nil {
		panic(err)
	}
	defer stop()
	st := <-statuses
	fmt.Println(st.Pool, st.Health, "target", st.Target)
	// Output:
	// created: true signature key received: true
	// alice depleted target 5
}

// Take the private half of a KeyPackage named in a Welcome. The bundle is sealed to a
// fresh HPKE key and opened here; kpool erases its copy.
func ExampleClient_Take() {
	c, done := exampleWorker()
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	refs := make(chan string, 16)
	stop, _ := c.ConsumeDeliveries(ctx, "ds", "alice", natsbus.DeliveryHandler{Upload: func(u events.Upload) error {
		if !u.LastResort {
			refs <- u.Ref
		}
		return c.UploadAck(ctx, u.Pool, u.Ref)
	}})
	defer stop()
	if _, err := c.Register(ctx, "alice", natsbus.RegisterRequest{Identity: "alice@example.org", CipherSuite: 1}, nil); err != nil {
		panic(err)
	}
	ref := <-refs
	// Wait until the ack is applied (the DS acked asynchronously).
	for kp, _ := c.Get(ctx, "alice", ref); kp.State != "available" && ctx.Err() == nil; kp, _ = c.Get(ctx, "alice", ref) {
		time.Sleep(10 * time.Millisecond) // poll interval; ctx is the deadline
	}

	raw, err := c.Take(ctx, "alice", ref, 1)
	if err != nil {
		panic(err)
	}
	var bundle mls.PrivateBundle
	fmt.Println(bundle.UnmarshalBinary(raw))
	kp, _ := c.Get(ctx, "alice", ref)
	fmt.Println(kp.State)
	// Output:
	// <nil>
	// deleted
}

// Publish events for kpool, and read the dead letter of one it refuses.
func ExampleClient_Publish() {
	c, done := exampleWorker()
	defer done()
	ctx := context.Background()

	dead := make(chan events.DeadLetter, 1)
	stop, _ := c.SubscribeDeadLetters(func(d events.DeadLetter) { dead <- d })
	defer stop()

	// Typed publishers validate before sending.
	err := c.Claimed(ctx, "alice", "not-hex")
	fmt.Println(err)

	// A well-formed event for a pool that does not exist reaches the worker and is refused.
	ref := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if _, err := c.Publish(ctx, events.Event{ID: "evt-1", Type: events.TypeUploadAck, Pool: "nobody", Ref: ref}); err != nil {
		panic(err)
	}
	d := <-dead
	fmt.Println(d.EventID, d.Code)
	// Output:
	// invalid ref: must be lowercase hex
	// evt-1 unknown_pool
}

// An MLS client that keeps its own private keys (client custody): register its pool with
// its signature public key, then let RunClient answer kpool's generate and delete
// requests with the application's KeyStore — here MemKeyStore, backed by kpool's mls
// package; an OpenMLS app supplies one over its storage provider (docs/client-custody.md).
func ExampleClient_RunClient() {
	c, done := exampleWorker()
	defer done()
	ctx := context.Background()

	priv, pub, err := mls.NewSignatureKey(1, nil) // the client's own credential key
	if err != nil {
		panic(err)
	}
	signer, _ := mls.SignerFromPrivate(1, priv)
	keys := natsbus.NewMemKeyStore(1, signer, "carol@example.org")

	info, err := c.RegisterSealed(ctx, "carol", natsbus.RegisterRequest{Identity: "carol@example.org", CipherSuite: 1,
		Custody: events.CustodyClient, SignatureKey: pub})
	if err != nil {
		panic(err)
	}
	stop, err := c.RunClient(ctx, "carol", keys, natsbus.ClientOptions{})
	if err != nil {
		panic(err)
	}
	defer stop()

	// kpool asks for target (5) + a last resort; the client submits them, kpool uploads
	// them and tracks them by ref: every ref kpool tracks is one the client holds.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := c.Status(ctx, "carol"); err == nil && st.Counts.Created == 5+1 {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	held, _ := keys.Refs(ctx)
	st, _ := c.Status(ctx, "carol")
	fmt.Println(info.Custody, st.Custody, st.Counts.Created, len(held))
	// Output: client client 6 6
}

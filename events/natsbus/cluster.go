package natsbus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Buckets names the key-value buckets a cluster of workers shares (docs/scale-out.md).
type Buckets struct {
	// Keys holds private keys sealed under the master key, one entry per KeyPackage
	// (<pool>.<ref>) or pool signature key (<pool>._sig), written before the input that
	// offers them and purged when they are erased.
	Keys string
	// Owners holds one lease per partition (p.<n> → worker id) and a heartbeat per worker
	// (w.<id>); entries expire LeaseTTL after their last renewal.
	Owners string
	// Checkpoints holds, per partition, the input sequence through which its owner has
	// published every effect (p.<n>), so a new owner does not send them again.
	Checkpoints string
	// Snapshots is an object store with one copy of each partition's view (part-<n>),
	// so that a new owner replays only the log after it.
	Snapshots string
}

// BucketNames derives bucket names from a subject prefix, like StreamNames.
func BucketNames(prefix string) Buckets {
	n := StreamNames(prefix)
	base := n.Events[:len(n.Events)-len("_EVENTS")]
	return Buckets{Keys: base + "_KEYS", Owners: base + "_OWNERS", Checkpoints: base + "_CHECKPOINTS", Snapshots: base + "_SNAPSHOTS"}
}

// ClusterBuckets are the opened buckets.
type ClusterBuckets struct {
	Keys, Owners, Checkpoints jetstream.KeyValue
	Snapshots                 jetstream.ObjectStore
}

// EnsureBuckets creates (or opens) the cluster's buckets with replicas copies each;
// the owners bucket forgets an entry leaseTTL after its last write.
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, prefix string, replicas int, leaseTTL time.Duration) (ClusterBuckets, error) {
	n := BucketNames(prefix)
	var b ClusterBuckets
	var err error
	open := func(cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
		cfg.Replicas, cfg.Storage, cfg.History = max(replicas, 1), jetstream.FileStorage, 1
		kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("natsbus: bucket %s: %w", cfg.Bucket, err)
		}
		return kv, nil
	}
	if b.Keys, err = open(jetstream.KeyValueConfig{Bucket: n.Keys, Description: "kpool private keys, sealed under the master key"}); err != nil {
		return b, err
	}
	if b.Owners, err = open(jetstream.KeyValueConfig{Bucket: n.Owners, Description: "kpool partition leases and worker heartbeats", TTL: leaseTTL}); err != nil {
		return b, err
	}
	if b.Checkpoints, err = open(jetstream.KeyValueConfig{Bucket: n.Checkpoints, Description: "kpool per-partition published-through input sequence"}); err != nil {
		return b, err
	}
	b.Snapshots, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: n.Snapshots, Description: "kpool partition views (bbolt copies; keys sealed under the master key)",
		Replicas: max(replicas, 1), Storage: jetstream.FileStorage})
	if err != nil {
		return b, fmt.Errorf("natsbus: object store %s: %w", n.Snapshots, err)
	}
	return b, nil
}

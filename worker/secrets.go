package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kpool/kpool/persistence"
	"github.com/nats-io/nats.go/jetstream"
)

// In cluster mode private keys never live on one host only: before an input that stores
// private material is published, the material is put, sealed under the master key, in
// the keys bucket (replicated by the cluster; the put returns once the replicas have it).
// The worker that applies the input uses its caller's copy when it has it, and the
// bucket's otherwise (a new owner rebuilding the partition). When the core erases keys —
// a take, a deletion — the writer purges them from the bucket too.

// keysBucketKey maps a store secret id to its key in the keys bucket.
func keysBucketKey(id string) string {
	if pool, ok := strings.CutPrefix(id, "pool:"); ok && persistence.PoolSecretID(pool) == id {
		return "sig." + pool
	}
	return "kp." + id
}

// replicateSecrets puts an input's private material in the keys bucket and returns the
// ids to name in its SecretsHeader; nothing to do for the single worker.
func (w *Worker) replicateSecrets(ctx context.Context, in persistence.Input) ([]string, error) {
	if w.buckets == nil || len(in.Secrets) == 0 {
		return nil, nil
	}
	ids := make([]string, 0, len(in.Secrets))
	for id, plain := range in.Secrets {
		sealed, err := w.store.Seal(id, plain)
		if err != nil {
			return nil, err
		}
		if _, err := w.buckets.Keys.Put(ctx, keysBucketKey(id), sealed); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// fetchSecrets reads an input's private material from the keys bucket. A missing entry
// was purged when the core erased it, which a later input of the log does: erased names
// it, and the store keeps a marker instead (persistence.Input.Erased). Any other failure
// is internal (the input is retried, never refused).
func (w *Worker) fetchSecrets(ids []string) (secrets map[string][]byte, erased []string, err error) {
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	for _, id := range ids {
		e, err := w.buckets.Keys.Get(ctx, keysBucketKey(id))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			erased = append(erased, id)
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("keys bucket: %w", err)
		}
		plain, err := w.store.Unseal(id, e.Value())
		if err != nil {
			return nil, nil, fmt.Errorf("keys bucket entry %s: %w", keysBucketKey(id), err)
		}
		if secrets == nil {
			secrets = map[string][]byte{}
		}
		secrets[id] = plain
	}
	return secrets, erased, nil
}

// eraseSecrets purges erased keys from the keys bucket, in the background, retrying
// until it succeeds or the worker stops (a new owner purges them again when it applies
// the same erasure).
func (w *Worker) eraseSecrets(ids []string) {
	ids = append([]string(nil), ids...)
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		for _, id := range ids {
			for w.ctx.Err() == nil {
				ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
				err := w.buckets.Keys.Purge(ctx, keysBucketKey(id))
				cancel()
				if err == nil {
					break
				}
				w.log.Warn("purging erased keys from the keys bucket failed; retrying", "err", err)
				if !w.sleepCtx(time.Second) {
					return
				}
			}
		}
	}()
}

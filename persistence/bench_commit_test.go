package persistence

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// kv is one raw bbolt put, or a delete when del is set.
type kv struct {
	bucket, key, val []byte
	del              bool
}

// rawWrites lists the puts Committer makes for one accepted input: the same buckets,
// keys and value sizes (sealed secrets as random-size-equal bytes, outbox keys as a
// counter). TestRawWritesMirrorStore keeps it honest.
func rawWrites(in Input, r pool.Ready, outboxSeq *uint64) []kv {
	var out []kv
	put := func(b, k []byte, v any) {
		var data []byte
		switch v := v.(type) {
		case []byte:
			data = v
		default:
			data, _ = json.Marshal(v)
		}
		out = append(out, kv{bucket: b, key: k, val: data})
	}
	if r.Duplicate {
		return nil
	}
	for id, plain := range in.Secrets {
		put(bSecrets, []byte(id), make([]byte, 12+len(plain)+16))
	}
	for _, k := range r.KeyPackages {
		put(bKPs, []byte(k.Ref), k)
		put(bPoolKPs, poolKPKey(k.Pool, k.Ref), []byte{})
	}
	for _, e := range r.IndexDel {
		out = append(out, kv{bucket: bExpiry, key: indexKey(e.At, e.Ref), del: true})
	}
	for _, e := range r.IndexPut {
		put(bExpiry, indexKey(e.At, e.Ref), []byte{})
	}
	for _, p := range r.Pools {
		put(bPools, []byte(p.ID), p)
	}
	for _, o := range r.Outbox {
		*outboxSeq++
		put(bOutbox, seqKey(*outboxSeq), encodeOutbound(o))
		put(bOutboxIDs, []byte(o.ID), seqKey(*outboxSeq))
	}
	if r.Seq != 0 {
		put(bSeen, seenKey(r.Input.Pool, r.Input.ID), seenValue(r.Seq, r.Input.Digest()))
		put(bJournal, seqKey(r.Seq), r.Input)
		put(bMeta, kApplied, r.Meta)
	}
	return out
}

// committed is one input with its result.
type committed struct {
	in  Input
	res Result
}

// benchPools are registered before timing starts; their cap leaves room for any b.N.
func benchRegister(t testing.TB, c *Committer, pools int) {
	for p := range pools {
		in := regInput(fmt.Sprintf("reg-%d", p), fmt.Sprintf("bp%d", p))
		in.Event.Register.Policy = events.Policy{Target: new(100), LowWatermark: new(20), HardCap: new(1_000_000)}
		submitOK(t, c, in)
	}
}

// commitWorkload submits n inputs from `writers` goroutines through c: each writer
// generates a KeyPackage and then acknowledges it, as the worker's generator and the
// delivery service would. It returns every result with its input, in commit order.
func commitWorkload(t testing.TB, c *Committer, n, writers, pools int, base int) []committed {
	// Inputs are built before the clock starts: the clients' own work should not
	// compete with the committer for the CPU.
	pairs := make([][2]Input, (n+1)/2)
	for i := range pairs {
		p, ref := fmt.Sprintf("bp%d", i%pools), refOf(base+i)
		pairs[i] = [2]Input{genInput("g-"+ref, p, ref, t0), {Event: evRef("a-"+ref, events.TypeUploadAck, p, ref, t0)}}
	}
	done := make([]committed, 2*len(pairs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(pairs) {
					return
				}
				for j, in := range pairs[i] {
					res, err := c.Submit(context.Background(), in)
					if err != nil || res.Err != nil {
						t.Errorf("%s: %v %v", in.Event.ID, err, res.Err)
						return
					}
					done[2*i+j] = committed{in, res}
				}
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(done, func(a, b committed) int {
		return cmp.Compare(a.res.Ready.Seq, b.res.Ready.Seq)
	})
	return done
}

const (
	benchWriters = 64
	benchPools   = 16
)

// BenchmarkCommit compares, in one run and on the same workload: group commit (one
// writer, whatever is queued per transaction), one transaction per input, and bbolt
// writing the same keys and bytes with the same number of puts per transaction but no
// core, no reads, no encryption. Each iteration commits `inputs` inputs, fsync on.
func BenchmarkCommit(b *testing.B) {
	const inputs = 4000
	var group, single, raw time.Duration
	var groupTx, singleN int
	var ratios []float64 // per round: load spikes from other processes hit one round
	for i := 0; b.Loop(); i++ {
		// Group commit.
		dir := b.TempDir()
		s := mustOpen(b, filepath.Join(dir, "g.db"), filepath.Join(dir, "k"))
		var batches []int
		c := NewCommitterWith(s, (&pool.Core{}).Step, CommitterOptions{onCommit: func(n int) { batches = append(batches, n) }})
		benchRegister(b, c, benchPools)
		batches = batches[:0]
		start := time.Now()
		results := commitWorkload(b, c, inputs, benchWriters, benchPools, 0)
		g := time.Since(start)
		group += g
		c.Close()
		s.Close()
		groupTx += len(batches)

		// The same write sets, raw, batched exactly as group commit batched them.
		var writes [][]kv
		var seq uint64 = uint64(benchPools * 4) // outbox keys continue after registration
		for _, r := range results {
			writes = append(writes, rawWrites(r.in, r.res.Ready, &seq))
		}
		db, err := bolt.Open(filepath.Join(dir, "raw.db"), 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, InitialMmapSize: initialMmap})
		if err != nil {
			b.Fatal(err)
		}
		db.Update(func(tx *bolt.Tx) error {
			for _, name := range allBuckets {
				tx.CreateBucketIfNotExists(name)
			}
			return nil
		})
		start = time.Now()
		k := 0
		for _, n := range batches {
			if err := db.Update(func(tx *bolt.Tx) error {
				for _, w := range writes[k : k+n] {
					for _, p := range w {
						bk := tx.Bucket(p.bucket)
						if p.del {
							if err := bk.Delete(p.key); err != nil {
								return err
							}
						} else if err := bk.Put(p.key, p.val); err != nil {
							return err
						}
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			k += n
		}
		r := time.Since(start)
		raw += r
		ratios = append(ratios, float64(r)/float64(g))
		db.Close()

		// One transaction per input: fewer inputs, it is fsync-bound.
		s = mustOpen(b, filepath.Join(dir, "s.db"), filepath.Join(dir, "k"))
		c = NewCommitterWith(s, (&pool.Core{}).Step, CommitterOptions{MaxBatch: 1})
		benchRegister(b, c, benchPools)
		start = time.Now()
		commitWorkload(b, c, inputs/8, benchWriters, benchPools, 0)
		single += time.Since(start)
		singleN += inputs / 8
		c.Close()
		s.Close()
	}
	n := float64(b.N)
	gRate := float64(inputs) * n / group.Seconds()
	rRate := float64(inputs) * n / raw.Seconds()
	sRate := float64(singleN) / single.Seconds()
	b.ReportMetric(gRate, "group-inputs/s")
	b.ReportMetric(sRate, "one-tx-inputs/s")
	b.ReportMetric(rRate, "raw-bbolt-inputs/s")
	b.ReportMetric(gRate/rRate, "group/raw")
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "group/raw-median")
	b.ReportMetric(gRate/sRate, "group/one-tx")
	b.ReportMetric(float64(inputs)*n/float64(groupTx), "inputs/tx")
}

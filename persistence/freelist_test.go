package persistence

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// TestFreelistKeptInFile pins the freelist choice that keeps the file from growing
// under churn (docs/benchmarks.md, "End to end": a unit-sized run does not fragment
// bbolt's hashmap freelist measurably, so the memory run of cmd/bench-e2e is what shows
// it): the store allocates with the array freelist, and every commit writes the
// freelist into the file, so that an open reads it instead of walking every page.
func TestFreelistKeptInFile(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	if s.db.FreelistType != bolt.FreelistArrayType || s.db.NoFreelistSync {
		s.Close()
		t.Fatalf("freelist %q, NoFreelistSync %v; want %q written on commit", s.db.FreelistType, s.db.NoFreelistSync, bolt.FreelistArrayType)
	}
	c := newCommitter(s, (&pool.Core{}).Step)
	submitOK(t, c, regInput("reg", "p"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := openDBFile(db)
	if err != nil {
		t.Fatal(err)
	}
	defer f.f.Close()
	if f.meta.freelist == noFreelist || f.meta.freelist < 2 || f.meta.freelist >= f.meta.pgid {
		t.Fatalf("meta page names freelist page %#x (high-water mark %d): the freelist was not written", f.meta.freelist, f.meta.pgid)
	}
}

// BenchmarkOpenFreelist: bare bbolt opens of a database of n available KeyPackages
// with each freelist setting, in the same run. Without a synced freelist
// (NoFreelistSync) bbolt rebuilds it at open by walking every page of the file; the
// file is converted to that form (one commit without a freelist) before those opens
// and back after them.
func BenchmarkOpenFreelist(b *testing.B) {
	needBig(b)
	for _, n := range []int{40_000, 200_000, 1_000_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			path := filepath.Join(bigDB(b, n, bigPerPool), "kpool.db")
			st, _ := os.Stat(path)
			b.Logf("%d KeyPackages, %d MiB", n, st.Size()>>20)
			open := func(o bolt.Options) time.Duration {
				o.InitialMmapSize = initialMmap
				start := time.Now()
				db, err := bolt.Open(path, 0o600, &o)
				if err != nil {
					b.Fatal(err)
				}
				d := time.Since(start)
				if err := db.Update(func(*bolt.Tx) error { return nil }); err != nil {
					b.Fatal(err)
				}
				db.Close()
				return d
			}
			kinds := []struct {
				name string
				o    bolt.Options
			}{
				{"map", bolt.Options{FreelistType: bolt.FreelistMapType}},
				{"array", bolt.Options{FreelistType: bolt.FreelistArrayType}},
				{"map-nosync", bolt.Options{FreelistType: bolt.FreelistMapType, NoFreelistSync: true}},
				{"array-nosync", bolt.Options{FreelistType: bolt.FreelistArrayType, NoFreelistSync: true}},
			}
			took := make([]time.Duration, len(kinds))
			for b.Loop() {
				for i, k := range kinds {
					if k.o.NoFreelistSync && i > 0 && !kinds[i-1].o.NoFreelistSync {
						open(k.o) // convert: the commit writes no freelist
					}
					took[i] += open(k.o)
				}
				open(kinds[0].o) // convert back: the walk, then a commit with the freelist
			}
			for i, k := range kinds {
				b.ReportMetric(took[i].Seconds()*1e3/float64(b.N), "ms-"+k.name)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

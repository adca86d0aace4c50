package pool

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// The treap must behave as a sorted set under random puts and deletes.
func TestOrderedIndexMatchesSortedSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var x orderedIndex
	ref := map[IndexEntry]bool{}
	for i := range 20000 {
		// minutes, and sometimes a few nanoseconds either side of one: the key splits seconds and nanoseconds
		at := start.Add(time.Duration(rng.IntN(500))*time.Minute + time.Duration(rng.IntN(3)-1)*time.Duration(rng.IntN(2)))
		e := IndexEntry{At: at, Ref: fmt.Sprint("r", rng.IntN(300))}
		if rng.IntN(3) == 0 {
			x.del(e)
			delete(ref, e)
		} else {
			x.put(e)
			ref[e] = true
		}
		if i%997 != 0 {
			continue
		}
		until := start.Add(time.Duration(rng.IntN(600)) * time.Minute)
		var want, got []IndexEntry
		for e := range ref {
			if !e.At.After(until) {
				want = append(want, e)
			}
		}
		slices.SortFunc(want, func(a, b IndexEntry) int { // (At, Ref), independently of the treap's key
			if c := a.At.Compare(b.At); c != 0 {
				return c
			}
			return strings.Compare(a.Ref, b.Ref)
		})
		x.ascend(until, func(e IndexEntry) bool { got = append(got, e); return true })
		if !slices.Equal(got, want) || x.n != len(ref) {
			t.Fatalf("step %d: ascend(%s) = %d entries, want %d (size %d vs %d)", i, until, len(got), len(want), x.n, len(ref))
		}
	}
	// early stop
	n := 0
	x.ascend(start.Add(time.Hour*24), func(IndexEntry) bool { n++; return n < 3 })
	if n != 3 {
		t.Fatalf("ascend did not stop: %d", n)
	}
}

// Entries arriving in time order (the common case: deadlines move forward) must not
// degrade the treap into a list.
func TestOrderedIndexStaysBalanced(t *testing.T) {
	var x orderedIndex
	for i := range 100_000 {
		x.put(IndexEntry{At: start.Add(time.Duration(i) * time.Second), Ref: "r"})
		if i%2 == 1 {
			x.del(IndexEntry{At: start.Add(time.Duration(i-1) * time.Second), Ref: "r"})
		}
	}
	var depth func(n *node) int
	depth = func(n *node) int {
		if n == nil {
			return 0
		}
		return 1 + max(depth(n.left), depth(n.right))
	}
	// log2(50 000) ≈ 16; a random treap's depth stays within a small multiple of it
	if d := depth(x.root); x.n != 50_000 || d > 64 {
		t.Fatalf("%d entries, depth %d", x.n, d)
	}
}

package pool

import "time"

// orderedIndex is an in-memory ordered set of IndexEntry (a treap whose priorities are
// a hash of the key: balanced on average, and deterministic).
type orderedIndex struct {
	root *node
	n    int
}

type node struct {
	e           IndexEntry
	prio        uint64
	left, right *node
}

func less(a, b IndexEntry) bool {
	if !a.At.Equal(b.At) {
		return a.At.Before(b.At)
	}
	return a.Ref < b.Ref
}

// prio is FNV-1a of the ref and the time's Unix nanoseconds, computed in place: this
// runs on every index put, and formatting the time as text allocated each time.
func prio(e IndexEntry) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(e.Ref); i++ {
		h = (h ^ uint64(e.Ref[i])) * prime
	}
	ns := uint64(e.At.UnixNano())
	for range 8 {
		h = (h ^ ns&0xff) * prime
		ns >>= 8
	}
	return h
}

// split divides t into keys < e and keys >= e.
func split(t *node, e IndexEntry) (*node, *node) {
	if t == nil {
		return nil, nil
	}
	if less(t.e, e) {
		l, r := split(t.right, e)
		t.right = l
		return t, r
	}
	l, r := split(t.left, e)
	t.left = r
	return l, t
}

func merge(a, b *node) *node {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = merge(a.right, b)
		return a
	}
	b.left = merge(a, b.left)
	return b
}

func (x *orderedIndex) has(e IndexEntry) bool {
	t := x.root
	for t != nil {
		switch {
		case less(e, t.e):
			t = t.left
		case less(t.e, e):
			t = t.right
		default:
			return true
		}
	}
	return false
}

func (x *orderedIndex) put(e IndexEntry) {
	if x.has(e) {
		return
	}
	l, r := split(x.root, e)
	x.root = merge(merge(l, &node{e: e, prio: prio(e)}), r)
	x.n++
}

func (x *orderedIndex) del(e IndexEntry) {
	if !x.has(e) {
		return
	}
	l, r := split(x.root, e)
	// r's smallest key is e: drop it
	var drop func(t *node) *node
	drop = func(t *node) *node {
		if t.left == nil {
			return t.right
		}
		t.left = drop(t.left)
		return t
	}
	x.root = merge(l, drop(r))
	x.n--
}

// ascend calls fn in order for entries with At <= until, until fn returns false.
func (x *orderedIndex) ascend(until time.Time, fn func(IndexEntry) bool) {
	var walk func(t *node) bool
	walk = func(t *node) bool {
		if t == nil {
			return true
		}
		if !walk(t.left) {
			return false
		}
		if t.e.At.After(until) {
			return false
		}
		if !fn(t.e) {
			return false
		}
		return walk(t.right)
	}
	walk(x.root)
}

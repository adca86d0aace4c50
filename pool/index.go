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
	k           ikey
	prio        uint64
	left, right *node
}

// ikey is an entry's sort key with the time as plain integers: comparing two
// time.Time values (Equal, then Before) dominated the walks down the tree.
type ikey struct {
	sec  int64 // Unix seconds
	nsec int32 // nanoseconds within the second
	ref  string
}

func keyOf(e IndexEntry) ikey {
	return ikey{sec: e.At.Unix(), nsec: int32(e.At.Nanosecond()), ref: e.Ref}
}

// less orders keys by time, then ref: the order of IndexEntry.
func less(a, b ikey) bool {
	if a.sec != b.sec {
		return a.sec < b.sec
	}
	if a.nsec != b.nsec {
		return a.nsec < b.nsec
	}
	return a.ref < b.ref
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

// split divides t into keys < k and keys >= k.
func split(t *node, k ikey) (*node, *node) {
	if t == nil {
		return nil, nil
	}
	if less(t.k, k) {
		l, r := split(t.right, k)
		t.right = l
		return t, r
	}
	l, r := split(t.left, k)
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

func (x *orderedIndex) has(k ikey) bool {
	t := x.root
	for t != nil {
		switch {
		case less(k, t.k):
			t = t.left
		case less(t.k, k):
			t = t.right
		default:
			return true
		}
	}
	return false
}

// put adds e unless present. The new node goes down only to where its priority
// places it and splits just the subtree below: about half the node visits (and
// writes) of splitting the whole tree and merging it back.
func (x *orderedIndex) put(e IndexEntry) {
	k := keyOf(e)
	if x.has(k) {
		return
	}
	x.root = insert(x.root, &node{e: e, k: k, prio: prio(e)})
	x.n++
}

// insert adds n, whose key is not in t, and returns the new root of t.
func insert(t, n *node) *node {
	if t == nil {
		return n
	}
	if n.prio > t.prio {
		n.left, n.right = split(t, n.k)
		return n
	}
	if less(n.k, t.k) {
		t.left = insert(t.left, n)
	} else {
		t.right = insert(t.right, n)
	}
	return t
}

// del removes e if present: the node found is replaced by the merge of its children.
func (x *orderedIndex) del(e IndexEntry) {
	k := keyOf(e)
	if !x.has(k) {
		return
	}
	x.root = remove(x.root, k)
	x.n--
}

// remove deletes key k, which is in t, and returns the new root of t.
func remove(t *node, k ikey) *node {
	switch {
	case less(k, t.k):
		t.left = remove(t.left, k)
	case less(t.k, k):
		t.right = remove(t.right, k)
	default:
		return merge(t.left, t.right)
	}
	return t
}

// ascend calls fn in order for entries with At <= until, until fn returns false.
func (x *orderedIndex) ascend(until time.Time, fn func(IndexEntry) bool) {
	usec, unsec := until.Unix(), int32(until.Nanosecond())
	var walk func(t *node) bool
	walk = func(t *node) bool {
		if t == nil {
			return true
		}
		if !walk(t.left) {
			return false
		}
		if t.k.sec > usec || t.k.sec == usec && t.k.nsec > unsec { // t.e.At.After(until)
			return false
		}
		if !fn(t.e) {
			return false
		}
		return walk(t.right)
	}
	walk(x.root)
}

package persistence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
)

// bbolt maps the database file and trusts the page ids it finds: a truncated file or a
// flipped page id makes it read past the end of the file (SIGBUS, which no recover
// catches) or trip one of its assertions (a panic). So the file is checked with plain
// reads before bbolt maps it: at every Open the two meta pages and the pages they point
// at (O(1)), and in Check every page of the tree (verifyPages).
//
// The on-disk format (bbolt's version 2, little-endian on the platforms kpool runs on):
// every page starts with a 16-byte header (id u64, flags u16, count u16, overflow u32);
// pages 0 and 1 are meta pages whose body is magic u32, version u32, page size u32,
// flags u32, root bucket (root page u64, sequence u64), freelist page u64, high-water
// page id u64, txid u64 and an FNV-64a checksum of the fields before it.

const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16
	metaSize         = 64 // the meta fields after the page header, checksum included
	elementSize      = 16 // branch and leaf page elements
	noFreelist       = ^uint64(0)
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	metaPageFlag     = 0x04
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	minPageSize      = 512
	maxPageSize      = 1 << 16
)

// ErrCorrupt: the database file is damaged. Start-up, the tools and every read refuse it
// with a *CorruptError instead of crashing.
var ErrCorrupt = errors.New("corrupt database")

// CorruptError says which database is damaged and what was found.
type CorruptError struct {
	Path   string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s: %v: %s (restore it from a backup, or rebuild it from the event log with `worker replay`)", e.Path, ErrCorrupt, e.Reason)
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages below it may be in use
	txid     uint64
}

// parseMeta reads the meta body that starts at b[0]; ok is false when the magic, version
// or checksum is wrong (bbolt then falls back to the other meta page).
func parseMeta(b []byte) (boltMeta, bool) {
	if len(b) < metaSize {
		return boltMeta{}, false
	}
	le := binary.LittleEndian
	h := fnv.New64a()
	h.Write(b[:metaSize-8])
	if le.Uint32(b[0:]) != boltMagic || le.Uint32(b[4:]) != boltVersion || le.Uint64(b[56:]) != h.Sum64() {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(b[8:]), root: le.Uint64(b[16:]), freelist: le.Uint64(b[32:]),
		pgid: le.Uint64(b[40:]), txid: le.Uint64(b[48:])}, true
}

// pageHeader is the 16-byte header of a page.
type pageHeader struct {
	id       uint64
	flags    uint16
	count    uint16
	overflow uint32
}

func parsePageHeader(b []byte) pageHeader {
	le := binary.LittleEndian
	return pageHeader{id: le.Uint64(b[0:]), flags: le.Uint16(b[8:]), count: le.Uint16(b[10:]), overflow: le.Uint32(b[12:])}
}

// dbFile reads a database file with plain reads, never a mapping.
type dbFile struct {
	f    *os.File
	size int64
	meta boltMeta // the meta page bbolt will use
	// damagedMeta describes a meta page bbolt will not use, when one is invalid: it then
	// uses the transaction before.
	damagedMeta string
}

// fileState says whether a database file holds anything: a missing or empty file is
// what bbolt would silently initialise as a new database.
func fileState(path string) (exists, empty bool, err error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, true, nil
	}
	if err != nil {
		return false, false, err
	}
	return true, st.Size() == 0, nil
}

// checkFile refuses a non-empty file that bbolt could not map safely: no valid meta page,
// a page size bbolt never writes, a file shorter than its high-water mark, a root bucket
// or freelist page outside the file or not of its kind. It costs a few small reads.
func checkFile(path string) error {
	f, err := openDBFile(path)
	if err != nil || f == nil {
		return err
	}
	defer f.f.Close()
	return nil
}

// openDBFile opens and checks the meta pages; nil, nil for a missing or empty file.
func openDBFile(path string) (*dbFile, error) {
	exists, empty, err := fileState(path)
	if err != nil || !exists || empty {
		return nil, err
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	f := &dbFile{f: fh}
	if err := f.checkMeta(path); err != nil {
		fh.Close()
		return nil, err
	}
	return f, nil
}

func (f *dbFile) checkMeta(path string) error {
	corrupt := func(format string, a ...any) error {
		return &CorruptError{Path: path, Reason: fmt.Sprintf(format, a...)}
	}
	st, err := f.f.Stat()
	if err != nil {
		return err
	}
	f.size = st.Size()
	first := make([]byte, pageHeaderSize+metaSize)
	if _, err := f.f.ReadAt(first, 0); err != nil {
		return corrupt("file of %d bytes is too short to hold a meta page", f.size)
	}
	m0, ok0 := parseMeta(first[pageHeaderSize:])
	// Where is meta page 1? At the page size meta 0 names, or (meta 0 damaged) at one of
	// the sizes bbolt tries.
	sizes := []int64{int64(m0.pageSize)}
	if !ok0 {
		sizes = nil
		for s := int64(minPageSize); s <= maxPageSize; s *= 2 {
			sizes = append(sizes, s)
		}
	}
	var m1 boltMeta
	ok1 := false
	for _, s := range sizes {
		b := make([]byte, pageHeaderSize+metaSize)
		if _, err := f.f.ReadAt(b, s); err == nil {
			if m1, ok1 = parseMeta(b[pageHeaderSize:]); ok1 && int64(m1.pageSize) == s {
				break
			}
			ok1 = false
		}
	}
	switch {
	case ok0 && ok1 && m1.txid > m0.txid, !ok0 && ok1:
		f.meta = m1
	case ok0:
		f.meta = m0
	default:
		return corrupt("neither meta page is valid (magic, version or checksum)")
	}
	if !ok0 || !ok1 {
		bad := 0
		if ok0 {
			bad = 1
		}
		f.damagedMeta = fmt.Sprintf("meta page %d is invalid (magic, version or checksum): bbolt uses transaction %d of meta page %d; a commit torn by a crash does this (the next commit rewrites it), anything else lost the last commit", bad, f.meta.txid, 1-bad)
	}
	m := f.meta
	ps := int64(m.pageSize)
	if ps < minPageSize || ps > maxPageSize || ps&(ps-1) != 0 {
		return corrupt("page size %d is not one bbolt writes", ps)
	}
	if m.pgid < 2 || m.pgid > uint64(f.size/ps) {
		return corrupt("file of %d bytes holds %d pages of %d bytes, but its meta page says pages 0 to %d are in use (truncated?)", f.size, f.size/ps, ps, m.pgid-1)
	}
	if m.root < 2 || m.root >= m.pgid {
		return corrupt("root bucket page %d is outside pages 2 to %d", m.root, m.pgid-1)
	}
	if _, err := f.page(m.root, branchPageFlag|leafPageFlag); err != nil {
		return corrupt("root bucket: %v", err)
	}
	if m.freelist != noFreelist {
		if m.freelist < 2 || m.freelist >= m.pgid {
			return corrupt("freelist page %d is outside pages 2 to %d", m.freelist, m.pgid-1)
		}
		b, err := f.page(m.freelist, freelistPageFlag)
		if err != nil {
			return corrupt("freelist: %v", err)
		}
		// bbolt loads the freelist at open; an id past the file would be handed out
		if _, err := f.freelistIDs(b); err != nil {
			return corrupt("%v", err)
		}
	}
	return nil
}

// page reads page id (with its overflow pages) and checks its header: it names itself,
// has one of the wanted flags, and ends below the high-water mark.
func (f *dbFile) page(id uint64, want uint16) ([]byte, error) {
	ps := int64(f.meta.pageSize)
	hb := make([]byte, pageHeaderSize)
	if _, err := f.f.ReadAt(hb, int64(id)*ps); err != nil {
		return nil, fmt.Errorf("page %d cannot be read: %v", id, err)
	}
	h := parsePageHeader(hb)
	if h.id != id {
		return nil, fmt.Errorf("page %d calls itself page %d", id, h.id)
	}
	if h.flags&want == 0 || h.flags&^(branchPageFlag|leafPageFlag|metaPageFlag|freelistPageFlag) != 0 {
		return nil, fmt.Errorf("page %d has flags %#x, want one of %#x", id, h.flags, want)
	}
	if id+uint64(h.overflow)+1 > f.meta.pgid {
		return nil, fmt.Errorf("page %d with %d overflow pages runs past the high-water mark %d", id, h.overflow, f.meta.pgid)
	}
	b := make([]byte, (int64(h.overflow)+1)*ps)
	if _, err := f.f.ReadAt(b, int64(id)*ps); err != nil && err != io.EOF {
		return nil, fmt.Errorf("page %d cannot be read: %v", id, err)
	}
	if h.flags&(branchPageFlag|leafPageFlag) != 0 && pageHeaderSize+int(h.count)*elementSize > len(b) {
		return nil, fmt.Errorf("page %d claims %d elements, more than fit", id, h.count)
	}
	return b, nil
}

// verifyPages walks every page reachable from the root bucket and the freelist with
// plain reads and returns the first problem as a *CorruptError: a page outside the file,
// a page referenced twice (a cycle would otherwise loop for ever), an element outside its
// page, a freed page still in use. A damaged meta page that bbolt can do without is a
// warning. It reads the whole file once; `worker db check` runs it, Open does not.
func verifyPages(path string) (warning string, err error) {
	f, err := openDBFile(path)
	if err != nil || f == nil {
		return "", err
	}
	defer f.f.Close()
	w := &pageWalk{f: f, seen: map[uint64]bool{0: true, 1: true}}
	if err := w.tree(f.meta.root); err != nil {
		return "", &CorruptError{Path: path, Reason: err.Error()}
	}
	if err := w.freelist(); err != nil {
		return "", &CorruptError{Path: path, Reason: err.Error()}
	}
	return f.damagedMeta, nil
}

type pageWalk struct {
	f    *dbFile
	seen map[uint64]bool // pages in use (with their overflow pages)
}

// claim marks a page and its overflow pages as used; a page used twice is corrupt.
func (w *pageWalk) claim(id uint64, overflow uint32) error {
	for p := id; p <= id+uint64(overflow); p++ {
		if w.seen[p] {
			return fmt.Errorf("page %d is referenced twice", p)
		}
		w.seen[p] = true
	}
	return nil
}

// tree walks the branch/leaf pages under id, and every bucket its leaves hold.
func (w *pageWalk) tree(id uint64) error {
	b, err := w.f.page(id, branchPageFlag|leafPageFlag)
	if err != nil {
		return err
	}
	h := parsePageHeader(b)
	if err := w.claim(id, h.overflow); err != nil {
		return err
	}
	return w.elements(b, id)
}

// elements checks the elements of the branch or leaf page in b (a page of the file, or
// an inline bucket's page) and walks what they point at.
func (w *pageWalk) elements(b []byte, id uint64) error {
	le := binary.LittleEndian
	h := parsePageHeader(b)
	if pageHeaderSize+int(h.count)*elementSize > len(b) {
		return fmt.Errorf("page %d claims %d elements, more than fit", id, h.count)
	}
	for i := range int(h.count) {
		off := pageHeaderSize + i*elementSize
		e := b[off : off+elementSize]
		if h.flags&branchPageFlag != 0 {
			pos, ksize, child := le.Uint32(e[0:]), le.Uint32(e[4:]), le.Uint64(e[8:])
			if uint64(off)+uint64(pos)+uint64(ksize) > uint64(len(b)) {
				return fmt.Errorf("page %d element %d: key outside the page", id, i)
			}
			if child < 2 || child >= w.f.meta.pgid {
				return fmt.Errorf("page %d element %d: child page %d outside pages 2 to %d", id, i, child, w.f.meta.pgid-1)
			}
			if err := w.tree(child); err != nil {
				return err
			}
			continue
		}
		flags, pos, ksize, vsize := le.Uint32(e[0:]), le.Uint32(e[4:]), le.Uint32(e[8:]), le.Uint32(e[12:])
		end := uint64(off) + uint64(pos) + uint64(ksize) + uint64(vsize)
		if end > uint64(len(b)) {
			return fmt.Errorf("page %d element %d: key or value outside the page", id, i)
		}
		if flags&bucketLeafFlag == 0 {
			continue
		}
		v := b[uint64(off)+uint64(pos)+uint64(ksize) : end]
		if len(v) < 16 {
			return fmt.Errorf("page %d element %d: bucket header of %d bytes", id, i, len(v))
		}
		root := le.Uint64(v)
		if root != 0 {
			if root < 2 || root >= w.f.meta.pgid {
				return fmt.Errorf("page %d element %d: bucket root page %d outside pages 2 to %d", id, i, root, w.f.meta.pgid-1)
			}
			if err := w.tree(root); err != nil {
				return err
			}
			continue
		}
		inline := v[16:] // an inline bucket: a leaf page inside the value
		if len(inline) < pageHeaderSize {
			return fmt.Errorf("page %d element %d: inline bucket of %d bytes", id, i, len(inline))
		}
		if ih := parsePageHeader(inline); ih.flags != leafPageFlag {
			return fmt.Errorf("page %d element %d: inline bucket page has flags %#x", id, i, ih.flags)
		}
		if err := w.elements(inline, id); err != nil {
			return err
		}
	}
	return nil
}

// freelist checks that every freed page id is below the high-water mark, listed once and
// not in use, and that every page below the mark is in use or free.
func (w *pageWalk) freelist() error {
	if w.f.meta.freelist == noFreelist {
		return nil
	}
	b, err := w.f.page(w.f.meta.freelist, freelistPageFlag)
	if err != nil {
		return err
	}
	h := parsePageHeader(b)
	if err := w.claim(w.f.meta.freelist, h.overflow); err != nil {
		return err
	}
	ids, err := w.f.freelistIDs(b)
	if err != nil {
		return err
	}
	freed := map[uint64]bool{}
	for _, id := range ids {
		switch {
		case freed[id]:
			return fmt.Errorf("freelist names page %d twice", id)
		case w.seen[id]:
			return fmt.Errorf("page %d is both in use and free", id)
		}
		freed[id] = true
	}
	for id := uint64(2); id < w.f.meta.pgid; id++ {
		if !w.seen[id] && !freed[id] {
			return fmt.Errorf("page %d is neither in use nor free", id)
		}
	}
	return nil
}

// freelistIDs reads the page ids of the freelist page in b and checks each is below the
// high-water mark.
func (f *dbFile) freelistIDs(b []byte) ([]uint64, error) {
	h := parsePageHeader(b)
	n, start := uint64(h.count), uint64(pageHeaderSize)
	if h.count == 0xFFFF { // the real count is the first id
		if len(b) < pageHeaderSize+8 {
			return nil, fmt.Errorf("freelist page %d is too short for its count", f.meta.freelist)
		}
		n, start = binary.LittleEndian.Uint64(b[pageHeaderSize:]), pageHeaderSize+8
	}
	if n > uint64(len(b)) || start+n*8 > uint64(len(b)) {
		return nil, fmt.Errorf("freelist page %d claims %d ids, more than fit", f.meta.freelist, n)
	}
	ids := make([]uint64, n)
	for i := range n {
		id := binary.LittleEndian.Uint64(b[start+i*8:])
		if id < 2 || id >= f.meta.pgid {
			return nil, fmt.Errorf("freelist names page %d, outside pages 2 to %d", id, f.meta.pgid-1)
		}
		ids[i] = id
	}
	return ids, nil
}

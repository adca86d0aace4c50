package persistence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/pool"
	bolt "go.etcd.io/bbolt"
)

// coreDB fills a database through the real core: two pools, KeyPackages generated,
// acked, claimed and taken.
func coreDB(t *testing.T) *Store {
	t.Helper()
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	c := newCommitter(s, (&pool.Core{}).Step)
	defer c.Close()
	for _, p := range []string{"p1", "p2"} {
		submitOK(t, c, regInput("r-"+p, p))
	}
	for i := range 20 {
		p := []string{"p1", "p2"}[i%2]
		submitOK(t, c, genInput("g"+refOf(i), p, refOf(i), t0.Add(time.Minute)))
		if i%4 != 3 {
			submitOK(t, c, Input{Event: evRef("a"+refOf(i), events.TypeUploadAck, p, refOf(i), t0.Add(2*time.Minute))})
		}
		if i%4 == 1 {
			submitOK(t, c, Input{Event: evRef("x"+refOf(i), events.TypeConsumed, p, refOf(i), t0.Add(3*time.Minute)), Reveal: refOf(i)})
		}
	}
	return s
}

func checkProblems(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	if err := s.Check(func(p string) { out = append(out, p) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCheckCleanDatabase(t *testing.T) {
	s := coreDB(t)
	defer s.Close()
	if p := checkProblems(t, s); len(p) != 0 {
		t.Fatalf("clean database: %v", p)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(v *txView) error
		want   string
	}{
		{"live KeyPackage without keys", func(v *txView) error { return v.secrets.Delete([]byte(refOf(0))) },
			"without private keys"},
		{"deleted KeyPackage with keys", func(v *txView) error { return v.secrets.Put([]byte(refOf(1)), []byte("x")) },
			"deleted but its private keys remain"},
		{"index entry lost", func(v *txView) error {
			kp, _, _ := v.KeyPackage(refOf(2))
			return v.expiry.Delete(indexKey(kp.Deadline, kp.Ref))
		}, "no expiry index entry"},
		{"index entry with a value", func(v *txView) error {
			kp, _, _ := v.KeyPackage(refOf(2))
			return v.expiry.Put(indexKey(kp.Deadline, kp.Ref), []byte("abc"))
		}, "holds a 3-byte value, not none"},
		{"index entry of no record", func(v *txView) error { return v.expiry.Put(indexKey(t0, refOf(99)), nil) },
			"expiry index: entry " + refOf(99) + " at 2026-11-01 12:00:00 +0000 UTC does not match a record"},
		{"index entry of no re-ask", func(v *txView) error { return v.expiry.Put(indexKey(t0, pool.ClientTimerRef("p1")), nil) },
			"expiry index: client re-ask p1 at 2026-11-01 12:00:00 +0000 UTC does not match a pool"},
		{"meta key damaged", func(v *txView) error { return v.meta.Put([]byte("input_sfq"), seqKey(1)) },
			`meta: unknown key "input_sfq"`},
		{"meta value damaged", func(v *txView) error { return v.meta.Put(kInputSeq, []byte{1}) },
			"meta input_seq: 1 bytes, not an 8-byte sequence"},
		{"pool record under another key", func(v *txView) error {
			return errors.Join(v.pools.Put([]byte("p3"), bytes.Clone(v.pools.Get([]byte("p2")))), v.pools.Delete([]byte("p2")))
		}, `pool "p3": record names pool p2`},
		{"orphan secret", func(v *txView) error { return v.secrets.Put([]byte(refOf(99)), []byte("x")) },
			"no such KeyPackage"},
		{"journal gap", func(v *txView) error { return v.journal.Delete(seqKey(3)) }, "follows"},
		{"counter drift", func(v *txView) error {
			p, _, _ := v.Pool("p1")
			p.Counts.Available++
			data, _ := json.Marshal(p)
			return v.pools.Put([]byte("p1"), data)
		}, "recount"},
		{"damaged ciphertext", func(v *txView) error {
			b := append([]byte(nil), v.secrets.Get([]byte(refOf(2)))...)
			b[20] ^= 1
			return v.secrets.Put([]byte(refOf(2)), b)
		}, "do not decrypt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := coreDB(t)
			defer s.Close()
			if err := s.db.Update(func(tx *bolt.Tx) error { return tc.damage(newTxView(tx)) }); err != nil {
				t.Fatal(err)
			}
			p := checkProblems(t, s)
			if len(p) == 0 || !strings.Contains(strings.Join(p, "\n"), tc.want) {
				t.Fatalf("Check found %q, want a problem mentioning %q", p, tc.want)
			}
		})
	}
}

func TestCompactDropsErasedCiphertext(t *testing.T) {
	s := coreDB(t)
	path := s.Path()
	// Seal a bundle, remember its ciphertext, then take the KeyPackage: the erase
	// removes the ciphertext from the live records, but the page that held it is only
	// freed, and its bytes stay in the file until bbolt reuses it.
	c := newCommitter(s, (&pool.Core{}).Step)
	ref := refOf(500)
	submitOK(t, c, genInput("g500", "p1", ref, t0.Add(4*time.Minute)))
	sealed := []byte(dump(t, s)["secrets"][ref])
	submitOK(t, c, Input{Event: evRef("a500", events.TypeUploadAck, "p1", ref, t0.Add(5*time.Minute))})
	submitOK(t, c, Input{Event: evRef("x500", events.TypeConsumed, "p1", ref, t0.Add(6*time.Minute)), Reveal: ref})
	c.Close()
	live := dump(t, s)
	if _, ok := live["secrets"][ref]; ok || len(sealed) == 0 {
		t.Fatal("the take did not erase the ciphertext")
	}
	t.Logf("erased ciphertext still in the original file's freed pages: %v", bytes.Contains(fileBytes(t, path), sealed))

	dst := path + ".compact"
	if err := s.CompactTo(dst); err != nil {
		t.Fatal(err)
	}
	if err := s.CompactTo(dst); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second CompactTo over an existing file: %v", err)
	}
	s.Close()
	if bytes.Contains(fileBytes(t, dst), sealed) {
		t.Fatal("the compacted copy still holds the erased ciphertext")
	}
	cs, err := Open(dst, Options{KeyFile: filepath.Join(filepath.Dir(path), "kpool.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if d := sameDump(live, dump(t, cs)); d != "" {
		t.Fatalf("compacted copy differs: %s", d)
	}
	if p := checkProblems(t, cs); len(p) != 0 {
		t.Fatalf("compacted copy: %v", p)
	}
}

// TestCheckPoolIndex damages the per-pool index of a real store one entry at a time and
// requires exactly the problems that name the damage. Losing a record from a pool's
// index also changes the pool.CheckPool recount over that index: its problem is matched
// by the start of its line (the counts it prints are the core's business).
func TestCheckPoolIndex(t *testing.T) {
	flipLast := func(k []byte, mask byte) []byte {
		k = append([]byte(nil), k...)
		k[len(k)-1] ^= mask
		return k
	}
	p1r0 := poolKPKey("p1", refOf(0)) // refOf(0) is in p1, refOf(1) in p2
	for _, tc := range []struct {
		name    string
		damage  func(v *txView) error
		want    []string
		recount string // the prefix of the recount problem, if the damage makes one
	}{
		{"key byte flipped", func(v *txView) error {
			return errors.Join(v.poolKPs.Delete(p1r0), v.poolKPs.Put(flipLast(p1r0, 0xff), nil))
		}, []string{
			fmt.Sprintf(`per-pool index: entry "p1/%s\xcf" names KeyPackage "%[1]s\xcf": no such record`, refOf(0)[:63]),
			fmt.Sprintf("keypackage %s: missing from the index of pool p1", refOf(0)),
		}, "invariant violated: pool p1 counts "},
		{"key flipped to another pool's record", func(v *txView) error {
			return errors.Join(v.poolKPs.Delete(p1r0), v.poolKPs.Put(flipLast(p1r0, 0x01), nil))
		}, []string{
			fmt.Sprintf(`per-pool index: entry "p1/%s" names KeyPackage %[1]s of pool p2`, refOf(1)),
			fmt.Sprintf("keypackage %s: missing from the index of pool p1", refOf(0)),
		}, "invariant violated: pool p1: KeyPackage " + refOf(1) + " belongs to p2"},
		{"entry missing", func(v *txView) error { return v.poolKPs.Delete(poolKPKey("p2", refOf(3))) }, []string{
			fmt.Sprintf("keypackage %s: missing from the index of pool p2", refOf(3)),
		}, "invariant violated: pool p2 counts "},
		{"entry of no pool", func(v *txView) error { return v.poolKPs.Put(poolKPKey("p9", refOf(0)), nil) }, []string{
			fmt.Sprintf(`per-pool index: entry "p9/%s" names pool "p9": no such pool`, refOf(0)),
			fmt.Sprintf(`per-pool index: entry "p9/%s" names KeyPackage %[1]s of pool p1`, refOf(0)),
		}, ""},
		{"entry with a value", func(v *txView) error { return v.poolKPs.Put(p1r0, []byte("abc")) }, []string{
			fmt.Sprintf(`per-pool index: entry "p1/%s" holds a 3-byte value, not none`, refOf(0)),
		}, ""},
		{"entry without a pool", func(v *txView) error { return v.poolKPs.Put([]byte("p1"), nil) }, []string{
			`per-pool index: malformed key "p1" (no "/")`,
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := coreDB(t)
			defer s.Close()
			before := dump(t, s)
			if err := s.db.Update(func(tx *bolt.Tx) error { return tc.damage(newTxView(tx)) }); err != nil {
				t.Fatal(err)
			}
			if sameDump(before, dump(t, s)) == "" {
				t.Fatal("the damage changed nothing")
			}
			got := checkProblems(t, s)
			if tc.recount != "" {
				i := slices.IndexFunc(got, func(p string) bool { return strings.HasPrefix(p, tc.recount) })
				if i < 0 {
					t.Fatalf("Check found %q, want a recount problem starting %q", got, tc.recount)
				}
				got = slices.Delete(got, i, i+1)
			}
			slices.Sort(got)
			slices.Sort(tc.want)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Check found\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

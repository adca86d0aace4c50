package persistence

import (
	"bytes"
	"encoding/json"
	"path/filepath"
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

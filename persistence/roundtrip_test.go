package persistence

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/fsm"
	"github.com/kpool/kpool/pool"
)

// scenario drives every record type through the committer and returns the model of
// what must be stored.
func scenario(t *testing.T, c *committer) *model {
	t.Helper()
	m := newModel()
	run := func(in Input) Result {
		res := submitOK(t, c, in)
		m.apply(in, res.Ready)
		return res
	}
	run(regInput("r1", "p1"))
	run(regInput("r2", "p2"))
	for i := range 6 {
		p := []string{"p1", "p2"}[i%2]
		run(genInput("g"+refOf(i), p, refOf(i), t0.Add(time.Duration(i)*time.Minute)))
	}
	for _, i := range []int{0, 1, 2, 3} {
		p := []string{"p1", "p2"}[i%2]
		run(Input{Event: evRef("a"+refOf(i), events.TypeUploadAck, p, refOf(i), t0.Add(10*time.Minute))})
	}
	run(Input{Event: evRef("c2", events.TypeClaimed, "p1", refOf(2), t0.Add(11*time.Minute))})
	res := run(Input{Event: evRef("x0", events.TypeConsumed, "p1", refOf(0), t0.Add(12*time.Minute)), Reveal: refOf(0)})
	if !bytes.Equal(res.Revealed, secretOf(refOf(0))) {
		t.Fatalf("Revealed = %q, want the stored bundle", res.Revealed)
	}
	// 4, 5 were never acked: expire; then delete; then purge the consumed tombstone.
	run(Input{Event: evTick("t1", t0.Add(2*time.Hour))})
	run(Input{Event: evTick("t2", t0.Add(4*time.Hour))})
	run(Input{Event: evTick("t3", t0.Add(30*time.Hour))})
	run(Input{Event: evRef("x3", events.TypeConsumed, "p2", refOf(3), t0.Add(31*time.Hour)), Reveal: refOf(3)})
	return m
}

func checkAgainstModel(t *testing.T, s *Store, m *model) {
	t.Helper()
	meta, err := s.Meta()
	if err != nil || meta != m.meta {
		t.Fatalf("Meta = %+v, %v; want %+v", meta, err, m.meta)
	}
	pools, err := s.Pools()
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != len(m.pools) {
		t.Fatalf("Pools: %d, want %d", len(pools), len(m.pools))
	}
	for _, p := range pools {
		if !reflect.DeepEqual(p, m.pools[p.ID]) {
			t.Errorf("pool %s = %+v, want %+v", p.ID, p, m.pools[p.ID])
		}
		got, ok, err := s.Pool(p.ID)
		if err != nil || !ok || !reflect.DeepEqual(got, p) {
			t.Errorf("Pool(%s) = %+v %v %v", p.ID, got, ok, err)
		}
		n := 0
		if err := s.KeyPackages(p.ID, func(kp pool.KeyPackage) bool {
			n++
			if kp.Pool != p.ID {
				t.Errorf("KeyPackages(%s) yielded %s of pool %s", p.ID, kp.Ref, kp.Pool)
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, kp := range m.kps {
			if kp.Pool == p.ID {
				want++
			}
		}
		if n != want {
			t.Errorf("KeyPackages(%s): %d records, want %d", p.ID, n, want)
		}
	}
	for ref, want := range m.kps {
		got, ok, err := s.KeyPackage(ref)
		if err != nil || !ok {
			t.Fatalf("KeyPackage(%s): %v %v", ref, ok, err)
		}
		if !got.Deadline.Equal(want.Deadline) || !got.CreatedAt.Equal(want.CreatedAt) {
			t.Errorf("KeyPackage(%s) times differ: %v/%v", ref, got.Deadline, want.Deadline)
		}
		got.Deadline, got.CreatedAt, got.UpdatedAt = want.Deadline, want.CreatedAt, want.UpdatedAt
		if !reflect.DeepEqual(got, want) {
			t.Errorf("KeyPackage(%s) = %+v, want %+v", ref, got, want)
		}
	}
	for i := range 10 {
		if _, ok := m.kps[refOf(i)]; !ok {
			if _, ok, _ := s.KeyPackage(refOf(i)); ok {
				t.Errorf("KeyPackage(%s) present, want purged or never written", refOf(i))
			}
		}
	}
	var due []string
	if err := s.View(func(v pool.View) error {
		return v.Due(time.Unix(1<<40, 0), func(e pool.IndexEntry) bool {
			due = append(due, string(indexKey(e.At, e.Ref)))
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.IsSorted(due) || len(due) != len(m.index) {
		t.Errorf("index: %d entries (sorted %v), want %d", len(due), slices.IsSorted(due), len(m.index))
	}
	for _, k := range due {
		if _, ok := m.index[k]; !ok {
			t.Errorf("index entry %x not expected", k)
		}
	}
	for id, want := range m.secrets {
		got, err := s.Secret(id)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("Secret(%s) = %q, %v", id, got, err)
		}
	}
	for i := range 10 {
		if _, ok := m.secrets[refOf(i)]; !ok {
			if _, err := s.Secret(refOf(i)); !errors.Is(err, ErrNotFound) {
				t.Errorf("Secret(%s) after erase: %v, want ErrNotFound", refOf(i), err)
			}
		}
	}
	var seqs []uint64
	var journaled []events.Event
	if err := s.Journal(1, 0, func(seq uint64, ev events.Event) error {
		seqs = append(seqs, seq)
		journaled = append(journaled, ev)
		if m.journal[seq] != ev.ID {
			t.Errorf("journal %d = %s, want %s", seq, ev.ID, m.journal[seq])
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != len(m.journal) || seqs[0] != 1 || seqs[len(seqs)-1] != uint64(len(seqs)) {
		t.Errorf("journal seqs %v, want 1..%d", seqs, len(m.journal))
	}
	var ob []string
	if err := s.Outbox(func(o events.Outbound) error { ob = append(ob, o.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ob, m.outbox) {
		t.Errorf("outbox %v, want %v", ob, m.outbox)
	}
	if err := s.View(func(v pool.View) error {
		for _, ev := range journaled {
			if d, seen, _ := v.Seen(ev.Pool, ev.ID); !seen || d != ev.Digest() {
				t.Errorf("Seen(%s, %s) = %v, digest match %v", ev.Pool, ev.ID, seen, d == ev.Digest())
			}
		}
		if _, seen, _ := v.Seen("", "never"); seen {
			t.Error("Seen(never) = true")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTripEveryRecordType(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	c := newCommitter(s, fakeStep)
	m := scenario(t, c)
	// The scenario must have produced every kind of change, or this test proves little.
	_, kept0 := m.kps[refOf(0)]
	_, kept4 := m.kps[refOf(4)]
	if kept0 || kept4 {
		t.Fatal("scenario: tombstones not purged")
	}
	if m.kps[refOf(2)].State != fsm.Claimed || m.kps[refOf(3)].State != fsm.Deleted || m.kps[refOf(1)].State != fsm.Available {
		t.Fatalf("scenario: states %s %s %s", m.kps[refOf(2)].State, m.kps[refOf(3)].State, m.kps[refOf(1)].State)
	}
	checkAgainstModel(t, s, m)
	before := dump(t, s)
	c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, db, key)
	defer s.Close()
	checkAgainstModel(t, s, m)
	if d := sameDump(before, dump(t, s)); d != "" {
		t.Fatalf("reopen changed the file: %s", d)
	}
}

func TestDuplicateWritesNothing(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := newCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	in := genInput("g1", "p1", refOf(1), t0)
	submitOK(t, c, in)
	before := dump(t, s)
	in.Secrets = map[string][]byte{refOf(1): []byte("other key material")}
	res := submitOK(t, c, in)
	if !res.Ready.Duplicate {
		t.Fatalf("second delivery: Duplicate = false")
	}
	if d := sameDump(before, dump(t, s)); d != "" {
		t.Fatalf("duplicate changed the store: %s", d)
	}
	if got, _ := s.Secret(refOf(1)); !bytes.Equal(got, secretOf(refOf(1))) {
		t.Fatalf("duplicate replaced the secret")
	}
}

func TestRejectedStepWritesNothing(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := newCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	before := dump(t, s)
	res := submit(t, c, Input{Event: evRef("a1", events.TypeUploadAck, "p1", refOf(9), t0), Secrets: map[string][]byte{"x": []byte("s")}})
	var rej *pool.RejectError
	if !errors.As(res.Err, &rej) || rej.Code != pool.CodeUnknownRef {
		t.Fatalf("Err = %v, want unknown_ref rejection", res.Err)
	}
	if d := sameDump(before, dump(t, s)); d != "" {
		t.Fatalf("rejected input changed the store: %s", d)
	}
}

func TestMissingSecretRefused(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := newCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	before := dump(t, s)
	res := submit(t, c, Input{Event: evGen("g1", "p1", refOf(1), t0)}) // no Secrets
	var ie *InputError
	if !errors.Is(res.Err, ErrMissingSecret) || !errors.As(res.Err, &ie) || ie.Ref != refOf(1) {
		t.Fatalf("Err = %v, want ErrMissingSecret for %s", res.Err, refOf(1))
	}
	if d := sameDump(before, dump(t, s)); d != "" {
		t.Fatalf("refused input changed the store: %s", d)
	}
	// The next input gets the sequence the refused one would have had.
	res = submitOK(t, c, genInput("g2", "p1", refOf(2), t0))
	if res.Ready.Seq != 2 {
		t.Fatalf("Seq after refusal = %d, want 2", res.Ready.Seq)
	}
}

func TestJournalOrderAndRange(t *testing.T) {
	db, key := testPaths(t)
	s := mustOpen(t, db, key)
	defer s.Close()
	c := newCommitter(s, fakeStep)
	defer c.Close()
	submitOK(t, c, regInput("r1", "p1"))
	for i := range 20 {
		submitOK(t, c, genInput("g"+refOf(i), "p1", refOf(i), t0))
	}
	var got []uint64
	if err := s.Journal(5, 9, func(seq uint64, ev events.Event) error {
		got = append(got, seq)
		if ev.Type != events.TypeGenerated || ev.Generated.Ref != refOf(int(seq)-2) {
			t.Errorf("journal %d = %+v", seq, ev)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []uint64{5, 6, 7, 8, 9}) {
		t.Fatalf("Journal(5,9) = %v", got)
	}
	// The stored entry is the input's JSON.
	if err := s.Journal(1, 1, func(_ uint64, ev events.Event) error {
		want, _ := json.Marshal(evReg("r1", "p1"))
		have, _ := json.Marshal(ev)
		if !bytes.Equal(want, have) {
			t.Errorf("journal 1 = %s, want %s", have, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

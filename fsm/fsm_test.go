package fsm

import (
	"errors"
	"flag"
	"os"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "regenerate docs/state-diagram.md")

const diagramPath = "../docs/state-diagram.md"

func TestStateDiagram(t *testing.T) {
	want, err := Document()
	if err != nil {
		t.Fatal(err)
	}
	if *rewrite {
		if err := os.MkdirAll("../docs", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(diagramPath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(diagramPath)
	if err != nil {
		t.Fatalf("%v (run `make generate`)", err)
	}
	if string(got) != want {
		t.Fatalf("%s is out of date with fsm.Table; run `make generate`", diagramPath)
	}
}

func TestFireValid(t *testing.T) {
	cases := []struct {
		from State
		ev   Event
		kind Kind
		to   State
	}{
		{Created, UploadAck, Regular, Available},
		{Created, UploadAck, LastResort, Available},
		{Created, UploadRejected, Regular, Deleted},
		{Created, UploadFailed, Regular, Deleted},
		{Created, Expire, Regular, Expired},
		{Available, Claim, Regular, Claimed},
		{Available, Claim, LastResort, Available},
		{Available, Consume, Regular, Deleted},
		{Available, Consume, LastResort, Available},
		{Claimed, Consume, Regular, Deleted},
		{Expired, Consume, Regular, Deleted},
		{Expired, Consume, LastResort, Deleted},
		{Available, Expire, LastResort, Expired},
		{Claimed, Expire, Regular, Expired},
		{Expired, Delete, Regular, Deleted},
		{Created, Lose, Regular, Deleted},
		{Available, Lose, LastResort, Deleted},
		{Claimed, Lose, Regular, Deleted},
		{Expired, Lose, Regular, Deleted},
	}
	for _, c := range cases {
		got, err := Fire("ab", c.from, c.ev, c.kind)
		if err != nil || got != c.to {
			t.Errorf("Fire(%s, %s, %s) = %s, %v; want %s", c.from, c.ev, c.kind, got, err, c.to)
		}
	}
}

func TestFireInvalid(t *testing.T) {
	cases := []struct {
		from State
		ev   Event
		kind Kind
	}{
		{Created, Claim, Regular},
		{Created, Consume, Regular},
		{Available, UploadAck, Regular}, // duplicate ack
		{Claimed, Claim, Regular},       // a looplab self-transition would be NoTransitionError
		{Expired, Expire, Regular},
		{Deleted, UploadAck, Regular},
		{Deleted, Consume, LastResort},
		{Deleted, Delete, Regular},
		{Available, Delete, Regular},
		{Created, "bogus", Regular}, // unknown event
	}
	for _, c := range cases {
		got, err := Fire("ab12", c.from, c.ev, c.kind)
		var te *TransitionError
		if !errors.As(err, &te) || !errors.Is(err, ErrInvalidTransition) {
			t.Fatalf("Fire(%s, %s) err = %v; want *TransitionError", c.from, c.ev, err)
		}
		if te.Ref != "ab12" || te.State != c.from || te.Event != c.ev || got != c.from {
			t.Errorf("Fire(%s, %s) = %s, %+v", c.from, c.ev, got, te)
		}
	}
	_, err := Fire("ab12", Deleted, UploadAck, Regular)
	if want := "KeyPackage ab12 is deleted (tombstone): event upload_ack is not accepted"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	_, err = Fire("ab12", Claimed, Claim, Regular)
	if want := "KeyPackage ab12 is claimed: event claimed is not valid in that state"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// Every state/event/kind combination either follows exactly one table row or fails typed.
func TestFireMatchesTable(t *testing.T) {
	events := []Event{UploadAck, UploadRejected, UploadFailed, Claim, Consume, Expire, Delete, Lose}
	for _, s := range States {
		for _, e := range events {
			for _, k := range []Kind{Regular, LastResort} {
				var want []State
				for _, r := range Table {
					if r.Event != e || (r.Kind != Any && r.Kind != k) {
						continue
					}
					for _, f := range r.From {
						if f == s {
							want = append(want, r.To)
						}
					}
				}
				if len(want) > 1 {
					t.Fatalf("table is ambiguous for %s/%s/%s: %v", s, e, k, want)
				}
				got, err := Fire("r", s, e, k)
				if len(want) == 0 {
					if err == nil {
						t.Errorf("%s/%s/%s: want error, got %s", s, e, k, got)
					}
				} else if err != nil || got != want[0] {
					t.Errorf("%s/%s/%s = %s, %v; want %s", s, e, k, got, err, want[0])
				}
			}
		}
	}
	for _, ev := range events {
		if Can(Deleted, ev, Regular) || Can(Deleted, ev, LastResort) {
			t.Errorf("deleted must be terminal, but %s is accepted", ev)
		}
	}
}

package events

import "testing"

func TestUnpartitioned(t *testing.T) {
	s := Subjects{Prefix: "kpool"}
	for in, want := range map[string]string{
		"kpool.part.7.events.alice.claimed": "kpool.events.alice.claimed",
		"kpool.part.12.inputs.bob.consumed": "kpool.inputs.bob.consumed",
		"kpool.events.tick":                 "kpool.events.tick",
		"kpool.part":                        "kpool.part",
	} {
		if got := s.Unpartitioned(in); got != want {
			t.Errorf("Unpartitioned(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPartitionOfSpreadsAndIsStable(t *testing.T) {
	// FNV-1a of "alice" is 0xfb6ba0ae → 7 of 16, as nats-server's partition(16,…) puts it
	// (TestPartitionsMatchTheServer in worker checks against a live server).
	if got := PartitionOf("alice", 16); got != 7 {
		t.Fatalf("PartitionOf(alice, 16) = %d, want 7", got)
	}
	if got := PartitionOf("alice", 1); got != 0 {
		t.Fatalf("one partition: got %d", got)
	}
	seen := map[int]int{}
	for i := range 1000 {
		seen[PartitionOf("pool-"+string(rune('a'+i%26))+string(rune('a'+i/26)), 16)]++
	}
	if len(seen) != 16 {
		t.Fatalf("1000 pools reached %d of 16 partitions", len(seen))
	}
}

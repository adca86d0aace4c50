package replay

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// WriteText prints the summary for people: totals, one block per pool in id order, then
// the notes. The output depends only on the log, so two replays print the same bytes.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "replayed %d inputs (last seq %d): applied %d, duplicates %d, rejected %d, bad lines %d\n",
		s.Records, s.LastSeq, s.Applied, s.Duplicates, s.Rejected, s.BadLines)
	if s.Resumed > 0 {
		fmt.Fprintf(&b, "resumed: %d inputs were already in the database\n", s.Resumed)
	}
	for _, id := range s.PoolIDs() {
		p := s.Pools[id]
		health := p.Health
		if health == "" {
			health = "-"
		}
		fmt.Fprintf(&b, "pool %s  identity %q  suite %d  health %s\n", id, p.Identity, p.CipherSuite, health)
		c := p.Counts
		fmt.Fprintf(&b, "  counts       created %d  available %d  claimed %d  expired %d  deleted %d\n",
			c.Created, c.Available, c.Claimed, c.Expired, c.Deleted)
		fmt.Fprintf(&b, "  inputs       %d  applied %d  duplicates %d  rejected %s\n",
			p.Inputs, p.Applied, p.Duplicates, tally(p.Rejected))
		fmt.Fprintf(&b, "  transitions  %d  refused %d  statuses %d\n", p.Transitions, p.Refused, p.Statuses)
		fmt.Fprintf(&b, "  alerts       %s\n", tally(p.Alerts))
		if p.LastResort != "" {
			fmt.Fprintf(&b, "  last resort  %s\n", p.LastResort)
		}
	}
	if len(s.Notes) > 0 {
		b.WriteString("notes:\n")
		for _, n := range s.Notes {
			b.WriteString("  " + n.String() + "\n")
		}
		if s.NotesOmitted > 0 {
			fmt.Fprintf(&b, "  ... and %d more\n", s.NotesOmitted)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// String is one line: where, what, why.
func (n Note) String() string {
	at := fmt.Sprintf("line %d", n.Line)
	if n.Seq != 0 {
		at += fmt.Sprintf(" (seq %d)", n.Seq)
	}
	return fmt.Sprintf("%s: %s [%s] %s", at, strings.ReplaceAll(n.Kind, "_", " "), n.Code, n.Message)
}

// tally prints "0" or "code 2, other 1" in key order.
func tally(m map[string]int) string {
	if len(m) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

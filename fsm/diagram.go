package fsm

import (
	"fmt"
	"strings"

	looplab "github.com/looplab/fsm"
)

// label names a row in the diagram: rows restricted to a kind carry it, so that
// guarded alternatives of one event stay distinct edges.
func label(t Transition) string {
	if t.Kind == Any {
		return string(t.Event)
	}
	return fmt.Sprintf("%s (%s)", t.Event, t.Kind)
}

// Mermaid renders the lifecycle with looplab/fsm's Mermaid visualizer, from Table.
func Mermaid() (string, error) {
	var descs []looplab.EventDesc
	for _, t := range Table {
		descs = append(descs, looplab.EventDesc{Name: label(t), Src: strs(t.From), Dst: string(t.To)})
	}
	out, err := looplab.VisualizeWithType(looplab.NewFSM(string(Created), descs, nil), looplab.MERMAID)
	if err != nil {
		return "", err
	}
	// looplab draws the initial state without a label; entry and purge are pool actions.
	out = strings.Replace(out, "[*] --> created\n", "[*] --> created: generated\n", 1)
	return out + "    deleted --> [*]: purge (tombstone_retention)\n", nil
}

// Document renders docs/state-diagram.md.
func Document() (string, error) {
	m, err := Mermaid()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("# KeyPackage lifecycle\n\n")
	b.WriteString("<!-- Generated from fsm.Table by `make generate` (go test ./fsm -run TestStateDiagram -rewrite). Do not edit. -->\n\n")
	b.WriteString("Each KeyPackage is a looplab/fsm machine restored from its stored state for one\n")
	b.WriteString("transition and dropped. Rows marked *regular* or *last resort* apply only to that\n")
	b.WriteString("kind of KeyPackage. Any event not listed for a state is rejected with an\n")
	b.WriteString("`invalid_transition` error naming the KeyPackage, its state and the event; nothing changes.\n\n")
	b.WriteString("```mermaid\n" + m + "```\n\n")
	b.WriteString("| event | from | to | applies to | guard | effect |\n| --- | --- | --- | --- | --- | --- |\n")
	b.WriteString("| generated | (new) | created | any | a `generated` input for a known pool, within the hard cap, not_after − margin still ahead | Upload message (attempt 1); upload timer set |\n")
	for _, t := range Table {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", t.Event, strings.Join(strs(t.From), ", "), t.To, t.Kind, t.Guard, t.Effect)
	}
	b.WriteString("| purge | deleted | (record removed) | any | now ≥ deleted_at + tombstone_retention | tombstone removed; later events for the ref are `unknown_ref` |\n")
	b.WriteString("\nTimers (one expiry-index entry per KeyPackage, its next deadline):\n\n")
	b.WriteString("| state | deadline | action |\n| --- | --- | --- |\n")
	b.WriteString("| created | min(last upload + upload_timeout, not_after − margin) | re-send the upload (attempt + 1), or `upload_failed` after max_upload_attempts; `expire` at not_after − margin |\n")
	b.WriteString("| available, fresh | not_after − 2×margin | stops counting toward the watermark (refill may start) |\n")
	b.WriteString("| available | not_after − margin (not_after when held as the pool's last) | `expire` |\n")
	b.WriteString("| claimed | not_after − margin | `expire` |\n")
	b.WriteString("| expired | not_after + delete_grace | `delete` |\n")
	b.WriteString("| deleted | deleted_at + tombstone_retention | purge |\n")
	return b.String(), nil
}

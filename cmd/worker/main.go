// Command worker runs kpool and its tools. Each subcommand lives in its own file and
// registers itself here; the wiring of a running worker lives in importable packages.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand: `worker <name> args...`.
type command struct {
	name    string // may contain a space for nested commands, e.g. "keypackage generate"
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

func main() { os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr)) }

// dispatch finds the longest registered command name that prefixes args.
func dispatch(args []string, stdout, stderr io.Writer) int {
	for n := min(len(args), 2); n >= 1; n-- {
		if c, ok := commands[strings.Join(args[:n], " ")]; ok {
			return c.run(args[n:], stdout, stderr)
		}
	}
	usage(stderr)
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		return 0
	}
	fmt.Fprintf(stderr, "\nunknown command %q\n", strings.Join(args, " "))
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: worker <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-22s %s\n", n, commands[n].summary)
	}
}

// Command worker runs kpool and its tools. The command line is built with cobra (flags by
// pflag); each subcommand lives in its own file, and the wiring of a running worker lives in
// importable packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/kpool/kpool/persistence"
	"github.com/spf13/cobra"
)

// Exit statuses of every command (docs/operations.md, "Exit status").
const (
	exitOK      = 0
	exitFailure = 1 // the command failed, or the worker refused what it asked
	exitUsage   = 2 // bad flags or arguments; nothing was done
	exitCorrupt = 3 // the database file is damaged (persistence.ErrCorrupt)
)

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// usageError marks a mistake on the command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// reported is returned by a command that has already written why it failed (for example
// `db check` listing problems): only its exit status remains to be given.
type reported struct{ code int }

func (e reported) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// execute runs one command line and returns its exit status. Every error is printed here,
// once, as "<command path>: <error>".
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	if r, ok := errors.AsType[reported](err); ok {
		return r.code
	}
	fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
	if _, ok := errors.AsType[usageError](err); ok {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return exitUsage
	}
	if errors.Is(err, persistence.ErrCorrupt) {
		return exitCorrupt
	}
	return exitFailure
}

// newRoot builds the whole command tree; a fresh one per run, so flags never carry over.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "worker",
		Short: "kpool keeps pools of MLS KeyPackages full",
		Long: "kpool keeps pools of MLS (RFC 9420) KeyPackages full, fresh and accounted for.\n" +
			"Start with `worker run`, then `worker pool register` and `worker ds simulate`.\n\n" +
			"Exit status: 0 ok, 1 failure or refusal, 2 usage error, 3 corrupt database.",
		Version:       version(),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          groupArgs,
		RunE:          groupRun,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.SetHelpCommand(helpCmd())
	root.AddCommand(
		runCmd(),
		poolCmd(),
		eventsCmd(),
		dsCmd(),
		clientCmd(),
		dbCmd(),
		logCmd(),
		keypackageCmd(),
		replayCmd(),
		versionCmd(),
	)
	return root
}

// group is a command that only holds subcommands (`worker pool`, `worker db`, ...).
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Args: groupArgs, RunE: groupRun}
	c.AddCommand(subs...)
	return c
}

// groupArgs lets a group see a misspelt subcommand, so that groupRun can name it.
func groupArgs(*cobra.Command, []string) error { return nil }

// groupRun prints a group's help when called alone, and refuses an unknown subcommand.
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	cmd.SuggestionsMinimumDistance = 2 // cobra sets its default only on its own error path
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageError{errors.New(msg)}
}

// atMostOne and noArgs check positional arguments as usage errors.
func atMostOne(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) > 1 {
			return usagef("give at most one %s (got %d arguments)", what, len(args))
		}
		return nil
	}
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

// helpCmd is `worker help [command...]`: that command's help on stdout, or a usage error
// for an unknown one (cobra's own prints "Unknown help topic" and exits 0).
func helpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := cmd.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usagef("unknown help topic %q", strings.Join(args, " "))
			}
			return target.Help()
		},
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the module version and the VCS revision it was built from",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "worker %s\n", version())
			return nil
		},
	}
}

// version describes the build: the main module's version (the tag under `go install
// module@version`, a pseudo-version built in a clone, "(devel)" otherwise) and, when Go
// stamped it, the VCS revision.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build information)"
	}
	return describeBuild(bi)
}

func describeBuild(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	rev, ok := settings["vcs.revision"]
	if !ok {
		return v + ", no VCS revision (built with -buildvcs=false or outside a repository), " + bi.GoVersion
	}
	if settings["vcs.modified"] == "true" {
		rev += " (modified)"
	}
	if t := settings["vcs.time"]; t != "" {
		rev += " " + t
	}
	return v + ", revision " + rev + ", " + bi.GoVersion
}

// envOr returns the environment variable's value, or def when unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
)

func init() {
	register(command{name: "pool register", summary: "register a pool (or update its policy)", run: poolRegister})
	register(command{name: "pool status", summary: "show a pool's status; --watch follows it", run: poolStatus})
	register(command{name: "pool list", summary: "list every pool's status", run: poolList})
	register(command{name: "pool replenish", summary: "ask a pool to top up to its target now", run: poolReplenish})
}

const defaultClientURL = "nats://127.0.0.1:4222"

// clientCommand parses the shared connection flags plus extra ones, and connects.
func clientCommand(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*natsbus.Client, *flag.FlagSet, func(), error) {
	fs := flag.NewFlagSet("worker "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs, defaultClientURL)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(reorder(args)); err != nil {
		return nil, nil, nil, err
	}
	nc, err := cf.connect("kpool-cli")
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := natsbus.NewClient(nc, natsbus.WithPrefix(cf.prefix))
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return c, fs, nc.Close, nil
}

// reorder moves positional arguments after the flags, so `pool status alice --watch`
// works like `pool status --watch alice`.
func reorder(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case len(a) > 1 && a[0] == '-':
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) && !isBoolFlag(a) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			pos = append(pos, a)
		}
	}
	return append(flags, pos...)
}

// isBoolFlag lists the boolean flags of the client commands (they take no value).
func isBoolFlag(a string) bool {
	switch a {
	case "-watch", "--watch", "-retry", "--retry", "-h", "--help", "-help":
		return true
	}
	return false
}

func printJSON(w io.Writer, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(w, string(b))
}

func onePool(fs *flag.FlagSet) (string, error) {
	if fs.NArg() != 1 {
		return "", fmt.Errorf("give exactly one pool id (got %d arguments)", fs.NArg())
	}
	return fs.Arg(0), events.ValidPoolID(fs.Arg(0))
}

func cliFail(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "worker %s: %v\n", name, err)
	return 1
}

func poolRegister(args []string, stdout, stderr io.Writer) int {
	var identity, policyFile, keyOut string
	var suite, target, low, hardCap int
	c, fs, closeFn, err := clientCommand("pool register", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&identity, "identity", "", "MLS credential identity of the pool (required)")
		fs.IntVar(&suite, "suite", 1, "RFC 9420 cipher suite 1-7")
		fs.IntVar(&target, "target", 0, "set the target size (not given: unchanged, or the default for a new pool)")
		fs.IntVar(&low, "low-watermark", 0, "set the low watermark (0 is allowed)")
		fs.IntVar(&hardCap, "hard-cap", 0, "set the hard cap")
		fs.StringVar(&policyFile, "policy", "", "JSON file with policy overrides (as in pool.register)")
		fs.StringVar(&keyOut, "key-out", "", "write the pool's signature private key here (mode 0600) when the pool is created")
	})
	if err != nil {
		return 2
	}
	defer closeFn()
	id, err := onePool(fs)
	if err != nil {
		return cliFail(stderr, "pool register", err)
	}
	req := natsbus.RegisterRequest{Identity: identity, CipherSuite: uint16(suite)}
	if policyFile != "" {
		data, err := os.ReadFile(policyFile)
		if err != nil {
			return cliFail(stderr, "pool register", err)
		}
		if err := events.UnmarshalStrict(data, &req.Policy); err != nil {
			return cliFail(stderr, "pool register", fmt.Errorf("--policy %s: %w", policyFile, err))
		}
	}
	// only the flags given change the policy; the others keep what is in force
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "target":
			req.Policy.Target = new(target)
		case "low-watermark":
			req.Policy.LowWatermark = new(low)
		case "hard-cap":
			req.Policy.HardCap = new(hardCap)
		}
	})
	var rk *natsbus.RecipientKey
	if keyOut != "" {
		if rk, err = natsbus.NewRecipientKey(uint16(suite)); err != nil {
			return cliFail(stderr, "pool register", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg, err := c.Register(ctx, id, req, rk)
	if err != nil {
		return cliFail(stderr, "pool register", err)
	}
	if keyOut != "" && reg.SignaturePrivateKey != nil {
		if err := os.WriteFile(keyOut, reg.SignaturePrivateKey, 0o600); err != nil {
			return cliFail(stderr, "pool register", err)
		}
		fmt.Fprintf(stderr, "signature private key written to %s\n", keyOut)
	}
	printJSON(stdout, reg.PoolInfo)
	return 0
}

func poolStatus(args []string, stdout, stderr io.Writer) int {
	var watch bool
	c, fs, closeFn, err := clientCommand("pool status", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&watch, "watch", false, "print the current status, then every change (Ctrl-C to stop); no pool id = every pool")
	})
	if err != nil {
		return 2
	}
	defer closeFn()
	if watch {
		id := ""
		if fs.NArg() > 0 {
			if id, err = onePool(fs); err != nil {
				return cliFail(stderr, "pool status", err)
			}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		enc := json.NewEncoder(stdout)
		stopWatch, err := c.WatchStatus(ctx, id, func(st events.Status) { _ = enc.Encode(st) })
		if err != nil {
			return cliFail(stderr, "pool status", err)
		}
		defer stopWatch()
		<-ctx.Done()
		return 0
	}
	id, err := onePool(fs)
	if err != nil {
		return cliFail(stderr, "pool status", err)
	}
	st, err := c.Status(context.Background(), id)
	if err != nil {
		return cliFail(stderr, "pool status", err)
	}
	printJSON(stdout, st)
	return 0
}

func poolList(args []string, stdout, stderr io.Writer) int {
	c, _, closeFn, err := clientCommand("pool list", args, stderr, nil)
	if err != nil {
		return 2
	}
	defer closeFn()
	l, err := c.List(context.Background())
	if err != nil {
		return cliFail(stderr, "pool list", err)
	}
	fmt.Fprintf(stdout, "%-24s %-9s %7s %9s %7s %7s %6s\n", "POOL", "HEALTH", "CREATED", "AVAILABLE", "FRESH", "CLAIMED", "TARGET")
	for _, st := range l {
		fmt.Fprintf(stdout, "%-24s %-9s %7d %9d %7d %7d %6d\n", st.Pool, st.Health, st.Counts.Created, st.Counts.Available, st.AvailableFresh, st.Counts.Claimed, st.Target)
	}
	return 0
}

func poolReplenish(args []string, stdout, stderr io.Writer) int {
	c, fs, closeFn, err := clientCommand("pool replenish", args, stderr, nil)
	if err != nil {
		return 2
	}
	defer closeFn()
	id, err := onePool(fs)
	if err != nil {
		return cliFail(stderr, "pool replenish", err)
	}
	st, err := c.Replenish(context.Background(), id)
	if err != nil {
		return cliFail(stderr, "pool replenish", err)
	}
	printJSON(stdout, st)
	return 0
}

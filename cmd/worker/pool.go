package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/spf13/cobra"
)

func poolCmd() *cobra.Command {
	return group("pool", "register pools and follow their status",
		poolRegisterCmd(), poolStatusCmd(), poolListCmd(), poolReplenishCmd())
}

func printJSON(w io.Writer, v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(w, string(b))
}

// poolArg checks the one pool id a command takes.
func poolArg(args []string) (string, error) {
	if len(args) != 1 {
		return "", usagef("give exactly one pool id (got %d arguments)", len(args))
	}
	if err := events.ValidPoolID(args[0]); err != nil {
		return "", usageError{err}
	}
	return args[0], nil
}

func poolRegisterCmd() *cobra.Command {
	var c client
	var identity, policyFile, keyOut, anchorsFile, custody, sigKeyFile string
	var suite, target, low, hardCap int
	var lastResort bool
	var profile profileFlags
	cmd := &cobra.Command{
		Use:   "register POOL --identity ID [flags]",
		Short: "register a pool (or update its policy)",
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := poolArg(args)
			if err != nil {
				return err
			}
			req := natsbus.RegisterRequest{Identity: identity, CipherSuite: uint16(suite), Custody: custody}
			switch {
			case custody != "" && custody != events.CustodyKpool && custody != events.CustodyClient:
				return usagef("--custody %q: use kpool (kpool holds the private keys) or client (the MLS client does)", custody)
			case sigKeyFile != "" && custody != events.CustodyClient:
				return usagef("--signature-key is the client's public key of a --custody client pool")
			case keyOut != "" && custody == events.CustodyClient:
				return usagef("--key-out: a --custody client pool has no private key at kpool (its client holds it)")
			}
			if sigKeyFile != "" {
				if req.SignatureKey, err = readPublicKey(sigKeyFile); err != nil {
					return err
				}
			}
			if policyFile != "" {
				data, err := os.ReadFile(policyFile)
				if err != nil {
					return err
				}
				if err := events.UnmarshalStrict(data, &req.Policy); err != nil {
					return fmt.Errorf("--policy %s: %w", policyFile, err)
				}
			}
			// only the flags given change the policy; the others keep what is in force
			fs := cmd.Flags()
			if fs.Changed("target") {
				req.Policy.Target = new(target)
			}
			if fs.Changed("low-watermark") {
				req.Policy.LowWatermark = new(low)
			}
			if fs.Changed("hard-cap") {
				req.Policy.HardCap = new(hardCap)
			}
			if fs.Changed("last-resort") {
				req.Policy.LastResort = new(lastResort)
			}
			if req.Policy.Capabilities, err = profile.capabilities(fs, req.Policy.Capabilities); err != nil {
				return err
			}
			if profile.x509Chain != "" {
				if req.Policy.X509Chain, err = readCertificates("x509-chain", profile.x509Chain); err != nil {
					return err
				}
			}
			if anchorsFile != "" {
				if req.Policy.X509TrustAnchors, err = readCertificates("x509-trust-anchors", anchorsFile); err != nil {
					return err
				}
			}
			var rk *natsbus.RecipientKey
			if keyOut != "" {
				if rk, err = natsbus.NewRecipientKey(uint16(suite)); err != nil {
					return err
				}
			}
			if err := c.dial(); err != nil {
				return err
			}
			defer c.close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			reg, err := c.Register(ctx, id, req, rk)
			if err != nil {
				return c.hint(err)
			}
			if keyOut != "" && reg.SignaturePrivateKey != nil {
				if err := os.WriteFile(keyOut, reg.SignaturePrivateKey, 0o600); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "signature private key written to %s\n", keyOut)
			}
			printJSON(cmd.OutOrStdout(), reg.PoolInfo)
			return nil
		},
	}
	c.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&identity, "identity", "", "MLS credential identity of the pool (required)")
	fs.IntVar(&suite, "suite", 1, "cipher suite: 1-7 (RFC 9420) or 77-88 (post-quantum)")
	fs.IntVar(&target, "target", 0, "set the target size (not given: unchanged, or the default for a new pool)")
	fs.IntVar(&low, "low-watermark", 0, "set the low watermark (0 is allowed)")
	fs.IntVar(&hardCap, "hard-cap", 0, "set the hard cap")
	fs.StringVar(&policyFile, "policy", "", "JSON file with policy overrides (as in pool.register)")
	fs.StringVar(&keyOut, "key-out", "", "write the pool's signature private key here (mode 0600) when the pool is created")
	fs.BoolVar(&lastResort, "last-resort", true, "keep a last-resort KeyPackage (0x000A); --last-resort=false for Wire (docs/mls.md)")
	fs.StringVar(&custody, "custody", "", "who holds the private keys: kpool (default) or client (docs/client-custody.md); fixed at creation")
	fs.StringVar(&sigKeyFile, "signature-key", "", "--custody client: file with the client's signature public key (raw bytes or hex)")
	fs.StringVar(&anchorsFile, "x509-trust-anchors", "", "PEM certificates the --x509-chain must end at or under (checked at registration)")
	profile.register(fs)
	return cmd
}

func poolStatusCmd() *cobra.Command {
	var c client
	var watch bool
	cmd := &cobra.Command{
		Use:   "status [POOL] [--watch]",
		Short: "show a pool's status; --watch follows it",
		Long: "Print a pool's status as JSON. With --watch, print it, then every change as one JSON\n" +
			"line, until Ctrl-C; --watch without a pool follows every pool. An unknown pool is\n" +
			"refused at once.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if watch && len(args) == 0 {
				return watchStatus(cmd, &c, "")
			}
			id, err := poolArg(args)
			if err != nil {
				return err
			}
			if watch {
				return watchStatus(cmd, &c, id)
			}
			if err := c.dial(); err != nil {
				return err
			}
			defer c.close()
			st, err := c.Status(cmd.Context(), id)
			if err != nil {
				return c.hint(err)
			}
			printJSON(cmd.OutOrStdout(), st)
			return nil
		},
	}
	c.register(cmd)
	cmd.Flags().BoolVar(&watch, "watch", false, "print the current status, then every change, one JSON object per line (Ctrl-C to stop); no pool id = every pool")
	return cmd
}

// watchStatus follows the status of one pool (refused up front when the worker does not
// know it) or of every pool, until a signal.
func watchStatus(cmd *cobra.Command, c *client, id string) error {
	if err := c.dialFollowing(cmd.ErrOrStderr()); err != nil {
		return err
	}
	defer c.close()
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if id != "" {
		if _, err := c.Status(ctx, id); err != nil {
			return c.hint(err)
		}
	}
	enc := json.NewEncoder(cmd.OutOrStdout())
	stopWatch, err := c.WatchStatus(ctx, id, func(st events.Status) { _ = enc.Encode(st) })
	if err != nil {
		return err
	}
	defer stopWatch()
	<-ctx.Done()
	return nil
}

func poolListCmd() *cobra.Command {
	var c client
	cmd := &cobra.Command{
		Use:   "list",
		Short: "list every pool's status",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.dial(); err != nil {
				return err
			}
			defer c.close()
			l, err := c.List(cmd.Context())
			if err != nil {
				return c.hint(err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%-24s %-9s %7s %9s %7s %7s %6s\n", "POOL", "HEALTH", "CREATED", "AVAILABLE", "FRESH", "CLAIMED", "TARGET")
			for _, st := range l {
				fmt.Fprintf(w, "%-24s %-9s %7d %9d %7d %7d %6d\n", st.Pool, st.Health, st.Counts.Created, st.Counts.Available, st.AvailableFresh, st.Counts.Claimed, st.Target)
			}
			return nil
		},
	}
	c.register(cmd)
	return cmd
}

func poolReplenishCmd() *cobra.Command {
	var c client
	cmd := &cobra.Command{
		Use:   "replenish POOL",
		Short: "ask a pool to top up to its target now",
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := poolArg(args)
			if err != nil {
				return err
			}
			if err := c.dial(); err != nil {
				return err
			}
			defer c.close()
			st, err := c.Replenish(cmd.Context(), id)
			if err != nil {
				return c.hint(err)
			}
			printJSON(cmd.OutOrStdout(), st)
			return nil
		},
	}
	c.register(cmd)
	return cmd
}

// readPublicKey reads a public key file: raw bytes, or the same as hex text.
func readPublicKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b, err := hex.DecodeString(strings.TrimSpace(string(data))); err == nil && len(b) > 0 {
		return b, nil
	}
	return data, nil
}

package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/spf13/cobra"
)

func dsCmd() *cobra.Command {
	return group("ds", "stand-ins for the services around kpool", dsSimulateCmd())
}

// dsSimulateCmd plays the delivery service: it reads upload and withdraw requests with a
// durable consumer, keeps the KeyPackages in memory and acknowledges each upload, so a
// pool fills up without a real DS. --claim N also claims N KeyPackages once they are
// acknowledged, to watch a refill.
func dsSimulateCmd() *cobra.Command {
	var c client
	var pool, durable string
	var claim int
	cmd := &cobra.Command{
		Use:   "simulate [--pool P] [--claim N]",
		Short: "a stand-in delivery service: acknowledge every upload (for trying kpool out)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pool != "" {
				if err := events.ValidPoolID(pool); err != nil {
					return usagef("--pool: %w", err)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.dialFollowing(stderr); err != nil {
				return err
			}
			defer c.close()
			var mu sync.Mutex
			claimed := 0
			stopC, err := c.ConsumeDeliveries(ctx, durable, pool, natsbus.DeliveryHandler{
				Upload: func(u events.Upload) error {
					if err := c.UploadAck(ctx, u.Pool, u.Ref); err != nil {
						return err
					}
					mu.Lock()
					defer mu.Unlock()
					fmt.Fprintf(stdout, "stored and acked %s %s (last_resort=%v, attempt %d)\n", u.Pool, u.Ref, u.LastResort, u.Attempt)
					if claimed < claim && !u.LastResort {
						if err := c.Claimed(ctx, u.Pool, u.Ref); err != nil {
							return err
						}
						claimed++
						fmt.Fprintf(stdout, "claimed %s %s\n", u.Pool, u.Ref)
					}
					return nil
				},
				Withdraw: func(w events.Withdraw) error {
					mu.Lock()
					defer mu.Unlock()
					fmt.Fprintf(stdout, "withdrew %s %s (%s)\n", w.Pool, w.Ref, w.Reason)
					return nil
				},
			})
			if err != nil {
				return c.hint(err)
			}
			defer stopC()
			fmt.Fprintln(stderr, "simulated delivery service running (Ctrl-C to stop)")
			<-ctx.Done()
			return nil
		},
	}
	c.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&pool, "pool", "", "only this pool (default: every pool)")
	fs.IntVar(&claim, "claim", 0, "claim this many regular KeyPackages after acknowledging them")
	fs.StringVar(&durable, "durable", "kpool-sim-ds", "JetStream consumer name prefix: <durable>-upload and <durable>-withdraw keep their place across restarts")
	return cmd
}

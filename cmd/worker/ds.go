package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
)

func init() {
	register(command{name: "ds simulate", summary: "a stand-in delivery service: acknowledge every upload (for trying kpool out)", run: dsSimulate})
}

// dsSimulate plays the delivery service: it reads upload and withdraw requests with a
// durable consumer, keeps the KeyPackages in memory and acknowledges each upload, so a
// pool fills up without a real DS. --claim N also claims N KeyPackages once they are
// acknowledged, to watch a refill.
func dsSimulate(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return dsSimulateCtx(ctx, args, stdout, stderr)
}

func dsSimulateCtx(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var pool string
	var claim int
	var durable string
	c, _, closeFn, err := clientCommand("ds simulate", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&pool, "pool", "", "only this pool (default: every pool)")
		fs.IntVar(&claim, "claim", 0, "claim this many regular KeyPackages after acknowledging them")
		fs.StringVar(&durable, "durable", "kpool-sim-ds", "JetStream consumer name (keeps its place across restarts)")
	})
	if err != nil {
		return 2
	}
	defer closeFn()
	var mu sync.Mutex
	claimed := 0
	stopC, err := c.ConsumeDeliveries(ctx, durable, pool, natsbus.DeliveryHandler{
		Upload: func(u events.Upload) error {
			if err := c.UploadAck(ctx, u.Pool, u.Ref); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "stored and acked %s %s (last_resort=%v, attempt %d)\n", u.Pool, u.Ref, u.LastResort, u.Attempt)
			mu.Lock()
			defer mu.Unlock()
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
			fmt.Fprintf(stdout, "withdrew %s %s (%s)\n", w.Pool, w.Ref, w.Reason)
			return nil
		},
	})
	if err != nil {
		return cliFail(stderr, "ds simulate", err)
	}
	defer stopC()
	fmt.Fprintln(stderr, "simulated delivery service running (Ctrl-C to stop)")
	<-ctx.Done()
	return 0
}

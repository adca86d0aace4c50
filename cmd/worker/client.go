package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/kpool/kpool/events/natsbus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

const defaultClientURL = "nats://127.0.0.1:4222"

// noWorkerHint ends every error that means no worker could be reached.
const noWorkerHint = "(is the worker running? `make run`)"

// client is the connection of a client command: the shared NATS flags, then a
// natsbus.Client once dialled.
type client struct {
	conn connFlags
	nc   *nats.Conn
	*natsbus.Client
}

func (c *client) register(cmd *cobra.Command) { c.conn.register(cmd.Flags(), defaultClientURL) }

// dial connects for a one-shot request.
func (c *client) dial() error { return c.dialWith() }

// dialFollowing connects for a command that runs until Ctrl-C (--watch, tail, ds
// simulate): it keeps reconnecting for as long as it runs and says on stderr when the
// connection is lost and when it is back.
func (c *client) dialFollowing(stderr io.Writer) error {
	return c.dialWith(reconnectReport(stderr)...)
}

func (c *client) dialWith(extra ...nats.Option) error {
	nc, err := c.conn.connect("kpool-cli", extra...)
	if err != nil {
		return err
	}
	bc, err := natsbus.NewClient(nc, natsbus.WithPrefix(c.conn.prefix))
	if err != nil {
		nc.Close()
		return err
	}
	c.nc, c.Client = nc, bc
	return nil
}

func (c *client) close() {
	if c.nc != nil {
		c.nc.Close()
	}
}

// reconnectReport are the options of a long-running client: reconnect forever, one line
// each way.
func reconnectReport(stderr io.Writer) []nats.Option {
	return []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return // closed on purpose, not lost
			}
			why := ""
			if err != nil {
				why = ": " + err.Error()
			}
			fmt.Fprintf(stderr, "lost the connection to NATS%s; reconnecting %s\n", why, noWorkerHint)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			fmt.Fprintf(stderr, "reconnected to NATS at %s\n", nc.ConnectedUrlRedacted())
		}),
	}
}

// hint adds the hint to an answer that means no worker listens on the prefix.
func (c *client) hint(err error) error { return hintNoWorker(c.conn.prefix, err) }

// hintNoWorker adds the hint to the errors of a NATS server where no kpool worker runs on
// the prefix: nobody answers the API, and kpool's streams do not exist.
func hintNoWorker(prefix string, err error) error {
	if errors.Is(err, natsbus.ErrNoWorker) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("%w (on subject prefix %q) %s", err, prefix, noWorkerHint)
	}
	return err
}

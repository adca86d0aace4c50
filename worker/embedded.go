package worker

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure an in-process nats-server.
type EmbeddedOptions struct {
	// Listen is HOST:PORT; port 0 or -1 picks a free port.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// Logs turns the server's own logging on (to stderr).
	Logs bool
}

// StartEmbedded starts a nats-server with JetStream on and waits until it accepts clients.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: listen address %q: %v", ErrConfig, o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < -1 || port > 65535 {
		return nil, fmt.Errorf("%w: listen port %q is not a port number", ErrConfig, portStr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if port > 0 {
		// nats-server only reports a busy port in its own log; say it here, at once.
		ln, err := net.Listen("tcp", o.Listen)
		if err != nil {
			return nil, fmt.Errorf("worker: embedded nats-server cannot listen on %s: %v (use --listen, or --nats-url for a server that is already running)", o.Listen, err)
		}
		ln.Close()
	}
	opts := &server.Options{
		ServerName: "kpool-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Clean(o.StoreDir),
		NoSigs:     true, // the worker handles signals itself
		NoLog:      !o.Logs,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("worker: embedded nats-server: %w", err)
	}
	if o.Logs {
		ns.ConfigureLogger()
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("worker: embedded nats-server did not start listening on %s within 10s", o.Listen)
	}
	return ns, nil
}

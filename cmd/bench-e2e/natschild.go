package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/kpool/kpool/worker"
)

// serveNATS is the child process of the memory run: an embedded nats-server (the one the
// worker would embed) in its own process, so that the parent's heap and RSS are the
// worker's and not the server's (whose message-id map for the 2-minute duplicate window
// alone holds ~150 bytes per message published in the last two minutes). It prints its
// URL and runs until its stdin closes.
func serveNATS(dir string) error {
	ns, err := worker.StartEmbedded(worker.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: dir})
	if err != nil {
		return err
	}
	fmt.Println(ns.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// natsChild runs serveNATS in a child process.
type natsChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	url   string
	dir   string
}

func startNATSChild() (*natsChild, error) {
	dir, err := os.MkdirTemp("", "bench-nats-")
	if err != nil {
		return nil, err
	}
	c := &natsChild{cmd: exec.Command(os.Args[0], "-serve-nats", dir), dir: dir}
	c.cmd.Stderr = os.Stderr
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("nats-server child: %w", err)
	}
	c.url = strings.TrimSpace(line)
	return c, nil
}

// rss is the child's VmRSS in bytes.
func (c *natsChild) rss() (uint64, error) {
	rss, _, err := procRSS(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	return rss, err
}

func (c *natsChild) stop() {
	c.stdin.Close()
	_ = c.cmd.Wait()
	os.RemoveAll(c.dir)
}

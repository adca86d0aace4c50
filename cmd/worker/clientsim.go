package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/spf13/cobra"
)

func clientCmd() *cobra.Command {
	return group("client", "stand-ins for MLS clients that keep their own keys (client custody)", clientSimulateCmd())
}

// clientSimulateCmd plays an MLS client of a client-custody pool: it keeps its signature
// key in a file of its own and every KeyPackage private key in its memory, sends its
// inventory, and answers kpool's generate and delete messages (natsbus.RunClient over
// natsbus.MemKeyStore).
func clientSimulateCmd() *cobra.Command {
	var c client
	var identity, keyFile, pubOut string
	var suite int
	cmd := &cobra.Command{
		Use:   "simulate POOL --identity ID --signature-key-file FILE [--public-key-out FILE]",
		Short: "a stand-in MLS client that holds its keys and answers kpool (for trying client custody)",
		Long: "Plays the MLS client of a client-custody pool (docs/client-custody.md): it reads its\n" +
			"signature private key from --signature-key-file (creating it, mode 0600, when absent),\n" +
			"writes the public key to --public-key-out for `worker pool register --custody client\n" +
			"--signature-key`, keeps every KeyPackage private key in memory only, and answers\n" +
			"kpool's generate and delete messages until interrupted.",
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := poolArg(args)
			if err != nil {
				return err
			}
			if identity == "" {
				return usagef("--identity is required (the MLS credential identity the pool is registered with)")
			}
			if keyFile == "" {
				return usagef("--signature-key-file is required (the client's own signature private key)")
			}
			if !mls.CipherSuite(suite).Valid() {
				return usagef("--suite %d is not a cipher suite kpool supports", suite)
			}
			signer, err := clientSigner(mls.CipherSuite(suite), keyFile)
			if err != nil {
				return err
			}
			if pubOut != "" {
				if err := os.WriteFile(pubOut, []byte(hex.EncodeToString(signer.Public())+"\n"), 0o644); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.dialFollowing(stderr); err != nil {
				return err
			}
			defer c.close()
			ks := &printingKeyStore{MemKeyStore: natsbus.NewMemKeyStore(uint16(suite), signer, identity), out: stdout}
			stopC, err := c.RunClient(ctx, id, ks, natsbus.ClientOptions{
				OnRejected: func(r events.ClientRejected) { ks.printf("rejected %s %s: %s\n", r.Ref, r.Code, r.Reason) },
				OnError:    func(err error) { fmt.Fprintln(stderr, err) },
			})
			if err != nil {
				return c.hint(err)
			}
			defer stopC()
			fmt.Fprintf(stderr, "simulated MLS client of pool %s running, signature key %x (Ctrl-C to stop)\n", id, signer.Public())
			<-ctx.Done()
			return nil
		},
	}
	c.register(cmd)
	fs := cmd.Flags()
	fs.StringVar(&identity, "identity", "", "MLS credential identity (basic credential) the pool is registered with")
	fs.IntVar(&suite, "suite", 1, "cipher suite: 1-7 (RFC 9420) or 77-88 (post-quantum)")
	fs.StringVar(&keyFile, "signature-key-file", "", "the client's signature private key; created (mode 0600) when absent")
	fs.StringVar(&pubOut, "public-key-out", "", "write the signature public key here (hex), for pool register --signature-key")
	return cmd
}

// clientSigner reads the client's signature private key, or makes and stores a new one.
func clientSigner(suite mls.CipherSuite, path string) (mls.Signer, error) {
	priv, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if priv, _, err = mls.NewSignatureKey(suite, nil); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, priv, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	defer clear(priv)
	s, err := mls.SignerFromPrivate(suite, priv)
	if err != nil {
		return nil, fmt.Errorf("--signature-key-file %s: %w", path, err)
	}
	return s, nil
}

// printingKeyStore says what the simulated client does.
type printingKeyStore struct {
	*natsbus.MemKeyStore
	mu  sync.Mutex
	out io.Writer
}

func (p *printingKeyStore) printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, format, a...)
}

func (p *printingKeyStore) Generate(ctx context.Context, req events.ClientGenerate) ([][]byte, error) {
	out, err := p.MemKeyStore.Generate(ctx, req)
	p.printf("generated %d KeyPackages for request %s (last_resort=%v)\n", len(out), req.RequestID, req.LastResort)
	return out, err
}

func (p *printingKeyStore) Delete(ctx context.Context, refs []string) error {
	err := p.MemKeyStore.Delete(ctx, refs)
	for _, r := range refs {
		p.printf("deleted %s\n", r)
	}
	return err
}

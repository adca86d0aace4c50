package natsbus

import (
	"context"
	"fmt"

	"github.com/kpool/kpool/mls"
)

// RecipientKey is an HPKE key pair of one cipher suite's KEM: the public half goes into a
// register or take request, the private half opens the answer. Keep Private secret.
type RecipientKey struct {
	Suite   uint16
	Public  []byte
	Private []byte // RFC 9180 SerializePrivateKey
}

// NewRecipientKey makes a fresh HPKE key pair for the suite's KEM.
func NewRecipientKey(suite uint16) (*RecipientKey, error) {
	priv, pub, err := mls.NewHPKEKey(mls.CipherSuite(suite), nil)
	if err != nil {
		return nil, err
	}
	return &RecipientKey{Suite: suite, Public: pub, Private: priv}, nil
}

// Open decrypts a Sealed value addressed to this key.
func (k *RecipientKey) Open(s Sealed, info []byte) ([]byte, error) {
	return mls.Open(mls.CipherSuite(k.Suite), k.Private, s.Enc, info, s.Ciphertext)
}

// Registered is a pool as Register returns it. SignaturePrivateKey is set only when this
// call created the pool and kpool generated its key; keep it secret.
type Registered struct {
	PoolInfo
	SignaturePrivateKey []byte
}

// Register creates a pool (or updates its policy). When recipient is non-nil and the call
// creates the pool, the pool's signature private key is returned opened.
func (c *Client) Register(ctx context.Context, pool string, req RegisterRequest, recipient *RecipientKey) (Registered, error) {
	if recipient != nil {
		req.RecipientKey = recipient.Public
	}
	info, err := c.RegisterSealed(ctx, pool, req)
	if err != nil {
		return Registered{}, err
	}
	out := Registered{PoolInfo: info}
	if info.SealedSignatureKey != nil && recipient != nil {
		priv, err := recipient.Open(*info.SealedSignatureKey, SealInfoSignatureKey(pool))
		if err != nil {
			return out, fmt.Errorf("natsbus: open sealed signature key: %w", err)
		}
		out.SignaturePrivateKey = priv
	}
	return out, nil
}

// Take consumes a KeyPackage and returns its private bundle (the encoding of
// mls.PrivateBundle: the HPKE private keys of init_key and encryption_key), opened with a
// fresh recipient key that never leaves this process. kpool erases its copy in the same
// step (except for a last-resort KeyPackage, which stays reusable): keep the bundle.
func (c *Client) Take(ctx context.Context, pool, ref string, suite uint16) ([]byte, error) {
	k, err := NewRecipientKey(suite)
	if err != nil {
		return nil, err
	}
	return c.TakeWith(ctx, pool, ref, k)
}

// TakeWith is Take with a recipient key of your own.
func (c *Client) TakeWith(ctx context.Context, pool, ref string, k *RecipientKey) ([]byte, error) {
	tr, err := c.TakeSealed(ctx, pool, TakeRequest{Ref: ref, RecipientKey: k.Public, CipherSuite: k.Suite})
	if err != nil {
		return nil, err
	}
	if tr.CipherSuite != k.Suite {
		return nil, fmt.Errorf("natsbus: take: pool %s uses cipher suite %d, the recipient key is for %d", pool, tr.CipherSuite, k.Suite)
	}
	b, err := k.Open(tr.Sealed, SealInfoTake(pool, ref))
	if err != nil {
		return nil, fmt.Errorf("natsbus: open sealed bundle: %w", err)
	}
	return b, nil
}

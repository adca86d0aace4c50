package natsbus

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/mls"
)

// MemKeyStore is a KeyStore backed by kpool's own mls package that keeps its private keys
// in memory: for examples, tests and `worker client simulate`. A real application uses its
// MLS library's key store instead (see docs/client-custody.md).
type MemKeyStore struct {
	suite    mls.CipherSuite
	signer   mls.Signer
	identity []byte
	// Options are the base of every KeyPackage it generates (capabilities, extensions).
	Options mls.GenerateOptions
	// Now is the clock for lifetimes (nil: time.Now); Lifetime how long each KeyPackage
	// lives (0: 84 days), back-dated one hour as OpenMLS does, and never past the
	// request's max_not_after.
	Now      func() time.Time
	Lifetime time.Duration

	mu      sync.Mutex
	bundles map[string]*mls.PrivateBundle // hex ref → private keys
}

// NewMemKeyStore makes a key store for one pool: the client's identity (basic credential),
// cipher suite and signature key.
func NewMemKeyStore(suite uint16, signer mls.Signer, identity string) *MemKeyStore {
	return &MemKeyStore{suite: mls.CipherSuite(suite), signer: signer, identity: []byte(identity), bundles: map[string]*mls.PrivateBundle{}}
}

// Generate implements KeyStore.
func (m *MemKeyStore) Generate(_ context.Context, req events.ClientGenerate) ([][]byte, error) {
	now := time.Now()
	if m.Now != nil {
		now = m.Now()
	}
	life := m.Lifetime
	if life == 0 {
		life = mls.DefaultLifetime
	}
	notAfter := min(now.Add(life).Unix(), req.MaxNotAfter)
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([][]byte, 0, req.Count)
	for i := range req.Count {
		o := m.Options
		o.NotBefore, o.NotAfter, o.Now = uint64(now.Add(-mls.DefaultBackdate).Unix()), uint64(notAfter), now
		o.LastResort = req.LastResort && i == 0
		kp, bundle, err := mls.Generate(m.suite, m.signer, m.identity, o)
		if err != nil {
			return out, fmt.Errorf("generate: %w", err)
		}
		ref, err := kp.Ref()
		if err != nil {
			bundle.Wipe()
			return out, err
		}
		m.bundles[hex.EncodeToString(ref)] = bundle
		out = append(out, mls.MarshalMLSMessage(kp))
	}
	return out, nil
}

// Delete implements KeyStore: the private keys are wiped.
func (m *MemKeyStore) Delete(_ context.Context, refs []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ref := range refs {
		if b, ok := m.bundles[ref]; ok {
			b.Wipe()
			delete(m.bundles, ref)
		}
	}
	return nil
}

// Refs implements KeyStore.
func (m *MemKeyStore) Refs(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.bundles)), nil
}

// Bundle returns the private keys of a held KeyPackage (to process a Welcome naming it).
func (m *MemKeyStore) Bundle(ref string) (*mls.PrivateBundle, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.bundles[ref]
	return b, ok
}

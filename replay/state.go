package replay

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/kpool/kpool/pool"
)

// StateVersion is the version of the expected-state file format.
const StateVersion = 1

// ErrStateFile is matched by errors reading an expected-state file.
var ErrStateFile = errors.New("bad expected-state file")

// Source lists the state to dump: pool.MemStore and the bbolt store both provide it
// (StoreSource in bolt.go, MemTarget in mem.go).
type Source interface {
	Meta() (pool.Meta, error)
	Pools() ([]pool.Pool, error)
	// KeyPackages calls fn for every KeyPackage record of a pool, tombstones included.
	KeyPackages(poolID string, fn func(pool.KeyPackage) error) error
}

// State is the canonical, diffable dump of everything replay reproduces: the core's
// meta, every pool record and every KeyPackage record. Maps keep the JSON sorted, so
// the same state always marshals to the same bytes.
type State struct {
	Version int                  `json:"kpool_state"`
	Meta    pool.Meta            `json:"meta"`
	Pools   map[string]PoolState `json:"pools"`
}

// PoolState is one pool and its KeyPackages.
type PoolState struct {
	Pool        pool.Pool                 `json:"pool"`
	KeyPackages map[string]KeyPackageDump `json:"key_packages"`
}

// KeyPackageDump is a KeyPackage record with its public bytes replaced by their SHA-256,
// which keeps state files small and still catches any byte that differs. Embedding the
// record keeps fields the core adds later in the dump without a change here.
type KeyPackageDump struct {
	pool.KeyPackage
	KeyPackageSHA string `json:"key_package_sha256"`
}

// Dump reads the whole state from src.
func Dump(src Source) (*State, error) {
	m, err := src.Meta()
	if err != nil {
		return nil, err
	}
	pools, err := src.Pools()
	if err != nil {
		return nil, err
	}
	m.Time = m.Time.UTC()
	st := &State{Version: StateVersion, Meta: m, Pools: make(map[string]PoolState, len(pools))}
	for _, p := range pools {
		ps := PoolState{Pool: p, KeyPackages: map[string]KeyPackageDump{}}
		err := src.KeyPackages(p.ID, func(kp pool.KeyPackage) error {
			ps.KeyPackages[kp.Ref] = dumpKP(kp)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("key packages of pool %s: %w", p.ID, err)
		}
		st.Pools[p.ID] = ps
	}
	return st, nil
}

// dumpKP hashes the bytes and puts times in UTC, so a record read back from bbolt and
// one held in memory dump the same.
func dumpKP(kp pool.KeyPackage) KeyPackageDump {
	sum := sha256.Sum256(kp.KeyPackage)
	kp.KeyPackage = nil
	kp.Deadline, kp.CreatedAt, kp.UpdatedAt = kp.Deadline.UTC(), kp.CreatedAt.UTC(), kp.UpdatedAt.UTC()
	return KeyPackageDump{KeyPackage: kp, KeyPackageSHA: hex.EncodeToString(sum[:])}
}

// Marshal writes the state as indented JSON with a final newline.
func (s *State) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// ReadState parses an expected-state file.
func ReadState(r io.Reader) (*State, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStateFile, err)
	}
	if s.Version != StateVersion {
		return nil, fmt.Errorf("%w: kpool_state version %d, this kpool reads %d", ErrStateFile, s.Version, StateVersion)
	}
	return &s, nil
}

// Diff lists every difference between want and got as "path: want X, got Y" lines,
// sorted by path; nil when they are equal.
func Diff(want, got *State) ([]string, error) {
	fw, err := flatten(want)
	if err != nil {
		return nil, err
	}
	fg, err := flatten(got)
	if err != nil {
		return nil, err
	}
	var out []string
	for k, w := range fw {
		g, ok := fg[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: want %s, got nothing", k, w))
		case g != w:
			out = append(out, fmt.Sprintf("%s: want %s, got %s", k, w, g))
		}
	}
	for k, g := range fg {
		if _, ok := fw[k]; !ok {
			out = append(out, fmt.Sprintf("%s: want nothing, got %s", k, g))
		}
	}
	slices.Sort(out)
	return out, nil
}

// flatten turns a state into path → JSON value of every leaf, e.g.
// `pools.p1.key_packages.ab12….state` → `"available"`.
func flatten(s *State) (map[string]string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	out := map[string]string{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if len(x) == 0 {
				out[path] = "{}"
			}
			for k, c := range x {
				walk(join(path, k), c)
			}
		case []any:
			if len(x) == 0 {
				out[path] = "[]"
			}
			for i, c := range x {
				walk(join(path, fmt.Sprint(i)), c)
			}
		default:
			vb, _ := json.Marshal(x)
			out[path] = string(vb)
		}
	}
	walk("", v)
	return out, nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

package persistence

import (
	"encoding/binary"
	"math"
	"time"
)

// Expiry index keys are 8 bytes of time then the ref. The time is unix nanoseconds
// with the sign bit flipped, big-endian, so byte order is time order for every int64.
const timeKeyLen = 8

var (
	minNanoTime = time.Unix(0, math.MinInt64)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

func unixNano(t time.Time) int64 {
	switch {
	case t.Before(minNanoTime):
		return math.MinInt64
	case t.After(maxNanoTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

func timeKey(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, timeKeyLen+64), uint64(unixNano(t))^(1<<63))
}

func indexKey(at time.Time, ref string) []byte { return append(timeKey(at), ref...) }

func parseIndexKey(k []byte) (time.Time, string, bool) {
	if len(k) < timeKeyLen {
		return time.Time{}, "", false
	}
	n := int64(binary.BigEndian.Uint64(k) ^ (1 << 63))
	return time.Unix(0, n).UTC(), string(k[timeKeyLen:]), true
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// poolKPKey is the per-pool index key; "/" never occurs in a pool id.
func poolKPKey(pool, ref string) []byte {
	k := make([]byte, 0, len(pool)+1+len(ref))
	return append(append(append(k, pool...), '/'), ref...)
}

// PoolSecretID is the secret id of a pool's signature private key.
func PoolSecretID(poolID string) string { return "pool:" + poolID }

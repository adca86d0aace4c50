package events

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// Partitions spread pools over P independent input sequences (scale-out, docs/scale-out.md).
// NATS assigns them: the inbound stream's subject transform rewrites
// <prefix>.<events|inputs>.<pool>.<type> to <prefix>.part.<n>.<events|inputs>.<pool>.<type>
// with n = {{partition(P,2)}}, an FNV-1a hash of the pool token modulo P. PartitionOf is the
// same function, so the worker can route an API call to the owner of its pool's partition.

// DefaultPartitions is P for a cluster when the operator does not choose one.
const DefaultPartitions = 16

// MaxPartitions bounds P: each partition is a consumer, a lease and a bbolt file.
const MaxPartitions = 1024

// PartitionOf is the partition of a pool among n, as nats-server's partition() computes it.
func PartitionOf(pool string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(pool))
	return int(h.Sum32() % uint32(n))
}

// PartitionTransform is the inbound stream's subject transform for n partitions: source
// and destination.
func (s Subjects) PartitionTransform(n int) (src, dest string) {
	return s.Prefix + ".*.*.*", fmt.Sprintf("%s.part.{{partition(%d,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}", s.Prefix, n)
}

// PartitionFilters are the stored subjects of partition p: its pools' events and inputs,
// and the pool-less ticks every partition applies. Partition 0 also takes the subjects
// the transform leaves alone because they are not <prefix>.events.<pool>.<type>, so that
// they are refused with a dead letter instead of sitting unread.
func (s Subjects) PartitionFilters(p int) []string {
	own := s.Prefix + ".part." + strconv.Itoa(p) + ".>"
	if p == 0 {
		return []string{own, s.Prefix + ".events.*", s.Prefix + ".events.*.*.*.>", s.Prefix + ".inputs.*", s.Prefix + ".inputs.*.*.*.>"}
	}
	return []string{own, s.Prefix + ".events.tick"}
}

// Unpartitioned gives back the subject a message was published on: it drops the
// ".part.<n>" the stream's transform inserted (other subjects are returned as they are).
func (s Subjects) Unpartitioned(subject string) string {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".part.")
	if !ok {
		return subject
	}
	_, tail, ok := strings.Cut(rest, ".")
	if !ok {
		return subject
	}
	return s.Prefix + "." + tail
}

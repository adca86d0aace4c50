//go:build race

package worker_test

// raceEnabled scales TestCluster down under the (10× slower) race detector; the plain
// pass runs it at full size.
const raceEnabled = true

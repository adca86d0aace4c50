//go:build race

package pool

// raceEnabled scales the property test down under the (10× slower) race detector.
const raceEnabled = true

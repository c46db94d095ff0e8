//go:build race

package reorder_test

// raceEnabled says the race detector is on: tests of simulated figures,
// which it slows tenfold and cannot change, skip then; CI runs them
// without it.
const raceEnabled = true

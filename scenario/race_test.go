//go:build race

package scenario

// raceEnabled says the race detector is on: tests of simulated figures,
// which it slows tenfold and cannot change, skip then or shrink; CI runs
// them without it too.
const raceEnabled = true

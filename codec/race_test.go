//go:build race

package codec

// raceEnabled says the race detector is on: measurements, which it slows
// tenfold, are skipped then.
const raceEnabled = true

//go:build race

package transport

// raceEnabled says the tests run under the race detector, whose
// instrumentation may allocate: allocation counts are not asserted then.
const raceEnabled = true

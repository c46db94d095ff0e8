//go:build race

package soak

// raceEnabled says the test runs under the race detector, whose shadow
// memory makes the resident set larger and noisier.
const raceEnabled = true

//go:build race

package faultmatrix

// raceEnabled says the test runs under the race detector, which slows the
// engines several times over: the cells' outcomes are checked, their
// times only against a looser bound.
const raceEnabled = true

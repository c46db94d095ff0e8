//go:build !race

package reorder_test

const raceEnabled = false

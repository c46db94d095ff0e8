// Package soak holds the load and soak tests: one destination listener
// takes real migrations (pre-copy, post-copy and hybrid, over loopback TCP,
// of guests written to while they move), each verified at the destination,
// and the process is measured: its goroutines and open file descriptors
// must come back to what they were before (the listener's own goroutines
// aside). TestSoak runs 50 back to back and checks that the resident memory
// does not grow after a warm-up; TestEightConcurrent runs eight at once. It
// is a package of its own so that it runs in a process of its own, where no
// other test's goroutines, descriptors or heap blur the figures. It has
// tests only.
package soak

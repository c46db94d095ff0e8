// Package soak holds the load and soak test: one destination listener
// takes back-to-back real migrations (pre-copy, post-copy and hybrid, over
// loopback TCP, of guests written to while they move), each verified at the
// destination, and the process is measured after each: its goroutines and
// open file descriptors must come back to what they were before the first
// (the listener's own goroutines aside), and its resident memory must not
// grow after a warm-up. It is a package of its own so that it runs in a
// process of its own, where no other test's goroutines, descriptors or heap
// blur the figures. It has tests only.
package soak

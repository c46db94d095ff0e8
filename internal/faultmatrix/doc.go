// Package faultmatrix holds the fault matrix: every engine (pre-copy,
// post-copy, hybrid) migrating real memory, written by running goroutines,
// over loopback TCP through the fault-injecting proxy (internal/faultproxy),
// with a fault (close, stall, a bit flipped in a header or a payload,
// half-open, the return path only, the urgent connection only) injected in
// each phase (bulk round, later round, stop-and-copy, just before and just
// after the Commit, the post-copy push). Every cell must end, within the
// liveness bound and a second, in one of two outcomes: the guest running at
// the source with the destination not resumed, or the migration completed
// after recovery with the destination verified. It has tests only.
package faultmatrix

// Package faultmem is a post-copy destination memory: an mmap'd region whose
// missing pages fault, registered with Linux userfaultfd in MISSING mode.
//
// A Region starts with every page missing. Goroutines standing in for the
// guest's vCPUs read and write Bytes() directly once the guest resumes; a
// goroutine that touches a missing page blocks in the kernel until the page
// is placed. One handler goroutine reads the kernel's fault messages and
// reports each newly faulted page to Config.OnFault, which typically asks
// the source for it. Pages arrive through the livemig.PageSink methods
// (WritePage, ZeroPage) or through Place and PlaceZero, which map a page
// atomically with UFFDIO_COPY / UFFDIO_ZEROPAGE and wake the goroutines
// waiting on it.
//
// It is the destination counterpart of package region, for post-copy and
// hybrid migration.
//
// # Two phases, two placement rules
//
// Before the guest resumes (pre-copy rounds of a hybrid migration), the
// source may send a page several times; the newest copy must win. WritePage
// and ZeroPage do that: a page not yet present is placed, a present page is
// overwritten with a plain copy.
//
// After the guest resumes, a present page belongs to the guest, which may
// have written it: a copy of it that arrives later (the background push
// crossing a fault request) is stale and must be discarded. The post-copy
// engine uses Place and PlaceZero, which place a page only if it is still
// missing and report whether they did. Overwriting a page with WritePage
// once the guest runs would lose the guest's writes.
//
// At the switchover of a hybrid migration, the copies the source dirtied
// since it sent them are stale: Discard makes such a page missing again
// (MADV_DONTNEED), so the guest faults on it instead of running on the old
// copy.
//
// # Touching the region from Go
//
// Guest goroutines must touch Bytes() with ordinary Go loads and stores in
// Go code. A fault taken inside the runtime or an assembly routine — copy()
// or bytes.Equal over the region, a channel send of an element of it, a
// loop the compiler turns into a memclr — cannot be preempted by the Go
// scheduler: if a garbage collection begins while such a fault waits, the
// stop-the-world waits for it, the handler goroutine stops too, and the
// process hangs. (A fault in a system call, such as KVM_RUN, is no problem.)
// Data passed to WritePage and Place must not lie in a missing page of a
// Region.
//
// A goroutine blocked on a missing page keeps its P (the scheduler sees a
// running goroutine, not a system call) until the scheduler preempts it,
// some 10 ms later. The handler goroutine itself holds no P while it
// waits: it is parked in the runtime's network poller, like a socket
// reader. So fault service needs one P besides those of the guest
// goroutines, for the handler and whoever serves OnFault and places pages:
// set GOMAXPROCS above the number of guest goroutines. With as many
// faulting goroutines as GOMAXPROCS, fault service waits for those
// preemptions and drops from tens of microseconds to tens of milliseconds
// per page. More Ps than that are not needed, and on few CPUs they slow
// each fault down: the work of one fault spreads over more OS threads,
// each woken from idle (on 2 CPUs, one guest: p50 ~45 µs with GOMAXPROCS=2,
// ~100 µs with 5; see docs/BENCHMARKS.md).
//
// Present(n) turns true when the placement call returns; a woken guest may
// run on a moment before that.
//
// # Platforms
//
// The Region works on Linux with userfaultfd (root, or access to
// /dev/userfaultfd). Elsewhere, or where userfaultfd is unavailable, New
// returns an error matching livemig.ErrNotSupported.
package faultmem

import (
	"errors"
	"log/slog"
)

// ErrMissing is returned (inside a *livemig.PageError) by ReadPage for a page
// that has not been placed yet.
var ErrMissing = errors.New("faultmem: page missing")

// Config configures a Region. The zero value is valid: faults are counted
// and wait until their page is placed, and nothing is logged.
type Config struct {
	// OnFault is called from the handler goroutine the first time a
	// goroutine faults on missing page n (further faults on the same page
	// while it is missing are counted but not reported again), typically to
	// request the page from the source (postcopy.Receive sends the request
	// from here, through a postcopy.FaultQueue, as QEMU's fault thread
	// does). It must not block for long: every other fault waits meanwhile. It may call Place, PlaceZero, WritePage
	// and ZeroPage, but not Stop or Close. A fault is no Go
	// synchronization: to reach the Region from OnFault, hand it over
	// through an atomic.Pointer or a channel, not a plain variable set
	// after New (the race detector flags that).
	OnFault func(page uint64)
	// Logger receives debug and error messages; nil discards them.
	Logger *slog.Logger
}

// Package postcopy migrates a guest by post-copy: execution moves first and
// the memory after, so every page crosses the link once and the downtime
// does not depend on how fast the guest dirties memory. The price is a guest
// that waits on the pages it touches before they arrive, and a window in
// which neither host holds the whole guest, which this package survives: a
// link cut after the switchover is recovered by reconnecting.
//
// Package hybrid composes it with pre-copy: a bounded number of rounds of
// package precopy's engine (precopy.HandOff), ended without a pause at a
// barrier the destination answers, then this engine from where they left
// the migration (Continue); the number of rounds is hybrid.Config.Rounds.
// Receive takes all three ends: post-copy's, hybrid's, and pre-copy's
// stop-and-copy when an adaptive hybrid converged (a Switchover without
// wire.FlagPostCopy).
//
// # Protocol
//
// Over a transport.Conn (and optionally a second, urgent Conn for requested
// pages, like QEMU's postcopy-preempt channel):
//
//	source                                  destination
//	[pre-copy rounds: Page..., EndRound     stores them (newest wins)
//	  (precopy.HandOff); EndRound
//	  (Arg: ack flag): the barrier]   <--   Ack(AckRound)
//	[Discard chunks: copies the last  -->   makes those pages missing again
//	  round left stale; EndRound
//	  (Arg: ack flag)]                <--   Ack(AckRound)
//	pause
//	[Discard chunks: stale since]     -->   makes those pages missing again
//	Switchover (Page: session id, Arg:
//	  round | post-copy | urgent flag) -->
//	State                             -->   loads it
//	                                  <--   Ack(AckReady)
//	Commit                            -->   resumes the guest at once
//	                                  <--   Ack(AckResumed)
//	Page... (background push)         -->   places each page only if missing
//	                                  <--   Request (a page the guest faulted on)
//	Page (requested) + neighbours     -->   (on the urgent Conn if there is one)
//	[urgent Conn: EndRound marker]
//	Done (Arg: digest at pause time)  -->   checks it holds every page, digests
//	                                  <--   Ack(AckComplete, Page: digest,
//	                                            Data: fault figures)
//
// Downtime is from the pause to the resume: one round trip plus the state,
// whatever the dirty rate. Once the guest runs at the destination, a page
// placed there belongs to the guest: a later copy (a request racing the
// push) is dropped. Before the switchover the guest is not running at the
// destination, so pre-copy pages overwrite older copies. A hybrid source
// names the stale copies (pages dirtied since they were sent, KindDiscard)
// in two steps: those the last round left, while the guest still runs,
// waiting until the destination has made them missing (with userfaultfd a
// madvise per page, about 3 µs, kept out of the downtime), then at the
// switchover those dirtied since. The destination makes each missing, so
// the guest can never run on a stale copy.
//
// # Failure and recovery
//
// Before the Commit, failure is clean as in package precopy: the source
// resumes its guest, the destination never resumes. After it the source
// never resumes: the destination runs the guest, threads touching missing
// pages wait, and a cut link is recovered. The source redials
// (Config.Redial) and sends KindResume with the session id; the destination
// (Config.Reaccept) answers with KindRecvBitmap chunks naming the pages it
// holds, Ack(AckHeld), and requests again what its guest waits on; the
// source pushes the rest. With Config.RedialUrgent and ReacceptUrgent a
// new urgent connection replaces the old one too (KindResume says so), so
// requested pages keep overtaking the push after a cut. Without
// Redial/Reaccept the error wraps livemig.ErrIncomplete: the guest's
// memory is split and the source's copy must be kept.
//
// # Compression
//
// Every page crosses once, so a delta codec has nothing to work from; with
// Config.LZ4 the source sends a page as an LZ4 block when that saves at
// least 1/64 of it (codec.PageEncoder, the rule of every engine:
// codec.MaxLZ4), which pays on links slower than the source compresses.
// Zero pages always go as zero-page records. The destination decodes with
// codec.DecodePage.
//
// # Destination memory
//
// The destination's Memory places pages only if missing (Place, PlaceZero)
// and reports presence; its faults reach the engine through a FaultSource.
// faultmem.Region (userfaultfd: guest threads block in the kernel on missing
// pages) is the real one; HeapMemory is a portable stand-in whose guest
// goroutines block in Access. FaultQueue adapts a fault callback (faultmem's
// Config.OnFault) to a FaultSource.
//
// # One core, two worlds
//
// Every decision of the source's post-copy phase (which copies a hybrid's
// rounds left stale, the push order and its rate, what a request
// brings, what is sent once, the report's counters) is made by Core, a
// deterministic state machine fed facts and time. Migrate drives it with
// goroutines and connections; package scenario's PostCopy drives the same
// Core in an event loop over a model of the link and of the destination's
// vCPU, so that examples/compare sets post-copy and hybrid beside
// pre-copy (a hybrid's rounds run there by package precopy's engine, as
// here). The destination's side is Demand (which faults become
// requests, when a wait ends, the fault figures), kept by Receive and by
// the model's destination alike. A differential test in package scenario
// checks that both worlds send the same pages in the same order and report
// the same counters.
//
// # Usage
//
//	// Source side.
//	rep, err := postcopy.Migrate(ctx, conn, livemig.Source{Memory: guest, VM: guest},
//		postcopy.Config{Urgent: urgentConn, Redial: redial})
//
//	// Destination side.
//	faults := postcopy.NewFaultQueue(pages, nil)
//	mem, err := faultmem.New(4096, pages, faultmem.Config{OnFault: faults.Fault})
//	drep, err := postcopy.Receive(ctx, conn, postcopy.Destination{
//		Memory: mem, VM: vm, Faults: faults, Pages: pages, PageSize: 4096,
//	}, postcopy.Config{Urgent: urgentConn, Reaccept: reaccept})
//
// The source's Report has the post-copy figures in Report.PostCopy: pages
// pushed and pulled (requested pages and their pre-paged neighbours), demand
// faults, the guest's wait per fault (p50, p99, max, total, measured at the
// destination from the fault to the page's placement) and the time from the
// resume to the last page.
package postcopy

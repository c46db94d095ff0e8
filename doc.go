// Package livemig is the vocabulary of a Go SDK of live virtual-machine
// migration algorithms: the interfaces a hypervisor plugs its guest into, the
// clock engines read time from, the report a migration returns, and the
// errors every package shares.
//
// livemig implements, as importable packages, the algorithms of P. Svärd's
// thesis "Live VM Migration Principles and Performance" (Umeå University,
// 2012): iterative pre-copy, delta compression of re-sent pages (XBZRLE, as
// QEMU speaks it), dynamic reordering of page transfers by dirtying
// frequency, post-copy and hybrid migration.
//
// # Usage
//
// A migration has a source, a destination, an engine and a link between
// them.
//
// The source is a guest that exposes three things:
//   - its memory, a [Memory]: page size, page count, and a read of one page
//     into a buffer the caller owns;
//   - its dirty log, a [DirtySource]: the pages written since the last sync,
//     fetched and cleared like KVM_GET_DIRTY_LOG, in KVM's bitmap layout;
//   - its control, a [VM]: pause and resume the vCPUs, save the CPU and
//     device state as opaque bytes.
//
// Package region provides all three over real memory written by goroutines;
// package wpmem provides a Memory and DirtySource over process memory that
// any code writes directly, the kernel tracking the writes;
// package sim provides them for simulated guests whose workloads dirty pages
// as (virtual) time passes; a hypervisor provides its own, and checks them
// with package livemigtest.
//
// The destination is a [PageSink] (write a page, mark a page zero) and a [VM]
// (load the state, resume).
//
// The two are joined by a transport.Conn: a framed, checksummed connection
// over a link (an in-memory pipe, TCP, TLS with client certificates, a
// bandwidth-limited or simulated link, or several links striped like QEMU's
// multifd), opened with a handshake that checks both sides agree on the
// protocol version and the guest's geometry:
//
//	link, err := transport.Dial(ctx, "dst.example:4444", transport.DialConfig{})
//	conn, _, err := transport.Open(ctx, link, transport.Hello{
//		PageSize: uint32(guest.PageSize()), PageCount: guest.PageCount(),
//	}, transport.Config{})
//
// The engine moves the guest. With pre-copy, the source sends every page,
// then round after round the pages dirtied meanwhile, until what is left can
// go within the downtime target; then it pauses, sends the rest and the
// state, and the destination resumes once it has verified that it holds
// every page as sent:
//
//	report, err := precopy.Migrate(ctx, conn, precopy.Source{
//		Memory: guest, Dirty: guest, VM: guest,
//	}, precopy.Config{DowntimeTarget: 100 * time.Millisecond})
//
// and at the destination:
//
//	rep, err := precopy.Receive(ctx, conn, precopy.Destination{
//		Sink: mem, VM: vm, Pages: n, PageSize: 4096,
//	}, precopy.Config{})
//
// The [Report] has per-round figures (pages dirty, pages sent, bytes,
// duration) and totals (total time, downtime from pause to resume, bytes,
// pages sent and re-sent); it prints as a table and marshals to JSON.
//
// # Two worlds
//
// Every engine reads time from a [Clock]. In the real world it is the
// [WallClock]; in the simulated world a [VirtualClock] that a simulated link
// advances by size/bandwidth, so that a 16 GiB guest over 1 Gbit/s is
// evaluated in seconds, exactly and repeatably, by the same engine code.
//
// # Contracts
//
// Buffers passed in are owned by the caller and not retained; buffers handed
// out are borrowed until the next call, as each method's doc says. Optional
// capabilities ([DirtyPeeker], [PageReader], [PageView], [Throttler]) are
// separate interfaces found by type assertion. Errors wrap the sentinels
// below ([ErrCorrupt], [ErrVersion], [ErrPageRange], ...) and carry a place
// ([PageError], [StreamError]); bad input is an error, never a panic.
package livemig

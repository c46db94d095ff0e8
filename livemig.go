package livemig

import "context"

// DefaultPageSize is the page size of x86 guests and of QEMU's target page: 4 KiB.
const DefaultPageSize = 4096

// Memory is the guest's memory as the source sees it: a run of equally sized
// pages numbered from 0.
//
// PageSize and PageCount never change during a migration. ReadPage copies the
// current contents of page n into dst, which the caller owns and which must be
// exactly PageSize bytes long; Memory keeps no reference to dst after the call.
// ReadPage may be called from several goroutines at once with distinct dst
// buffers, while the guest goes on writing: a page read while it is being
// written may hold a mix of old and new bytes, which is harmless because such a
// page is also marked dirty and is sent again. ReadPage of a page number past
// PageCount returns an error wrapping ErrPageRange.
type Memory interface {
	PageSize() int
	PageCount() uint64
	ReadPage(n uint64, dst []byte) error
}

// DirtySource is the guest's dirty log: which pages were written since the
// previous sync.
//
// SyncDirty ORs into dst the pages written since the previous call and forgets
// them (fetch-and-clear, the semantics of KVM_GET_DIRTY_LOG). dst is a bitmap in
// KVM's layout: little-endian uint64 words, bit i%64 of word i/64 is page i. It
// must hold at least WordsFor(PageCount) words; the caller owns it and
// DirtySource keeps no reference to it. Bits of dst already set stay set.
//
// The first call after dirty logging starts reports only the writes made since
// logging started; an engine sends every page in its first round regardless.
// SyncDirty is called by one goroutine at a time (the engine's), while the guest
// keeps writing. A write racing with SyncDirty is reported by this call or the
// next one, never lost.
type DirtySource interface {
	SyncDirty(dst []uint64) error
}

// DirtyPeeker is an optional extension of DirtySource: PeekDirty ORs into dst
// the pages written since the previous SyncDirty without clearing them. The
// reordering of issue 5 uses it to defer pages that are dirtied again before
// their turn in a round.
type DirtyPeeker interface {
	PeekDirty(dst []uint64) error
}

// PageSink is the destination's memory.
//
// WritePage stores data (exactly the sink's page size, owned by the caller and
// valid only during the call) as page n. ZeroPage makes page n all zeros. A
// receiver may call WritePage and ZeroPage from several goroutines at once, but
// never for the same page at the same time, and for one page always in the
// order the source sent its copies (newest wins). Page numbers past the
// sink's page count return an error wrapping ErrPageRange.
type PageSink interface {
	WritePage(n uint64, data []byte) error
	ZeroPage(n uint64) error
}

// PageReader is an optional extension of PageSink that lets the destination
// read back a page it holds: codecs that send a delta against the previous
// copy of a page need it, and so do verifiers. dst is owned by the caller.
type PageReader interface {
	ReadPage(n uint64, dst []byte) error
}

// PageView is an optional extension of Memory for memory that lives in this
// process (an mmap'd region, a KVM memory slot): View returns the page's bytes
// without copying. The slice aliases guest memory, which the guest may write at
// any time; the caller must not retain it past the current round or write to it.
type PageView interface {
	View(n uint64) ([]byte, error)
}

// VM is the control of a guest: pause and resume its vCPUs, save and load its
// CPU and device state as opaque bytes. Calls come from one goroutine at a
// time.
//
// On the source an engine calls Pause, SaveState and, if the migration fails
// after the pause, Resume, so that the guest runs on where it was. On the
// destination it calls LoadState and then Resume, only once every page and the
// state have arrived and been verified.
//
// Pause returns only once the guest writes no more and every write it made
// before is visible to the next DirtySource.SyncDirty: a sync after Pause
// reports the guest's last writes, and a second sync reports nothing. A write
// still under way, or dirty marks still buffered (a PML buffer, a dirty ring
// not yet harvested), must be finished before Pause returns. A Pause that
// returns an error has not paused the guest: it runs on, and the engine does
// not call Resume.
//
// Resume lets the guest run again, its writes showing in the dirty log as
// before. Pause of a paused guest and Resume of a running guest do nothing and
// return nil, as every VM in this module does. A Resume that returns an error
// has not resumed the guest: at the destination the guest does not run there.
//
// SaveState, called while the guest is paused, appends the state to dst and
// returns the extended slice; it does not modify dst[:len(dst)] and keeps no
// reference to dst. A VM whose state is empty returns dst unchanged. LoadState
// of the bytes SaveState produced (by a VM of the same configuration) succeeds;
// state is owned by the caller, and LoadState keeps no reference to it. A
// LoadState error means the state did not load: the destination does not
// resume the guest.
type VM interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	SaveState(ctx context.Context, dst []byte) ([]byte, error)
	LoadState(ctx context.Context, state []byte) error
}

// WordsFor returns the number of uint64 words a dirty bitmap of pages pages
// takes.
func WordsFor(pages uint64) int { return int((pages + 63) / 64) }

// Throttler is an optional extension of VM: SetThrottle slows the guest's
// vCPUs so that they run only (1-fraction) of the time, as QEMU's
// auto-converge does; 0 lifts the throttle. Pre-copy calls it when its
// non-convergence policy is to throttle.
type Throttler interface {
	SetThrottle(fraction float64)
}

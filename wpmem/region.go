package wpmem

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/internal/uffd"
)

// vecLen is how many written runs one PAGEMAP_SCAN returns; a scan with
// more resumes where the kernel stopped. 512 regions are 12 KiB.
const vecLen = 512

// Region is a range of this process's memory under the kernel's dirty
// tracking: a livemig.Memory, livemig.DirtySource, livemig.DirtyPeeker and
// livemig.PageView.
//
// Its methods are safe for concurrent use, and SyncDirty and PeekDirty run
// one at a time. The memory (Bytes) may be written at any time, by
// anything, with no call into the Region. Close must come after the
// writers and the other calls have stopped.
type Region struct {
	mem      []byte
	base     uintptr
	pageSize int
	pages    uint64
	owned    bool // New mapped mem: Close unmaps it

	fd *uffd.FD
	pm *uffd.Pagemap

	mu     sync.Mutex // one scan at a time; guards vec and closed
	vec    []uffd.PageRegion
	closed bool
}

// New maps pages host pages of zeroed private anonymous memory, without
// transparent huge pages, and starts tracking writes to it: the first
// SyncDirty reports the pages written since New returned. Close unmaps it.
// Without the kernel feature (Linux 6.7+ userfaultfd with WP_ASYNC, and
// PAGEMAP_SCAN) or off Linux, it returns an error matching
// livemig.ErrNotSupported that says what is missing.
func New(pages uint64) (*Region, error) {
	if errPlatform != nil {
		return nil, errPlatform
	}
	ps := pageSize()
	if pages == 0 || pages > (1<<46)/uint64(ps) {
		return nil, fmt.Errorf("wpmem: %d pages of %d bytes is not a usable size", pages, ps)
	}
	mem, err := mapMemory(int(pages) * ps)
	if err != nil {
		return nil, fmt.Errorf("wpmem: map %d bytes: %w", int(pages)*ps, err)
	}
	r, err := track(mem, ps)
	if err != nil {
		return nil, errors.Join(err, unmapMemory(mem))
	}
	r.owned = true
	return r, nil
}

// Track starts tracking writes to mem, memory the caller mapped and owns:
// a private anonymous mapping (mmap MAP_PRIVATE|MAP_ANONYMOUS, not Go heap
// memory, not MAP_SHARED), page-aligned in start and length, that stays
// mapped until Close returns. It advises the kernel against transparent huge
// pages on mem (MADV_NOHUGEPAGE); that does not split huge pages mem
// already has, and a write to one of those shows as its 512 4 KiB pages
// until the kernel splits it. The first SyncDirty reports the pages
// written since Track returned, whatever mem held before. Close stops the
// tracking and leaves mem mapped. Errors as for New.
func Track(mem []byte) (*Region, error) {
	if errPlatform != nil {
		return nil, errPlatform
	}
	ps := pageSize()
	base := uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
	if len(mem) == 0 || len(mem)%ps != 0 || base%uintptr(ps) != 0 {
		return nil, fmt.Errorf("wpmem: memory at %#x, %d bytes, is not whole %d-byte pages", base, len(mem), ps)
	}
	return track(mem, ps)
}

// track registers mem for asynchronous write-protect and protects it once.
func track(mem []byte, ps int) (*Region, error) {
	base := uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
	r := &Region{mem: mem, base: base, pageSize: ps, pages: uint64(len(mem) / ps), vec: make([]uffd.PageRegion, vecLen)}
	if err := noHugePages(mem); err != nil {
		return nil, fmt.Errorf("wpmem: MADV_NOHUGEPAGE on [%#x, +%#x): %w", base, len(mem), err)
	}
	fd, err := uffd.OpenWPAsync()
	if err != nil {
		return nil, fmt.Errorf("wpmem: a userfaultfd for asynchronous write-protect: %w", err)
	}
	pm, err := uffd.OpenPagemap()
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("wpmem: %w", err)
	}
	r.fd, r.pm = fd, pm
	fail := func(err error) (*Region, error) {
		return nil, errors.Join(err, fd.Close(), pm.Close())
	}
	ioctls, err := fd.Register(base, uintptr(len(mem)), uffd.RegisterModeWP)
	if err != nil {
		return fail(fmt.Errorf("wpmem: register for write-protect (private anonymous memory only): %w", err))
	}
	if ioctls&uffd.IoctlWriteprotect == 0 {
		return fail(fmt.Errorf("wpmem: the kernel allows no UFFDIO_WRITEPROTECT on [%#x, +%#x) (ioctls %#x): %w",
			base, len(mem), ioctls, livemig.ErrNotSupported))
	}
	if err := fd.WriteProtect(base, uintptr(len(mem)), uffd.WriteProtectModeWP); err != nil {
		return fail(fmt.Errorf("wpmem: %w", err))
	}
	// One scan proves PAGEMAP_SCAN works here (Linux 6.7+) before anyone
	// relies on it; nothing has been written yet.
	if _, _, err := pm.ScanOnce(r.scanArgs(0), r.vec); err != nil {
		return fail(fmt.Errorf("wpmem: %w", err))
	}
	return r, nil
}

// PageSize returns the host page size, the unit of tracking.
func (r *Region) PageSize() int { return r.pageSize }

// PageCount returns the number of pages.
func (r *Region) PageCount() uint64 { return r.pages }

// Bytes returns the memory. Every write to it is tracked, by whatever code
// makes it, until Close.
func (r *Region) Bytes() []byte { return r.mem }

func (r *Region) check(n uint64, op string) error {
	if n >= r.pages {
		return &livemig.PageError{Op: op, Page: n, Err: livemig.ErrPageRange}
	}
	return nil
}

func (r *Region) page(n uint64) []byte {
	off := int(n) * r.pageSize
	return r.mem[off : off+r.pageSize : off+r.pageSize]
}

// ReadPage copies page n into dst (PageSize bytes). A page read while it
// is written may hold a mix of old and new bytes: the write also shows in
// the dirty log, so the page is sent again (livemig.Memory).
func (r *Region) ReadPage(n uint64, dst []byte) error {
	if err := r.check(n, "read"); err != nil {
		return err
	}
	if len(dst) != r.pageSize {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("buffer of %d bytes, page size %d", len(dst), r.pageSize)}
	}
	copy(dst, r.page(n))
	return nil
}

// View returns page n's bytes without copying (livemig.PageView): they
// alias the region, which its writers may change at any time.
func (r *Region) View(n uint64) ([]byte, error) {
	if err := r.check(n, "view"); err != nil {
		return nil, err
	}
	return r.page(n), nil
}

// SyncDirty ORs into dst the pages written since the previous SyncDirty
// (since New or Track for the first) and write-protects them again:
// fetch-and-clear, as livemig.DirtySource asks. dst is in KVM's layout
// (bit n%64 of word n/64 is page n) and must hold
// livemig.WordsFor(PageCount()) words, or the error wraps bitmap.ErrShort.
//
// No write is lost to a race with the sync. The kernel tests and re-protects
// each page-table entry in one step under the page-table lock
// (PM_SCAN_WP_MATCHING), and flushes the TLBs of the re-protected pages
// before the ioctl returns. A write that reached the page before that step
// left the entry unprotected, so the page is reported now; a store still
// going through a stale TLB entry lands before the flush, so before this
// call returns and before the caller reads the reported page. A write after
// that step finds the page protected again, faults, and shows in the next
// sync. Either way it is reported, now or next time.
func (r *Region) SyncDirty(dst []uint64) error {
	return r.scan(dst, uffd.ScanWPMatching, "SyncDirty")
}

// PeekDirty ORs into dst the pages written since the previous SyncDirty,
// without protecting them again: the next SyncDirty reports them too
// (livemig.DirtyPeeker). dst as for SyncDirty.
func (r *Region) PeekDirty(dst []uint64) error {
	return r.scan(dst, 0, "PeekDirty")
}

func (r *Region) scanArgs(flags uint64) uffd.Scan {
	return uffd.Scan{
		Flags: flags | uffd.ScanCheckWPAsync,
		Start: r.base, End: r.base + uintptr(len(r.mem)),
		Mask: uffd.PageIsWritten, Return: uffd.PageIsWritten,
	}
}

// scan runs PAGEMAP_SCAN over the region for written pages, resuming at the
// walk end while the vector fills, and sets them in dst.
func (r *Region) scan(dst []uint64, flags uint64, op string) error {
	if need := livemig.WordsFor(r.pages); len(dst) < need {
		return fmt.Errorf("wpmem: %s: %w: %d pages need %d words, got %d", op, bitmap.ErrShort, r.pages, need, len(dst))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("wpmem: %s: %w", op, livemig.ErrClosed)
	}
	s := r.scanArgs(flags)
	for s.Start < s.End {
		n, end, err := r.pm.ScanOnce(s, r.vec)
		if err != nil {
			return fmt.Errorf("wpmem: %s: %w", op, err)
		}
		for _, pr := range r.vec[:n] {
			if pr.Start < uint64(s.Start) || pr.End > uint64(s.End) || pr.Start >= pr.End {
				return fmt.Errorf("wpmem: %s: kernel reported [%#x, %#x) outside [%#x, %#x)", op, pr.Start, pr.End, s.Start, s.End)
			}
			setRange(dst, (pr.Start-uint64(r.base))/uint64(r.pageSize), (pr.End-uint64(r.base)+uint64(r.pageSize)-1)/uint64(r.pageSize))
		}
		if end <= s.Start {
			return fmt.Errorf("wpmem: %s: PAGEMAP_SCAN made no progress at %#x", op, s.Start)
		}
		s.Start = end
	}
	return nil
}

// setRange sets bits [a, b) of w, a whole word at a time in the middle.
func setRange(w []uint64, a, b uint64) {
	for a < b && a%64 != 0 {
		w[a/64] |= 1 << (a % 64)
		a++
	}
	for ; a+64 <= b; a += 64 {
		w[a/64] = ^uint64(0)
	}
	for ; a < b; a++ {
		w[a/64] |= 1 << (a % 64)
	}
}

// Close stops the tracking (the memory is unregistered and its protection
// removed), closes the descriptors and, for a Region from New, unmaps the
// memory. The writers must have stopped: after Close, Bytes of a Region
// from New is gone. Close is idempotent.
func (r *Region) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	err := errors.Join(r.fd.Unregister(r.base, uintptr(len(r.mem))), r.fd.Close(), r.pm.Close())
	if r.owned {
		err = errors.Join(err, unmapMemory(r.mem))
	}
	r.mem = nil
	if err != nil {
		return fmt.Errorf("wpmem: close: %w", err)
	}
	return nil
}

var (
	_ livemig.Memory      = (*Region)(nil)
	_ livemig.DirtySource = (*Region)(nil)
	_ livemig.DirtyPeeker = (*Region)(nil)
	_ livemig.PageView    = (*Region)(nil)
)

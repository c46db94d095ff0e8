// Package region is guest memory in this process: an mmap'd region whose
// writers mark pages dirty in software as they write, for the real world of
// livemig's tests and examples (memory written by running goroutines,
// migrated live over real sockets).
//
// A Region serves both ends of a migration. At the source it is the guest's
// livemig.Memory, livemig.DirtySource and livemig.VM: goroutines standing in
// for vCPUs write it through Write or Update, which mark the page dirty;
// Pause blocks new writes and waits for those under way; ReadPage returns a
// consistent copy of a page even while it is being written. At the
// destination it is a livemig.PageSink and livemig.PageReader.
//
// Bytes written straight into Bytes() bypass dirty tracking and the page
// locks; use it only while no migration runs.
//
// On Unix the memory is asked to be backed by transparent huge pages
// (madvise MADV_HUGEPAGE, where the kernel's THP mode is "madvise" or
// "always"), as QEMU does for guest RAM: a destination filling a fresh
// region then takes a page fault per 2 MiB rather than per 4 KiB. A
// sparsely written region may hold more memory for it.
package region

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// ErrPaused is returned by TryWrite while the region is paused.
var ErrPaused = errors.New("region: paused")

const stripes = 1024 // page locks, by page number modulo stripes

// Region is a tracked memory region. Its methods are safe for concurrent use.
type Region struct {
	mem      []byte
	pageSize int
	pages    uint64
	unmap    func() error

	dirty *bitmap.Bitmap // a software dirty log: MarkAtomic, SyncDirty
	locks [stripes]sync.Mutex

	gate   sync.RWMutex // writers hold it shared; Pause holds it exclusively
	paused atomic.Bool

	stateMu sync.Mutex
	state   []byte

	writes atomic.Uint64
}

// New maps a zeroed region of pages pages of pageSize bytes (pageSize a
// power of two, at least 64). Close unmaps it.
func New(pageSize int, pages uint64) (*Region, error) {
	if pageSize < 64 || pageSize&(pageSize-1) != 0 {
		return nil, fmt.Errorf("region: page size %d is not a power of two >= 64", pageSize)
	}
	if pages == 0 || pages > (1<<46)/uint64(pageSize) {
		return nil, fmt.Errorf("region: %d pages is not a usable size", pages)
	}
	mem, unmap, err := mapMemory(int(pages) * pageSize)
	if err != nil {
		return nil, fmt.Errorf("region: map %d bytes: %w", int(pages)*pageSize, err)
	}
	return &Region{
		mem: mem, pageSize: pageSize, pages: pages, unmap: unmap,
		dirty: bitmap.New(pages),
	}, nil
}

// Close releases the memory. The region must not be used afterwards.
func (r *Region) Close() error {
	if r.unmap == nil {
		return nil
	}
	err := r.unmap()
	r.unmap, r.mem = nil, nil
	return err
}

// PageSize returns the page size.
func (r *Region) PageSize() int { return r.pageSize }

// PageCount returns the number of pages.
func (r *Region) PageCount() uint64 { return r.pages }

// Bytes returns the whole region. Writes through it are not tracked.
func (r *Region) Bytes() []byte { return r.mem }

// Writes returns how many tracked writes the region has taken.
func (r *Region) Writes() uint64 { return r.writes.Load() }

func (r *Region) page(n uint64) []byte {
	off := int(n) * r.pageSize
	return r.mem[off : off+r.pageSize : off+r.pageSize]
}

func (r *Region) check(n uint64, op string) error {
	if n >= r.pages {
		return &livemig.PageError{Op: op, Page: n, Err: livemig.ErrPageRange}
	}
	return nil
}

// Write is a guest write: it copies p into page n at offset off, marks the
// page dirty and returns. While the region is paused it blocks until Resume.
// The write must lie inside the page.
func (r *Region) Write(n uint64, off int, p []byte) error {
	return r.Update(n, func(page []byte) {
		copy(page[off:], p)
	}, off, len(p))
}

// Update is a guest write through f, which may read and write the page
// (for example increment a counter in it) but must not retain it. off and
// length bound what f touches, for the range check.
func (r *Region) Update(n uint64, f func(page []byte), off, length int) error {
	if err := r.check(n, "write"); err != nil {
		return err
	}
	if off < 0 || length < 0 || off+length > r.pageSize {
		return &livemig.PageError{Op: "write", Page: n, Err: fmt.Errorf("range [%d,%d) outside the page", off, off+length)}
	}
	r.gate.RLock()
	l := &r.locks[n%stripes]
	l.Lock()
	f(r.page(n))
	_ = r.dirty.MarkAtomic(n) // n < pages: checked above
	l.Unlock()
	r.gate.RUnlock()
	r.writes.Add(1)
	return nil
}

// ReadPage copies page n into dst (PageSize bytes): a consistent snapshot,
// never a torn write.
func (r *Region) ReadPage(n uint64, dst []byte) error {
	if err := r.check(n, "read"); err != nil {
		return err
	}
	if len(dst) != r.pageSize {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("buffer of %d bytes, page size %d", len(dst), r.pageSize)}
	}
	l := &r.locks[n%stripes]
	l.Lock()
	copy(dst, r.page(n))
	l.Unlock()
	return nil
}

// SyncDirty ORs the pages written since the previous sync into dst and
// clears them (fetch-and-clear, word by word with atomic swaps:
// bitmap.Bitmap.SyncDirty). A dst shorter than livemig.WordsFor(PageCount())
// is an error wrapping bitmap.ErrShort.
func (r *Region) SyncDirty(dst []uint64) error {
	if err := r.dirty.SyncDirty(dst); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	return nil
}

// PeekDirty ORs the pages written since the previous sync into dst without
// clearing them; dst as for SyncDirty.
func (r *Region) PeekDirty(dst []uint64) error {
	if err := r.dirty.PeekDirty(dst); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	return nil
}

// DirtyCount returns how many pages are marked dirty now.
func (r *Region) DirtyCount() uint64 { return r.dirty.CountAtomic() }

// WritePage stores data as page n (destination side).
func (r *Region) WritePage(n uint64, data []byte) error {
	if err := r.check(n, "write"); err != nil {
		return err
	}
	if len(data) != r.pageSize {
		return &livemig.PageError{Op: "write", Page: n, Err: fmt.Errorf("%d bytes, page size %d", len(data), r.pageSize)}
	}
	l := &r.locks[n%stripes]
	l.Lock()
	copy(r.page(n), data)
	l.Unlock()
	return nil
}

// ZeroPage makes page n all zeros (destination side).
func (r *Region) ZeroPage(n uint64) error {
	if err := r.check(n, "zero"); err != nil {
		return err
	}
	l := &r.locks[n%stripes]
	l.Lock()
	clear(r.page(n))
	l.Unlock()
	return nil
}

// Pause stops the guest: it waits for writes under way to finish, and later
// writes block until Resume. Pausing a paused region does nothing.
func (r *Region) Pause(ctx context.Context) error {
	if r.paused.Load() {
		return nil
	}
	done := make(chan struct{})
	go func() { r.gate.Lock(); close(done) }()
	select {
	case <-done:
		r.paused.Store(true)
		return nil
	case <-ctx.Done():
		// The goroutine still takes the gate: release it once it has.
		go func() { <-done; r.gate.Unlock() }()
		return ctx.Err()
	}
}

// Resume lets writes go on. Resuming a running region does nothing.
func (r *Region) Resume(context.Context) error {
	if r.paused.CompareAndSwap(true, false) {
		r.gate.Unlock()
	}
	return nil
}

// Paused reports whether the region is paused.
func (r *Region) Paused() bool { return r.paused.Load() }

// SetState sets the opaque CPU/device state that SaveState returns (a copy
// is kept).
func (r *Region) SetState(s []byte) {
	r.stateMu.Lock()
	r.state = append(r.state[:0], s...)
	r.stateMu.Unlock()
}

// State returns a copy of the state last set or loaded.
func (r *Region) State() []byte {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	return append([]byte(nil), r.state...)
}

// SaveState appends the state to dst.
func (r *Region) SaveState(_ context.Context, dst []byte) ([]byte, error) {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	return append(dst, r.state...), nil
}

// LoadState keeps a copy of state.
func (r *Region) LoadState(_ context.Context, state []byte) error {
	r.SetState(state)
	return nil
}

var (
	_ livemig.Memory      = (*Region)(nil)
	_ livemig.DirtySource = (*Region)(nil)
	_ livemig.DirtyPeeker = (*Region)(nil)
	_ livemig.PageSink    = (*Region)(nil)
	_ livemig.PageReader  = (*Region)(nil)
	_ livemig.VM          = (*Region)(nil)
)

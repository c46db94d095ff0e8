//go:build linux

package faultmem

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/internal/uffd"
)

// Region is a destination memory whose missing pages fault. Its methods are
// safe for concurrent use, except as their docs say.
type Region struct {
	mem      []byte
	base     uintptr
	pageSize int
	pages    uint64
	fd       *uffd.FD
	onFault  func(uint64)
	log      *slog.Logger

	present   bitmap.Words // bit n: page n placed; set atomically, cleared only by Discard
	requested bitmap.Words // bit n: page n faulted and awaits placement; changed under mu
	missing   atomic.Uint64
	faults    atomic.Uint64
	requests  atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]time.Time // fault read time of each requested page
	lat     latencies

	done     chan struct{} // closed when the handler returns
	stopOnce sync.Once
	stopErr  error
	stopped  atomic.Bool

	life   sync.RWMutex // held shared by calls that touch mem, exclusively by Stop and Close
	closed atomic.Bool  // mem is unmapped; set under life
}

// New maps a region of pages pages of pageSize bytes (a power-of-two
// multiple of the host page size), every page missing, registers it with
// userfaultfd in MISSING mode and starts the handler goroutine. It returns
// an error matching livemig.ErrNotSupported where userfaultfd can't be used.
// Close releases everything.
func New(pageSize int, pages uint64, cfg Config) (*Region, error) {
	host := os.Getpagesize()
	if pageSize < host || pageSize&(pageSize-1) != 0 {
		return nil, fmt.Errorf("faultmem: page size %d is not a power-of-two multiple of the host page size %d", pageSize, host)
	}
	if pages == 0 || pages > (1<<46)/uint64(pageSize) {
		return nil, fmt.Errorf("faultmem: %d pages is not a usable size", pages)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fd, err := uffd.Open(0)
	if err != nil {
		return nil, fmt.Errorf("faultmem: %w", err)
	}
	size := int(pages) * pageSize
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("faultmem: map %d bytes: %w", size, err)
	}
	// Keep transparent huge pages out: placement is per page.
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	base := uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
	ioctls, err := fd.Register(base, uintptr(size), uffd.RegisterModeMissing)
	if err == nil && ioctls&(uffd.IoctlCopy|uffd.IoctlZeropage|uffd.IoctlWake) != uffd.IoctlCopy|uffd.IoctlZeropage|uffd.IoctlWake {
		err = fmt.Errorf("faultmem: registered range allows ioctls %#x, lacks COPY, ZEROPAGE or WAKE: %w", ioctls, livemig.ErrNotSupported)
	}
	if err != nil {
		fd.Close()
		unix.Munmap(mem)
		return nil, fmt.Errorf("faultmem: %w", err)
	}
	r := &Region{
		mem: mem, base: base, pageSize: pageSize, pages: pages, fd: fd,
		onFault: cfg.OnFault, log: log,
		present:   make([]uint64, livemig.WordsFor(pages)),
		requested: make([]uint64, livemig.WordsFor(pages)),
		pending:   make(map[uint64]time.Time),
		done:      make(chan struct{}),
	}
	r.missing.Store(pages)
	go r.serve()
	log.Debug("faultmem: region ready", "pages", pages, "page_size", pageSize, "features", fmt.Sprintf("%#x", fd.Features()))
	return r, nil
}

// serve is the handler goroutine: it reads fault messages until Stop.
func (r *Region) serve() {
	defer close(r.done)
	msgs := make([]uffd.Msg, 64)
	end := r.base + uintptr(len(r.mem))
	for {
		k, err := r.fd.Read(msgs)
		if err != nil {
			if !errors.Is(err, livemig.ErrClosed) {
				// Faulting goroutines now wait until Stop unregisters the range.
				r.log.Error("faultmem: fault handler stops", "err", err)
			}
			return
		}
		now := time.Now()
		for _, m := range msgs[:k] {
			if m.Event != uffd.EventPagefault {
				r.log.Warn("faultmem: unexpected userfaultfd event", "event", m.Event)
				continue
			}
			a := uintptr(m.Address)
			if a < r.base || a >= end {
				r.log.Warn("faultmem: fault outside the region", "addr", fmt.Sprintf("%#x", a))
				continue
			}
			r.faults.Add(1)
			n := uint64(a-r.base) / uint64(r.pageSize)
			if r.request(n, now) && r.onFault != nil {
				r.onFault(n)
			}
		}
	}
}

// request records a fault on page n read at time t and reports whether it is
// the first one while the page is missing.
//
// The requested bit and the present bit form a handshake with markPresent:
// request sets requested then loads present, markPresent sets present then
// loads requested, so at least one of them sees the other, and a fault
// time is neither lost nor left behind.
func (r *Region) request(n uint64, t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requested.SetAtomic(n)
	if r.present.TestAtomic(n) {
		// Placed since the fault: the placement woke the faulter. An
		// earlier fault's entry stays for markPresent, which has seen or
		// will see the requested bit that fault set, and records its
		// wait; deleting it here lost that wait when markPresent had set
		// present but not yet looked (FaultStats one short, now and then).
		if _, earlier := r.pending[n]; !earlier {
			r.requested.ClearAtomic(n)
		}
		return false
	}
	if _, dup := r.pending[n]; dup {
		return false
	}
	r.pending[n] = t
	r.requests.Add(1)
	return true
}

// markPresent records that page n is mapped.
func (r *Region) markPresent(n uint64) {
	if r.present.SetAtomic(n) {
		r.missing.Add(^uint64(0))
	}
	if !r.requested.TestAtomic(n) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	if t, ok := r.pending[n]; ok {
		delete(r.pending, n)
		r.lat.add(now.Sub(t))
	}
	r.requested.ClearAtomic(n)
	r.mu.Unlock()
}

// PageSize returns the page size.
func (r *Region) PageSize() int { return r.pageSize }

// PageCount returns the number of pages.
func (r *Region) PageCount() uint64 { return r.pages }

// Bytes returns the whole region for the guest's goroutines to read and
// write directly (with plain Go loads and stores: see the package doc).
// Touching a missing page blocks the goroutine until the page is placed.
// The slice is valid until Close; Bytes returns nil after Close.
func (r *Region) Bytes() []byte {
	if r.closed.Load() {
		return nil
	}
	return r.mem
}

// Present reports whether page n has been placed. Out-of-range pages are
// never present.
func (r *Region) Present(n uint64) bool {
	return n < r.pages && r.present.TestAtomic(n)
}

// Missing returns how many pages have not been placed yet.
func (r *Region) Missing() uint64 { return r.missing.Load() }

// Faults returns how many page faults the handler has read. One access can
// fault several times (a signal interrupts the wait and the access is
// retried), and several goroutines can fault on one page.
func (r *Region) Faults() uint64 { return r.faults.Load() }

// Requests returns how many times OnFault has been called: the number of
// distinct pages that faulted while missing.
func (r *Region) Requests() uint64 { return r.requests.Load() }

// FaultStats returns how many faults were served by a placement, and the
// median, 99th percentile and maximum of their service times: from the
// handler's reading of the fault to the end of the page's placement. The
// percentiles come from a uniform sample of 1024 service times.
func (r *Region) FaultStats() (n uint64, p50, p99, max time.Duration) {
	r.mu.Lock()
	l := r.lat
	r.mu.Unlock()
	return l.stats()
}

func (r *Region) check(n uint64, buf int, op string) error {
	if n >= r.pages {
		return &livemig.PageError{Op: op, Page: n, Err: livemig.ErrPageRange}
	}
	if buf >= 0 && buf != r.pageSize {
		return &livemig.PageError{Op: op, Page: n, Err: fmt.Errorf("faultmem: buffer of %d bytes, page size %d", buf, r.pageSize)}
	}
	return nil
}

// enter checks page n and a buffer of buf bytes (-1: none) for op, then
// takes r.life shared, failing once the region is stopped. On success the
// caller must r.life.RUnlock().
func (r *Region) enter(n uint64, buf int, op string) error {
	if err := r.check(n, buf, op); err != nil {
		return err
	}
	r.life.RLock()
	if r.stopped.Load() {
		r.life.RUnlock()
		return &livemig.PageError{Op: op, Page: n, Err: fmt.Errorf("faultmem: %w", livemig.ErrClosed)}
	}
	return nil
}

func (r *Region) page(n uint64) []byte {
	off := int(n) * r.pageSize
	return r.mem[off : off+r.pageSize : off+r.pageSize]
}

func (r *Region) addr(n uint64) uintptr { return r.base + uintptr(n)*uintptr(r.pageSize) }

// place maps page n from data (nil for zeros) if it is missing, and
// reports whether this call mapped it; with overwrite, a present page is
// overwritten with a plain copy instead (placed is then false). The caller
// has entered.
func (r *Region) place(n uint64, data []byte, overwrite bool, op string) (bool, error) {
	if !r.Present(n) {
		var err error
		if data == nil {
			err = r.fd.ZeroPage(r.addr(n), uintptr(r.pageSize), 0)
		} else {
			err = r.fd.Copy(r.addr(n), data, 0)
		}
		switch {
		case err == nil:
			r.markPresent(n)
			return true, nil
		case !errors.Is(err, uffd.ErrExist):
			return false, &livemig.PageError{Op: op, Page: n, Err: err}
		}
		// Another placer won the race; its page stands.
		r.markPresent(n)
	}
	if overwrite {
		if data == nil {
			clear(r.page(n))
		} else {
			copy(r.page(n), data)
		}
	}
	return false, nil
}

// Place maps data (exactly PageSize bytes, owned by the caller) as page n if
// the page is still missing, waking the goroutines waiting on it, and
// reports whether it did. A present page is left alone: after the guest has
// resumed it belongs to the guest, and a copy arriving now is stale. Any
// number of goroutines may place the same page at once; exactly one of them
// gets placed == true.
func (r *Region) Place(n uint64, data []byte) (placed bool, err error) {
	if err := r.enter(n, len(data), "place"); err != nil {
		return false, err
	}
	defer r.life.RUnlock()
	return r.place(n, data, false, "place")
}

// PlaceZero is Place for an all-zero page, mapped with UFFDIO_ZEROPAGE.
func (r *Region) PlaceZero(n uint64) (placed bool, err error) {
	if err := r.enter(n, -1, "place"); err != nil {
		return false, err
	}
	defer r.life.RUnlock()
	return r.place(n, nil, false, "place")
}

// WritePage stores data (exactly PageSize bytes, owned by the caller) as
// page n: it places a missing page like Place, and overwrites a present one
// with a plain copy, so that the newest copy wins. Overwriting is meant for
// the phase before the guest resumes; afterwards use Place (see the package
// doc). It implements livemig.PageSink, whose contract rules out two calls
// for the same page at once.
func (r *Region) WritePage(n uint64, data []byte) error {
	if err := r.enter(n, len(data), "write"); err != nil {
		return err
	}
	defer r.life.RUnlock()
	_, err := r.place(n, data, true, "write")
	return err
}

// ZeroPage makes page n all zeros: it places a missing page with
// UFFDIO_ZEROPAGE and clears a present one (see WritePage).
func (r *Region) ZeroPage(n uint64) error {
	if err := r.enter(n, -1, "zero"); err != nil {
		return err
	}
	defer r.life.RUnlock()
	_, err := r.place(n, nil, true, "zero")
	return err
}

// Discard makes page n missing again: its contents are dropped
// (MADV_DONTNEED) and the next access faults, as on a page never placed.
// It is for the phase before the guest resumes, when a hybrid migration
// learns that the copy it holds went stale at the source (QEMU's postcopy
// discard): no goroutine may touch, place or write page n meanwhile.
// Discarding a missing page does nothing.
func (r *Region) Discard(n uint64) error {
	if err := r.enter(n, -1, "discard"); err != nil {
		return err
	}
	defer r.life.RUnlock()
	if !r.present.TestAtomic(n) {
		return nil
	}
	if err := unix.Madvise(r.page(n), unix.MADV_DONTNEED); err != nil {
		return &livemig.PageError{Op: "discard", Page: n, Err: fmt.Errorf("faultmem: madvise: %w", err)}
	}
	if r.present.ClearAtomic(n) {
		r.missing.Add(1)
	}
	return nil
}

// ReadPage copies present page n into dst (PageSize bytes, owned by the
// caller). A missing page is an error matching ErrMissing, returned at once:
// ReadPage never waits for a page. It works until Close, Stop included.
func (r *Region) ReadPage(n uint64, dst []byte) error {
	if err := r.check(n, len(dst), "read"); err != nil {
		return err
	}
	r.life.RLock()
	defer r.life.RUnlock()
	if r.closed.Load() {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("faultmem: %w", livemig.ErrClosed)}
	}
	if !r.Present(n) {
		return &livemig.PageError{Op: "read", Page: n, Err: ErrMissing}
	}
	copy(dst, r.page(n))
	return nil
}

// Stop ends fault service: it unregisters the region, which wakes every
// goroutine blocked on a missing page, stops the handler goroutine and
// closes the userfaultfd. From then on the region is ordinary memory where
// missing pages read as zeros and are not reported; Place, WritePage and
// the like return an error matching livemig.ErrClosed, while ReadPage,
// Bytes and the counters keep working until Close. Stop must not be called
// from OnFault. It is idempotent.
func (r *Region) Stop() error {
	r.stopOnce.Do(func() {
		r.life.Lock() // wait for placements under way
		r.stopped.Store(true)
		r.life.Unlock()
		err := r.fd.Unregister(r.base, uintptr(len(r.mem)))
		if cerr := r.fd.Close(); err == nil {
			err = cerr
		}
		<-r.done
		if err != nil {
			r.stopErr = fmt.Errorf("faultmem: stop: %w", err)
		}
		r.log.Debug("faultmem: stopped", "faults", r.faults.Load(), "missing", r.missing.Load())
	})
	return r.stopErr
}

// Close stops fault service (see Stop) and unmaps the region. The caller
// must first make sure that no goroutine touches Bytes() any more: a
// goroutine blocked on a missing page is released by Stop (it reads
// zeros), so the safe order is Stop, join the guest goroutines, Close. A
// goroutine that touches the region after Close crashes the process. Close
// is idempotent.
func (r *Region) Close() error {
	err := r.Stop()
	r.life.Lock()
	defer r.life.Unlock()
	if r.closed.Load() {
		return err
	}
	if uerr := unix.Munmap(r.mem); uerr != nil && err == nil {
		err = fmt.Errorf("faultmem: unmap: %w", uerr)
	}
	r.closed.Store(true)
	return err
}

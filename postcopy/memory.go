package postcopy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// Memory is the destination's memory in a post-copy migration: a
// livemig.PageSink for the pre-copy phase of a hybrid migration, while the
// guest is not running, and placement of missing pages once it runs.
//
// WritePage and ZeroPage store a page whether or not it is present (newest
// wins); the engine calls them only before the guest resumes. Place stores
// data (PageSize bytes, owned by the caller, not retained) as page n only if
// page n is missing, atomically with respect to the guest: a guest thread
// blocked on page n sees either nothing or the whole page, and is woken.
// It reports whether it placed the page; false means the page was present
// (placed before, or by a concurrent Place), which is not an error: once
// the guest runs, a present page belongs to the guest and a later copy is
// dropped. PlaceZero is Place of a page of zeros. Present reports whether
// page n is present. Place, PlaceZero and Present may be called from several
// goroutines at once, for the same page too. Page numbers past the memory's
// page count are errors wrapping livemig.ErrPageRange (Present returns
// false).
//
// faultmem.Region (userfaultfd) and HeapMemory implement it.
type Memory interface {
	livemig.PageSink
	Place(n uint64, data []byte) (placed bool, err error)
	PlaceZero(n uint64) (placed bool, err error)
	Present(n uint64) bool
}

// Discarder is an optional extension of Memory that a hybrid migration
// needs: Discard makes page n missing again (its copy went stale at the
// source), so that the guest faults on it instead of running on an old copy.
// It is called only before the guest resumes, from one goroutine.
type Discarder interface {
	Discard(n uint64) error
}

// FaultSource tells the destination which missing pages the guest touched.
//
// NextFault blocks until a fault is pending or ctx is done (then it returns
// ctx.Err()), and returns the page and when the guest began to wait for it.
// It is called from one goroutine, the engine's requester. A simulated
// destination can implement it in virtual time; FaultQueue implements it for
// real memories that report faults through a callback (faultmem's
// Config.OnFault).
type FaultSource interface {
	NextFault(ctx context.Context) (page uint64, at time.Time, err error)
}

// FaultQueue is a FaultSource fed by a callback: pass its Fault method as
// the memory's fault hook. A page already pending is not queued twice, so
// the queue holds at most one entry per page. The zero value is not usable:
// call NewFaultQueue.
//
// From the guest's resume until Receive returns, a FaultQueue given as
// Destination.Faults is bypassed: Fault hands each fault to the engine on
// the caller's goroutine, which sends the request on the return path
// before Fault returns, as QEMU's fault thread does. With faultmem, the
// request then leaves from the handler goroutine that read the fault, and
// the guest's wait no longer includes waking the engine's requester
// goroutine, which can be put off for tens of microseconds (the scheduler
// backs off before stealing a goroutine just readied on a running P). One
// engine at a time may use a queue.
type FaultQueue struct {
	clock   livemig.Clock
	pages   uint64
	mu      sync.Mutex
	pending bitmap.Words // queued pages
	q       []fault
	head    int
	signal  chan struct{} // holds a token while q is not empty
	dropped atomic.Uint64

	dmu    sync.RWMutex                    // shared while direct runs, exclusive to change it
	direct func(page uint64, at time.Time) // the engine's fault handler, or nil; under dmu
}

type fault struct {
	page uint64
	at   time.Time
}

// NewFaultQueue returns a queue for a guest of pages pages that stamps
// faults with clock (the wall clock if nil; use the engine's Clock).
func NewFaultQueue(pages uint64, clock livemig.Clock) *FaultQueue {
	if clock == nil {
		clock = livemig.WallClock{}
	}
	return &FaultQueue{
		clock: clock, pages: pages,
		pending: make([]uint64, livemig.WordsFor(pages)),
		signal:  make(chan struct{}, 1),
	}
}

// Fault records that the guest waits on page n. It may be called from any
// goroutine; a page past the guest is counted in Dropped and ignored.
// Alone, it never blocks; while an engine serves the queue directly (see
// FaultQueue), it returns once the engine has sent the request, or given
// up on it (the link is cut: the engine asks again once reconnected).
func (f *FaultQueue) Fault(n uint64) {
	if n >= f.pages {
		f.dropped.Add(1)
		return
	}
	at := f.clock.Now()
	f.dmu.RLock()
	if h := f.direct; h != nil {
		h(n, at)
		f.dmu.RUnlock()
		return
	}
	f.dmu.RUnlock()
	f.mu.Lock()
	if !f.pending.Set(n) {
		f.mu.Unlock()
		return // already queued
	}
	f.q = append(f.q, fault{n, at})
	f.mu.Unlock()
	select {
	case f.signal <- struct{}{}:
	default:
	}
}

// serveDirect makes Fault call h (from Fault's caller) instead of queueing;
// h == nil restores the queue, once the calls of the old h under way have
// returned.
func (f *FaultQueue) serveDirect(h func(page uint64, at time.Time)) {
	f.dmu.Lock()
	f.direct = h
	f.dmu.Unlock()
}

// Dropped returns how many faults named a page past the guest.
func (f *FaultQueue) Dropped() uint64 { return f.dropped.Load() }

// NextFault returns the oldest pending fault; see FaultSource.
func (f *FaultQueue) NextFault(ctx context.Context) (uint64, time.Time, error) {
	for {
		f.mu.Lock()
		if f.head < len(f.q) {
			x := f.q[f.head]
			f.head++
			if f.head == len(f.q) {
				f.q, f.head = f.q[:0], 0
			} else if f.head > 1024 && f.head*2 > len(f.q) {
				f.q, f.head = append(f.q[:0], f.q[f.head:]...), 0
			}
			f.pending.Clear(x.page)
			more := f.head < len(f.q)
			f.mu.Unlock()
			if more {
				select {
				case f.signal <- struct{}{}:
				default:
				}
			}
			return x.page, x.at, nil
		}
		f.mu.Unlock()
		select {
		case <-f.signal:
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		}
	}
}

// HeapMemory is a Memory in ordinary Go memory whose guest accesses block on
// missing pages, as userfaultfd makes them do: a stand-in for faultmem on
// platforms without userfaultfd and for fast tests. Guest goroutines go
// through Access; the engine through the Memory methods. It implements
// Memory, Discarder and livemig.PageReader, and is safe for concurrent use.
type HeapMemory struct {
	pageSize int
	pages    uint64
	mem      []byte
	onFault  func(uint64)

	mu      sync.Mutex
	present bitmap.Words // atomic loads outside mu
	waiters map[uint64]chan struct{}
	locks   [256]sync.Mutex // guest access and ReadPage, by page
	faults  atomic.Uint64
}

// NewHeapMemory returns a memory of pages missing pages of pageSize bytes.
// onFault, if not nil, is called (from the faulting goroutine, without locks
// held) each time an access finds its page missing.
func NewHeapMemory(pageSize int, pages uint64, onFault func(page uint64)) (*HeapMemory, error) {
	if pageSize <= 0 || pages == 0 || pages > (1<<40)/uint64(pageSize) {
		return nil, fmt.Errorf("postcopy: heap memory of %d pages of %d bytes", pages, pageSize)
	}
	return &HeapMemory{
		pageSize: pageSize, pages: pages, mem: make([]byte, int(pages)*pageSize), onFault: onFault,
		present: make([]uint64, livemig.WordsFor(pages)),
		waiters: make(map[uint64]chan struct{}),
	}, nil
}

// PageSize returns the page size.
func (h *HeapMemory) PageSize() int { return h.pageSize }

// PageCount returns the number of pages.
func (h *HeapMemory) PageCount() uint64 { return h.pages }

// Faults returns how many accesses found their page missing.
func (h *HeapMemory) Faults() uint64 { return h.faults.Load() }

// Bytes returns the whole memory. Reading it is safe only once no guest
// goroutine and no migration use it.
func (h *HeapMemory) Bytes() []byte { return h.mem }

func (h *HeapMemory) page(n uint64) []byte {
	off := int(n) * h.pageSize
	return h.mem[off : off+h.pageSize : off+h.pageSize]
}

func (h *HeapMemory) check(n uint64, op string) error {
	if n >= h.pages {
		return &livemig.PageError{Op: op, Page: n, Err: livemig.ErrPageRange}
	}
	return nil
}

// Present reports whether page n is present.
func (h *HeapMemory) Present(n uint64) bool {
	return n < h.pages && h.present.TestAtomic(n)
}

// Access is a guest access to page n: it waits until the page is present
// (reporting the fault first), then calls f with the page's bytes under the
// page's lock. f must not retain the slice. It returns ctx.Err() if ctx ends
// while it waits.
func (h *HeapMemory) Access(ctx context.Context, n uint64, f func(page []byte)) error {
	if err := h.check(n, "access"); err != nil {
		return err
	}
	if !h.Present(n) {
		h.mu.Lock()
		if !h.Present(n) {
			ch := h.waiters[n]
			if ch == nil {
				ch = make(chan struct{})
				h.waiters[n] = ch
			}
			h.mu.Unlock()
			h.faults.Add(1)
			if h.onFault != nil {
				h.onFault(n)
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
		} else {
			h.mu.Unlock()
		}
	}
	l := &h.locks[n%uint64(len(h.locks))]
	l.Lock()
	f(h.page(n))
	l.Unlock()
	return nil
}

// place stores data (nil: zeros) as page n if missing or if overwrite.
func (h *HeapMemory) place(n uint64, data []byte, overwrite bool) (bool, error) {
	if err := h.check(n, "place"); err != nil {
		return false, err
	}
	if data != nil && len(data) != h.pageSize {
		return false, &livemig.PageError{Op: "place", Page: n, Err: fmt.Errorf("%d bytes, page size %d", len(data), h.pageSize)}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.Present(n) && !overwrite {
		return false, nil
	}
	l := &h.locks[n%uint64(len(h.locks))]
	l.Lock()
	if data == nil {
		clear(h.page(n))
	} else {
		copy(h.page(n), data)
	}
	l.Unlock()
	h.present.SetAtomic(n)
	if ch := h.waiters[n]; ch != nil {
		close(ch)
		delete(h.waiters, n)
	}
	return true, nil
}

// Place stores data as page n if it is missing; see Memory.
func (h *HeapMemory) Place(n uint64, data []byte) (bool, error) {
	if data == nil {
		return false, &livemig.PageError{Op: "place", Page: n, Err: errors.New("no data")}
	}
	return h.place(n, data, false)
}

// PlaceZero makes page n zeros if it is missing; see Memory.
func (h *HeapMemory) PlaceZero(n uint64) (bool, error) { return h.place(n, nil, false) }

// WritePage stores data as page n, present or not.
func (h *HeapMemory) WritePage(n uint64, data []byte) error {
	if data == nil {
		data = []byte{}
	}
	_, err := h.place(n, data, true)
	return err
}

// ZeroPage makes page n zeros, present or not.
func (h *HeapMemory) ZeroPage(n uint64) error {
	_, err := h.place(n, nil, true)
	return err
}

// Discard makes page n missing again (its bytes become zeros).
func (h *HeapMemory) Discard(n uint64) error {
	if err := h.check(n, "discard"); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l := &h.locks[n%uint64(len(h.locks))]
	l.Lock()
	clear(h.page(n))
	l.Unlock()
	h.present.ClearAtomic(n)
	return nil
}

// ReadPage copies present page n into dst; a missing page is an error, not a
// wait.
func (h *HeapMemory) ReadPage(n uint64, dst []byte) error {
	if err := h.check(n, "read"); err != nil {
		return err
	}
	if len(dst) != h.pageSize {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("buffer of %d bytes, page size %d", len(dst), h.pageSize)}
	}
	if !h.Present(n) {
		return &livemig.PageError{Op: "read", Page: n, Err: errMissing}
	}
	l := &h.locks[n%uint64(len(h.locks))]
	l.Lock()
	copy(dst, h.page(n))
	l.Unlock()
	return nil
}

var errMissing = errors.New("postcopy: page missing")

var (
	_ Memory             = (*HeapMemory)(nil)
	_ Discarder          = (*HeapMemory)(nil)
	_ livemig.PageReader = (*HeapMemory)(nil)
	_ FaultSource        = (*FaultQueue)(nil)
)

package postcopy

import (
	"slices"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// Demand is the post-copy destination's demand-paging decisions and
// figures, pure like the source's Core: which pages it holds, which of the
// guest's faults become requests (the first on a page not held; a page asked
// for is not asked again until a reconnection), when a wait ends (the page
// is placed), and the fault figures of the report. Receive keeps one under
// a lock; package scenario's model of the destination keeps one for its
// vCPU, so both count faults and waits the same way.
//
// Not safe for concurrent use.
type Demand struct {
	pages uint64
	held  *bitmap.Bitmap
	heldN uint64
	asked *bitmap.Bitmap // pages with a fault waiting
	// waiting are the faults that wait, each a page and when it began: as
	// many as the guest has threads blocked, so a short list, scanned when
	// a page that has waiters lands, and reused without allocating.
	waiting []waiter
	faults  uint64
	waits   []time.Duration
	total   time.Duration
	resumed bool
	lastAt  time.Time // when the last missing page was placed, after the resume
}

// NewDemand returns the Demand of a guest of pages pages, none held.
func NewDemand(pages uint64) *Demand {
	return &Demand{pages: pages, held: bitmap.New(pages), asked: bitmap.New(pages)}
}

// waiter is a fault that waits: on page, since at.
type waiter struct {
	page uint64
	at   time.Time
}

// Fault records that the guest began, at time at, to wait on page n, and
// says whether to ask the source for it: the page is not held and no
// earlier fault on it is waiting. A fault on a page held (placed meanwhile)
// ends at now. A page past the guest's end is ignored.
func (d *Demand) Fault(n uint64, at, now time.Time) (ask bool) {
	if n >= d.pages {
		return false
	}
	d.faults++
	if d.held.Test(n) {
		d.wait(now.Sub(at))
		return false
	}
	first := !d.asked.Test(n)
	d.waiting = append(d.waiting, waiter{n, at})
	_ = d.asked.Set(n)
	return first
}

func (d *Demand) wait(w time.Duration) {
	w = max(w, 0)
	d.waits = append(d.waits, w)
	d.total += w
}

// Placed records that page n holds a valid copy from now on, ending the
// faults waiting on it; it says whether the page was missing.
func (d *Demand) Placed(n uint64, now time.Time) (missing bool) {
	if n >= d.pages || d.held.Test(n) {
		return false
	}
	_ = d.held.Set(n)
	if d.heldN++; d.heldN == d.pages && d.resumed {
		d.lastAt = now
	}
	if d.asked.Test(n) {
		_ = d.asked.Clear(n)
		d.waiting = slices.DeleteFunc(d.waiting, func(w waiter) bool {
			if w.page != n {
				return false
			}
			d.wait(now.Sub(w.at))
			return true
		})
	}
	return true
}

// Timed says whether Placed(n, now) needs the time: placing page n ends a
// wait, or the last missing page after the resume. Otherwise a caller on
// the per-page path may pass the zero time and read no clock.
func (d *Demand) Timed(n uint64) bool {
	if n >= d.pages || d.held.Test(n) {
		return false
	}
	return d.asked.Test(n) || (d.resumed && d.heldN+1 == d.pages)
}

// Discard makes page n missing again (a stale copy, before the resume).
func (d *Demand) Discard(n uint64) {
	if n < d.pages && d.held.Test(n) {
		_ = d.held.Clear(n)
		d.heldN--
	}
}

// Resumed says the guest runs from now on: the time the last page lands is
// measured from here.
func (d *Demand) Resumed(now time.Time) {
	d.resumed = true
	if d.heldN == d.pages {
		d.lastAt = now
	}
}

// Held says whether page n holds a valid copy; HeldCount how many do.
func (d *Demand) Held(n uint64) bool { return n < d.pages && d.held.Test(n) }

// HeldCount is how many pages hold a valid copy.
func (d *Demand) HeldCount() uint64 { return d.heldN }

// AppendHeld appends the held pages' bitmap (KVM layout) to dst.
func (d *Demand) AppendHeld(dst []uint64) []uint64 { return append(dst, d.held.Words()...) }

// AppendWaiting appends to dst, ascending, the pages faults wait on: asked
// for again after a reconnection.
func (d *Demand) AppendWaiting(dst []uint64) []uint64 {
	from := len(dst)
	for _, w := range d.waiting {
		dst = append(dst, w.page)
	}
	slices.Sort(dst[from:])
	return dst[:from+len(slices.Compact(dst[from:]))]
}

// LastPage is when the last missing page was placed after the resume (zero:
// not yet).
func (d *Demand) LastPage() time.Time { return d.lastAt }

// Fill writes the fault figures into pc: the faults, the waits' 50th and
// 99th percentiles (nearest rank), maximum and total.
func (d *Demand) Fill(pc *livemig.PostCopyStats) {
	pc.DemandFaults, pc.WaitTotal = d.faults, d.total
	pc.FaultP50, pc.FaultP99, pc.FaultMax = 0, 0, 0
	if len(d.waits) == 0 {
		return
	}
	s := slices.Clone(d.waits)
	slices.Sort(s)
	rank := func(p int) time.Duration {
		i := (len(s)*p + 99) / 100 // ceil(n*p/100), 1-based
		return s[max(i, 1)-1]
	}
	pc.FaultP50, pc.FaultP99, pc.FaultMax = rank(50), rank(99), s[len(s)-1]
}

package bitmap

import (
	"math/bits"
	"sync/atomic"
)

// Words is a bitmap in KVM's layout held as a plain slice, the form in which
// engines keep their dirty, sent and present sets and in which
// livemig.DirtySource.SyncDirty fills them: bit i%64 of word i/64 is page i.
// Converting a []uint64 to Words copies nothing, so Words(s).Test(n) reads
// s itself. It is the bit arithmetic of this package, which Bitmap's
// methods use too.
//
// A Words knows no page count, only its length: Test and TestAtomic report
// false for a page past its end, and NextSet stops there, but Set, Clear
// and their atomic forms index the slice, so a page past its end panics
// (index out of range) as the hand-written s[n/64] |= ... did. Check pages
// against the guest's page count first, or use a Bitmap, whose methods do.
//
// The plain methods need the caller to exclude concurrent writers; the
// Atomic ones use sync/atomic and may run concurrently with each other on
// the same words.
type Words []uint64

// Test reports whether page is set; it is false for a page past the end.
func (w Words) Test(page uint64) bool {
	i := page / 64
	return i < uint64(len(w)) && w[i]&(1<<(page%64)) != 0
}

// Set sets page and reports whether it was clear before.
func (w Words) Set(page uint64) bool {
	p, bit := &w[page/64], uint64(1)<<(page%64)
	old := *p
	*p = old | bit
	return old&bit == 0
}

// Clear clears page and reports whether it was set before.
func (w Words) Clear(page uint64) bool {
	p, bit := &w[page/64], uint64(1)<<(page%64)
	old := *p
	*p = old &^ bit
	return old&bit != 0
}

// TestAtomic is Test with an atomic load.
func (w Words) TestAtomic(page uint64) bool {
	i := page / 64
	return i < uint64(len(w)) && atomic.LoadUint64(&w[i])&(1<<(page%64)) != 0
}

// SetAtomic sets page atomically and reports whether this call set it: of
// several goroutines setting one page at once, exactly one gets true.
func (w Words) SetAtomic(page uint64) bool {
	bit := uint64(1) << (page % 64)
	return atomic.OrUint64(&w[page/64], bit)&bit == 0
}

// ClearAtomic clears page atomically and reports whether this call cleared
// it.
func (w Words) ClearAtomic(page uint64) bool {
	bit := uint64(1) << (page % 64)
	return atomic.AndUint64(&w[page/64], ^bit)&bit != 0
}

// Count returns how many bits are set (CountWords).
func (w Words) Count() uint64 { return CountWords(w) }

// NextSet returns the first set page at or after start, and false if there
// is none before the end of the words. Words(dirty).NextSet(pages) finds a
// bit a dirty log set past the guest's last page.
func (w Words) NextSet(start uint64) (uint64, bool) {
	i := start / 64
	if i >= uint64(len(w)) {
		return 0, false
	}
	x := w[i] &^ (1<<(start%64) - 1)
	for x == 0 {
		if i++; i == uint64(len(w)) {
			return 0, false
		}
		x = w[i]
	}
	return i*64 + uint64(bits.TrailingZeros64(x)), true
}

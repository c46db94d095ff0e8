package bitmap

import (
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/livemig/livemig"
)

// The methods in this file access the words with sync/atomic and may be
// called from any number of goroutines at once, but only with each other:
// while one of them may be running, no plain method (Set, Clear, ClearAll,
// Union, NextSetMany, Count, ...) may be called on the same bitmap, nor may
// Words() be read or written.

var (
	_ livemig.DirtySource = (*Bitmap)(nil)
	_ livemig.DirtyPeeker = (*Bitmap)(nil)
)

// MarkAtomic marks page; any number of goroutines may call it at once, with
// each other and with DrainInto and SnapshotInto. A writer that writes a
// page and then marks it is guaranteed that the mark is reported by a
// DrainInto that starts after MarkAtomic returns (or by an earlier one that
// raced with it): marks are never lost. It returns a *livemig.PageError
// wrapping livemig.ErrPageRange if page >= Len().
func (b *Bitmap) MarkAtomic(page uint64) error {
	if page >= b.pages {
		return rangeError("mark", page)
	}
	// A page written again before it is drained is already marked: a plain
	// load keeps the cache line shared between writers instead of bouncing
	// it with a locked write. The drain that clears the bit comes after this
	// load in the words' modification order, so this mark is not lost.
	if w := Words(b.words); !w.TestAtomic(page) {
		w.SetAtomic(page)
	}
	return nil
}

// TestAtomic is Test for use while writers call MarkAtomic.
func (b *Bitmap) TestAtomic(page uint64) bool {
	return page < b.pages && Words(b.words).TestAtomic(page)
}

// CountAtomic is Count for use while writers call MarkAtomic: it loads each
// word atomically, so a page marked meanwhile may or may not be counted.
func (b *Bitmap) CountAtomic() uint64 {
	var n uint64
	for i := range b.words {
		w := atomic.LoadUint64(&b.words[i])
		if i == len(b.words)-1 {
			w &= b.tail
		}
		n += uint64(bits.OnesCount64(w))
	}
	return n
}

func (b *Bitmap) checkDst(dst []uint64) error {
	if len(dst) < len(b.words) {
		return fmt.Errorf("%w: %d pages need %d words, got %d", ErrShort, b.pages, len(b.words), len(dst))
	}
	return nil
}

// DrainInto moves every marked page into dst: word by word, it atomically
// swaps each nonzero word of b with 0 and ORs it into dst (fetch-and-clear).
// It returns n, the number of pages it moved out of b (pages already set in
// dst are counted if they were also marked in b). Zero words are skipped with
// an atomic load, so a sparse bitmap drains at the speed of reading memory.
//
// dst is a bitmap in KVM's layout of at least livemig.WordsFor(Len())
// words, owned by the caller (typically another Bitmap's Words()); it is
// written with plain stores, so no other goroutine may use it meanwhile, and
// it must not be b's own words. Bits of dst already set stay set. If dst is
// too short DrainInto moves nothing and returns an error wrapping ErrShort.
//
// DrainInto may run while writers call MarkAtomic: a page marked before
// DrainInto starts is moved by it; a page marked while it runs is moved by it
// or stays marked for the next one.
func (b *Bitmap) DrainInto(dst []uint64) (n uint64, err error) {
	if err := b.checkDst(dst); err != nil {
		return 0, err
	}
	words := b.words
	if len(words) == 0 {
		return 0, nil
	}
	dst = dst[:len(words)]
	last := len(words) - 1
	// Words go by blocks of eight, a cache line: a block of zeros costs
	// eight loads and one branch; in any other block every word is swapped,
	// which at 1 % density is a third faster than a branch per word.
	i := 0
	for ; i+8 <= last; i += 8 {
		blk := (*[8]uint64)(words[i : i+8])
		if loadOr8(blk) == 0 {
			continue
		}
		d := (*[8]uint64)(dst[i : i+8])
		for j := range blk {
			w := atomic.SwapUint64(&blk[j], 0)
			d[j] |= w
			n += uint64(bits.OnesCount64(w))
		}
	}
	for ; i <= last; i++ {
		if atomic.LoadUint64(&words[i]) == 0 {
			continue
		}
		w := atomic.SwapUint64(&words[i], 0)
		if i == last {
			w &= b.tail
		}
		dst[i] |= w
		n += uint64(bits.OnesCount64(w))
	}
	return n, nil
}

func loadOr8(blk *[8]uint64) uint64 {
	return atomic.LoadUint64(&blk[0]) | atomic.LoadUint64(&blk[1]) |
		atomic.LoadUint64(&blk[2]) | atomic.LoadUint64(&blk[3]) |
		atomic.LoadUint64(&blk[4]) | atomic.LoadUint64(&blk[5]) |
		atomic.LoadUint64(&blk[6]) | atomic.LoadUint64(&blk[7])
}

// SnapshotInto ORs every marked page into dst without unmarking it (a peek)
// and returns how many marked pages it read. dst follows the rules of
// DrainInto. Pages marked while it runs may or may not be included.
func (b *Bitmap) SnapshotInto(dst []uint64) (n uint64, err error) {
	if err := b.checkDst(dst); err != nil {
		return 0, err
	}
	words := b.words
	if len(words) == 0 {
		return 0, nil
	}
	dst = dst[:len(words)]
	last := len(words) - 1
	i := 0
	for ; i+8 <= last; i += 8 {
		blk := (*[8]uint64)(words[i : i+8])
		if loadOr8(blk) == 0 {
			continue
		}
		d := (*[8]uint64)(dst[i : i+8])
		for j := range blk {
			w := atomic.LoadUint64(&blk[j])
			d[j] |= w
			n += uint64(bits.OnesCount64(w))
		}
	}
	for ; i <= last; i++ {
		w := atomic.LoadUint64(&words[i])
		if i == last {
			w &= b.tail
		}
		dst[i] |= w
		n += uint64(bits.OnesCount64(w))
	}
	return n, nil
}

// SyncDirty makes a Bitmap marked with MarkAtomic a livemig.DirtySource (a
// software dirty log): it is DrainInto without the count.
func (b *Bitmap) SyncDirty(dst []uint64) error {
	_, err := b.DrainInto(dst)
	return err
}

// PeekDirty makes a Bitmap a livemig.DirtyPeeker: it is SnapshotInto
// without the count.
func (b *Bitmap) PeekDirty(dst []uint64) error {
	_, err := b.SnapshotInto(dst)
	return err
}

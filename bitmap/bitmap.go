package bitmap

import (
	"errors"
	"fmt"
	"iter"
	"math"
	"math/bits"

	"github.com/bits-and-blooms/bitset"

	"github.com/livemig/livemig"
)

// MaxPages is the largest page count a Bitmap can hold on this platform: its
// word count must fit in an int and its bit count in a uint.
const MaxPages uint64 = math.MaxInt

// Errors returned by this package. Match them with errors.Is.
var (
	// ErrShort: a word slice is shorter than the page count needs.
	ErrShort = errors.New("bitmap: word slice too short")
	// ErrTooLarge: a page count exceeds MaxPages.
	ErrTooLarge = errors.New("bitmap: page count too large")
)

// Bitmap is a fixed-size set of page numbers in [0, Len()) stored in KVM's
// dirty-log layout (see the package doc). Its words are allocated once, by
// New, or adopted by FromWords, and never reallocated.
//
// The zero value is an empty bitmap of 0 pages. A Bitmap must not be copied
// after first use (copies would share words but not be told apart).
// See the package doc for which methods may run concurrently.
type Bitmap struct {
	bs    *bitset.BitSet // length pages, set aliases words
	words []uint64       // exactly wordsFor(pages) words
	pages uint64
	tail  uint64 // mask of the valid bits of the last word; all ones if pages%64 == 0
}

// wordsFor is livemig.WordsFor without overflow for pages near 2^64.
func wordsFor(pages uint64) uint64 { return pages/64 + (pages%64+63)/64 }

func tailMask(pages uint64) uint64 {
	if r := pages % 64; r != 0 {
		return 1<<r - 1
	}
	return math.MaxUint64
}

// New returns an empty bitmap of pages pages, backed by a fresh slice of
// livemig.WordsFor(pages) words. It panics, as make does for a negative
// length, if pages exceeds MaxPages; use FromWords to get an error instead.
func New(pages uint64) *Bitmap {
	if pages > MaxPages {
		panic(fmt.Sprintf("bitmap.New: %d pages exceeds MaxPages", pages))
	}
	return adopt(make([]uint64, wordsFor(pages)), pages)
}

// FromWords adopts words, a bitmap in KVM's layout, as a Bitmap of pages
// pages without copying: the Bitmap and the caller share the words from then
// on, and a write through either is seen by the other. Only the first
// livemig.WordsFor(pages) words are used. FromWords clears the bits of the
// last used word past the page count (it writes to words). It returns an
// error wrapping ErrShort if words is too short and ErrTooLarge if pages
// exceeds MaxPages.
func FromWords(words []uint64, pages uint64) (*Bitmap, error) {
	if pages > MaxPages {
		return nil, fmt.Errorf("%w: %d pages", ErrTooLarge, pages)
	}
	need := wordsFor(pages)
	if uint64(len(words)) < need {
		return nil, fmt.Errorf("%w: %d pages need %d words, got %d", ErrShort, pages, need, len(words))
	}
	b := adopt(words[:need:need], pages)
	if need > 0 {
		b.words[need-1] &= b.tail
	}
	return b, nil
}

func adopt(words []uint64, pages uint64) *Bitmap {
	return &Bitmap{
		bs:    bitset.FromWithLength(uint(pages), words),
		words: words,
		pages: pages,
		tail:  tailMask(pages),
	}
}

// Len returns the number of pages the bitmap holds.
func (b *Bitmap) Len() uint64 { return b.pages }

// Words returns the backing words, exactly livemig.WordsFor(Len()) of them,
// without copying: the slice aliases the bitmap, so it can be handed to
// DirtySource.SyncDirty or KVM_GET_DIRTY_LOG to fill the bitmap in place.
// Bits written past the page count are ignored by every method. The caller
// must not write to the slice while another goroutine uses the bitmap.
func (b *Bitmap) Words() []uint64 { return b.words }

// BitSet returns the underlying bitset, whose length is Len() and whose words
// are Words(). It is shared, not copied. The caller must not grow it (Set a
// bit past Len(), InPlaceUnion with a longer set, ...): bitset would then
// reallocate its words and the Bitmap would no longer see them.
func (b *Bitmap) BitSet() *bitset.BitSet {
	if b.bs == nil { // zero value
		b.bs = bitset.FromWithLength(0, nil)
	}
	return b.bs
}

func rangeError(op string, page uint64) error {
	return &livemig.PageError{Op: op, Page: page, Err: livemig.ErrPageRange}
}

// Set marks page. It returns a *livemig.PageError wrapping
// livemig.ErrPageRange, and changes nothing, if page >= Len().
func (b *Bitmap) Set(page uint64) error {
	if page >= b.pages {
		return rangeError("set", page)
	}
	Words(b.words).Set(page)
	return nil
}

// Clear unmarks page. It returns a *livemig.PageError wrapping
// livemig.ErrPageRange, and changes nothing, if page >= Len().
func (b *Bitmap) Clear(page uint64) error {
	if page >= b.pages {
		return rangeError("clear", page)
	}
	Words(b.words).Clear(page)
	return nil
}

// Test reports whether page is marked; it is false for page >= Len().
func (b *Bitmap) Test(page uint64) bool {
	return page < b.pages && Words(b.words).Test(page)
}

// CountWords returns how many bits are set in words, a bitmap in KVM's
// layout held as a plain slice (as engines keep their dirty and sent sets).
func CountWords(words []uint64) uint64 {
	return uint64(bitset.From(words).Count())
}

// Count returns the number of marked pages.
func (b *Bitmap) Count() uint64 {
	n := len(b.words)
	if n == 0 {
		return 0
	}
	c := uint64(b.bs.Count())
	return c - uint64(bits.OnesCount64(b.words[n-1]&^b.tail))
}

// ClearAll unmarks every page.
func (b *Bitmap) ClearAll() { clear(b.words) }

// SetAll marks every page (an engine's first round sends them all).
func (b *Bitmap) SetAll() {
	for i := range b.words {
		b.words[i] = math.MaxUint64
	}
	if n := len(b.words); n > 0 {
		b.words[n-1] = b.tail
	}
}

// Complement marks every unmarked page of b and unmarks every marked one
// (b = ^b within Len()).
func (b *Bitmap) Complement() {
	for i := range b.words {
		b.words[i] = ^b.words[i]
	}
	if n := len(b.words); n > 0 {
		b.words[n-1] &= b.tail
	}
}

// common returns the number of words b and o share, treating a nil o as a
// bitmap of 0 pages.
func (b *Bitmap) common(o *Bitmap) int {
	if o == nil {
		return 0
	}
	return min(len(b.words), len(o.words))
}

// Union marks in b every page marked in o (b |= o). Pages of o at or past
// b.Len() are ignored. o may be b or nil (an empty bitmap).
func (b *Bitmap) Union(o *Bitmap) {
	n := b.common(o)
	for i := 0; i < n; i++ {
		b.words[i] |= o.word(i)
	}
	if n > 0 && n == len(b.words) {
		b.words[n-1] &= b.tail
	}
}

// Difference unmarks in b every page marked in o (b &^= o). o may be b or nil
// (an empty bitmap).
func (b *Bitmap) Difference(o *Bitmap) {
	n := b.common(o)
	for i := 0; i < n; i++ {
		b.words[i] &^= o.word(i)
	}
}

// Intersect keeps in b only the pages also marked in o (b &= o); pages at or
// past o.Len() are unmarked. o may be b or nil (an empty bitmap).
func (b *Bitmap) Intersect(o *Bitmap) {
	n := b.common(o)
	for i := 0; i < n; i++ {
		b.words[i] &= o.word(i)
	}
	clear(b.words[n:])
}

// word returns word i with the bits past Len() cleared.
func (b *Bitmap) word(i int) uint64 {
	w := b.words[i]
	if i == len(b.words)-1 {
		w &= b.tail
	}
	return w
}

// NextSetMany fills buf from its start with the marked pages >= start, in
// ascending order, and returns them as out (a prefix of buf, at most
// len(buf) pages). buf is owned by the caller; nothing is allocated.
//
// next is where the following call should start: one past the last page in
// out when out filled buf, else Len(). The iteration is over when out is
// empty (always so when start >= Len() or len(buf) == 0, which both return
// next == Len()), so a loop may also run while next < Len():
//
//	for next := uint64(0); ; {
//		next, out = b.NextSetMany(next, buf)
//		if len(out) == 0 {
//			break
//		}
//		// use out
//	}
func (b *Bitmap) NextSetMany(start uint64, buf []uint64) (next uint64, out []uint64) {
	if start >= b.pages || len(buf) == 0 {
		return b.pages, buf[:0]
	}
	// The full words before the last one are scanned in a tight loop; the
	// last word, whose bits past Len() are masked off, is done apart.
	words := b.words
	last := len(words) - 1
	i := int(start / 64)
	first := words[i] &^ (1<<(start%64) - 1)
	k := 0
	if i < last {
		w := first
		for j, full := range words[i+1 : last+1] {
			base := uint64(i+j) * 64
			for w != 0 {
				buf[k] = base + uint64(bits.TrailingZeros64(w))
				k++
				if k == len(buf) {
					return buf[k-1] + 1, buf[:k]
				}
				w &= w - 1
			}
			w = full
		}
		first = words[last]
	}
	w := first & b.tail
	base := uint64(last) * 64
	for w != 0 {
		buf[k] = base + uint64(bits.TrailingZeros64(w))
		k++
		if k == len(buf) {
			return buf[k-1] + 1, buf[:k]
		}
		w &= w - 1
	}
	return b.pages, buf[:k]
}

// ForEach calls f with every marked page in ascending order until f returns
// false. f must not change b.
func (b *Bitmap) ForEach(f func(page uint64) bool) {
	for i := range b.words {
		w := b.word(i)
		base := uint64(i) * 64
		for w != 0 {
			if !f(base + uint64(bits.TrailingZeros64(w))) {
				return
			}
			w &= w - 1
		}
	}
}

// All returns an iterator over the marked pages in ascending order. b must
// not change during the iteration.
func (b *Bitmap) All() iter.Seq[uint64] {
	return b.ForEach
}

// Equal reports whether b and o hold the same page count and marked pages.
func (b *Bitmap) Equal(o *Bitmap) bool {
	if o == nil || b.pages != o.pages {
		return false
	}
	for i := range b.words {
		if b.word(i) != o.word(i) {
			return false
		}
	}
	return true
}

// String lists the marked pages as "{1 5 64}"; meant for tests and logs of
// small bitmaps.
func (b *Bitmap) String() string {
	s := []byte{'{'}
	b.ForEach(func(p uint64) bool {
		if len(s) > 1 {
			s = append(s, ' ')
		}
		s = fmt.Appendf(s, "%d", p)
		return true
	})
	return string(append(s, '}'))
}

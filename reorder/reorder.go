package reorder

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// Order decides the order in which a round's pages go out.
//
// An Order belongs to one engine goroutine: its methods must not be called
// concurrently. The engine calls Observe after every sync of the dirty log,
// the final one included, and then Plan for the round that sends those pages.
//
// Observe learns from one sync: dirty holds the pages found dirty, in KVM's
// layout (bit i%64 of word i/64 is page i). Observe only reads dirty and keeps
// no reference to it. Bits for pages past the Order's page count are ignored.
//
// Plan appends to dst every page set in dirty, each exactly once, in the order
// to send them, and returns the extended slice. It only reads dirty (it never
// modifies it) and keeps no reference to dst or dirty. dst is owned by the
// caller; Plan allocates only when dst lacks capacity for the dirty pages.
// Pages past the Order's page count are planned too, as pages with no history.
//
// Name names the order in reports ("sequential", "frequency").
type Order interface {
	Observe(dirty []uint64)
	Plan(dst []uint64, dirty []uint64) []uint64
	Name() string
}

// Errors returned by this package. Match them with errors.Is.
var (
	// ErrConfig: a FrequencyConfig field is out of range.
	ErrConfig = errors.New("reorder: bad configuration")
	// ErrTooLarge: a page count exceeds MaxPages.
	ErrTooLarge = errors.New("reorder: page count too large")
)

// MaxPages is the largest page count ByFrequency accepts: 2^40 pages, a
// 4 PiB guest of 4 KiB pages, whose counters would take 1 TiB. It bounds the
// allocation a hostile or mistaken page count can cause.
const MaxPages uint64 = 1 << 40

// Sequential returns the standard algorithm's order: ascending page numbers.
// It keeps no history (Observe does nothing) and is the baseline ByFrequency
// is measured against. It is stateless and may be shared.
func Sequential() Order { return sequential{} }

type sequential struct{}

func (sequential) Name() string     { return "sequential" }
func (sequential) Observe([]uint64) {}

func (sequential) Plan(dst, dirty []uint64) []uint64 {
	dst = slices.Grow(dst, popcount(dirty))
	for i, w := range dirty {
		base := uint64(i) * 64
		for w != 0 {
			dst = append(dst, base+uint64(bits.TrailingZeros64(w)))
			w &= w - 1
		}
	}
	return dst
}

// popcount returns the number of set bits in words.
func popcount(words []uint64) int {
	n := 0
	for _, w := range words {
		n += bits.OnesCount64(w)
	}
	return n
}

// MaxCount is the largest value a ByFrequency counter reaches: counters are
// 7 bits, saturating, so a round's pages fall in MaxCount+1 buckets.
const MaxCount = 127

// FrequencyConfig configures ByFrequency. Its zero value is the default: the
// paper's scheme, a count of dirtyings that never fades.
type FrequencyConfig struct {
	// HalveEvery ages the history: after every HalveEvery syncs, every
	// counter is halved (rounding down), so that a dirtying k syncs ago
	// weighs about 2^-(k/HalveEvery) of a recent one and a page that was
	// hot long ago and is quiet now moves back towards the front. A page
	// dirtied at every sync then settles at a count of about HalveEvery
	// (c = (c+HalveEvery)/2), so HalveEvery should stay below MaxCount.
	// Halving is a pass over the counters (one byte per page, 8 at a
	// time): about 1 ms per 16 GiB of guest. 0, the default, never halves;
	// it must not be negative.
	HalveEvery int
}

// Frequency is the dynamic page transfer reordering of Svärd et al.: a
// saturating 7-bit count per page of the syncs that found it dirty, with
// optional aging, and an order that sends pages by rising count, ties broken
// by ascending page number. Pages never found dirty (count 0) go first, in
// ascending order, so with no history Frequency plans exactly as Sequential.
//
// Memory: one byte per page (64 MiB for the 64 Mi pages of a 256 GiB guest),
// allocated once by NewFrequency, plus a fixed 1 KiB of buckets. Observe costs
// a read of the dirty bitmap plus, for each nonzero dirty word, an update of
// 8 counter words; Plan is a counting sort over the MaxCount+1 buckets, two
// passes over the dirty pages, O(N + buckets), no comparison sort.
//
// A Frequency is used by one goroutine (see Order). Its zero value is not
// usable; make one with NewFrequency or ByFrequency.
type Frequency struct {
	pages  uint64
	halve  int
	syncs  int      // syncs since the last halving
	counts []uint64 // counter of page p: byte lane p%8 of counts[p/8] (7 bits used)
	hist   [MaxCount + 2]int
	tail   [8]uint64 // the last, partial group of counters, zero-padded
}

// NewFrequency returns the frequency order for a guest of pages pages. It
// returns an error wrapping ErrTooLarge if pages exceeds MaxPages and one
// wrapping ErrConfig if cfg is out of range.
func NewFrequency(pages uint64, cfg FrequencyConfig) (*Frequency, error) {
	if pages > MaxPages {
		return nil, fmt.Errorf("%w: %d pages, at most %d", ErrTooLarge, pages, MaxPages)
	}
	if cfg.HalveEvery < 0 {
		return nil, fmt.Errorf("%w: HalveEvery %d < 0", ErrConfig, cfg.HalveEvery)
	}
	return &Frequency{pages: pages, halve: cfg.HalveEvery, counts: make([]uint64, (pages+7)/8)}, nil
}

// ByFrequency returns NewFrequency(pages, cfg) as an Order. It panics, like
// regexp.MustCompile, if NewFrequency fails: use NewFrequency where pages or
// cfg come from input.
func ByFrequency(pages uint64, cfg FrequencyConfig) Order {
	f, err := NewFrequency(pages, cfg)
	if err != nil {
		panic(err)
	}
	return f
}

// Name returns "frequency".
func (f *Frequency) Name() string { return "frequency" }

// Pages returns the page count the counters cover.
func (f *Frequency) Pages() uint64 { return f.pages }

// Count returns the counter of page p: how many syncs found it dirty, as aged
// by HalveEvery and saturated at MaxCount. Pages past Pages() have count 0.
func (f *Frequency) Count(p uint64) uint8 {
	if p >= f.pages {
		return 0
	}
	return uint8(f.counts[p/8] >> (p % 8 * 8))
}

// MemoryBytes returns the bytes the counters take: Pages() rounded up to 8.
func (f *Frequency) MemoryBytes() uint64 { return uint64(len(f.counts)) * 8 }

// Reset forgets all history, as if the Frequency were new.
func (f *Frequency) Reset() {
	clear(f.counts)
	f.syncs = 0
}

const (
	lanes01 = 0x0101010101010101 // 1 in every byte lane
	lanes80 = 0x8080808080808080 // high bit of every byte lane
	lanes7f = 0x7f7f7f7f7f7f7f7f // low 7 bits of every byte lane
)

// spread[b] has 1 in byte lane k for every bit k set in b.
var spread = func() (t [256]uint64) {
	for b := range t {
		for k := range 8 {
			if b&(1<<k) != 0 {
				t[b] |= 1 << (8 * k)
			}
		}
	}
	return t
}()

// Observe adds one to the counter of every page set in dirty (saturating at
// MaxCount), then halves every counter if HalveEvery syncs have passed. Zero
// words of dirty cost one load each.
func (f *Frequency) Observe(dirty []uint64) {
	words := min(len(dirty), int((f.pages+63)/64))
	for i := range words {
		w := dirty[i]
		if w == 0 {
			continue
		}
		if i == words-1 {
			w &= f.lastMask(i)
		}
		c := f.counts[i*8 : min(i*8+8, len(f.counts))]
		for j := range c {
			if b := uint8(w >> (8 * j)); b != 0 {
				x := c[j]
				inc := spread[b]
				// A lane at MaxCount (0x7f) carries into its high bit
				// when 1 is added: those lanes do not grow.
				inc &^= ((x + lanes01) & lanes80) >> 7
				c[j] = x + inc
			}
		}
	}
	if f.halve > 0 {
		if f.syncs++; f.syncs >= f.halve {
			f.syncs = 0
			for i, x := range f.counts {
				f.counts[i] = (x >> 1) & lanes7f
			}
		}
	}
}

// lastMask returns the bits of dirty word i that are pages below f.pages.
func (f *Frequency) lastMask(i int) uint64 {
	first := uint64(i) * 64
	if first >= f.pages {
		return 0
	}
	if n := f.pages - first; n < 64 {
		return 1<<n - 1
	}
	return ^uint64(0)
}

// lane returns the counter in byte lane b%8 of the counter word x.
func lane(x uint64, b int) int { return int(x>>(8*(b&7))) & MaxCount }

// Plan appends the pages set in dirty to dst by rising count, ties by
// ascending page number: a counting sort in two passes, one to size the
// buckets and one to place the pages.
func (f *Frequency) Plan(dst, dirty []uint64) []uint64 {
	hist := &f.hist
	clear(hist[:])
	// Pass 1: pages per count, in hist[count+1].
	n := 0
	for i, w := range dirty {
		if w == 0 {
			continue
		}
		c := f.group(i)
		if c == nil {
			hist[1] += bits.OnesCount64(w)
			n += bits.OnesCount64(w)
			continue
		}
		for j := range 8 {
			b := uint8(w >> (8 * j))
			if b == 0 {
				continue
			}
			x := c[j]
			n += bits.OnesCount8(b)
			if x == 0 {
				hist[1] += bits.OnesCount8(b)
				continue
			}
			for b != 0 {
				hist[lane(x, bits.TrailingZeros8(b))+1]++
				b &= b - 1
			}
		}
	}
	// hist[k] becomes the index in out of the first page of count k.
	for k := 1; k < len(hist); k++ {
		hist[k] += hist[k-1]
	}
	start := len(dst)
	dst = slices.Grow(dst, n)[:start+n]
	out := dst[start:]
	// Pass 2: place the pages, in ascending order within each bucket.
	for i, w := range dirty {
		if w == 0 {
			continue
		}
		base := uint64(i) * 64
		c := f.group(i)
		if c == nil {
			k := hist[0]
			for w != 0 {
				out[k] = base + uint64(bits.TrailingZeros64(w))
				k++
				w &= w - 1
			}
			hist[0] = k
			continue
		}
		for j := range 8 {
			b := uint8(w >> (8 * j))
			if b == 0 {
				continue
			}
			x := c[j]
			p := base + uint64(8*j)
			if x == 0 {
				k := hist[0]
				for b != 0 {
					out[k] = p + uint64(bits.TrailingZeros8(b))
					k++
					b &= b - 1
				}
				hist[0] = k
				continue
			}
			for b != 0 {
				t := bits.TrailingZeros8(b)
				l := lane(x, t)
				out[hist[l]] = p + uint64(t)
				hist[l]++
				b &= b - 1
			}
		}
	}
	return dst
}

// group returns the 8 counter words of dirty word i, or nil if the page
// range of word i is not fully covered by counters (only the last word, or
// words past the guest: those pages read as count 0 where uncovered).
func (f *Frequency) group(i int) *[8]uint64 {
	if (i+1)*8 > len(f.counts) {
		if i*8 >= len(f.counts) {
			return nil
		}
		f.tail = [8]uint64{}
		copy(f.tail[:], f.counts[i*8:])
		return &f.tail
	}
	return (*[8]uint64)(f.counts[i*8 : i*8+8])
}

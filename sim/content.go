package sim

import (
	"encoding/binary"
	"math/bits"
	"strconv"
)

// PageState is what a simulated page is, instead of its bytes: Version
// counts the writes to the page, Generation the writes that rewrote it
// whole. A page's contents are a function of the guest's configuration, the
// page number and its PageState. Both counters wrap after 2^32 writes, and
// Version skips 0, which means "never written".
type PageState struct {
	Version    uint32
	Generation uint32
}

func (s PageState) pack() uint64 { return uint64(s.Generation)<<32 | uint64(s.Version) }
func unpack(x uint64) PageState  { return PageState{Version: uint32(x), Generation: uint32(x >> 32)} }

// String returns the state as "v<Version>/g<Generation>".
func (s PageState) String() string {
	return "v" + strconv.FormatUint(uint64(s.Version), 10) + "/g" + strconv.FormatUint(uint64(s.Generation), 10)
}

// Page layout, for a page that is not all zeros (words are little-endian
// uint64s):
//
//	word 0        the page number XOR a tag of the seed
//	word 1        Generation<<32 | Version
//	WriteWords    "counter" words at places fixed per page, holding a hash of
//	              (seed, page, Version): what a few-words write changes
//	the rest      the background: a function of (seed, page, Generation).
//	              Each 64-byte line is either 8 random words (with
//	              probability Entropy) or one of four per-page words
//	              repeated. A page with Generation 0 whose number drew
//	              "zero" (probability ZeroFraction) has an all-zero
//	              background; such a page is all zeros, header included,
//	              while its Version is 0.

// Mixing constants (splitmix64 and wyrand).
const (
	golden = 0x9e3779b97f4a7c15
	wyAdd  = 0xa0761d6478bd642f
	wyXor  = 0xe7037ed1a0b428db
)

// mix is the splitmix64 finalizer: a bijective 64-bit hash.
func mix(x uint64) uint64 {
	x += golden
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// reduce maps a uniform 64-bit r into [0, n) (Lemire's multiply-shift).
func reduce(r, n uint64) uint64 {
	hi, _ := bits.Mul64(r, n)
	return hi
}

// threshold turns a probability p in [0,1] into a test r < thr (or all) on
// a uniform 64-bit r.
type threshold struct {
	thr uint64
	all bool
}

func newThreshold(p float64) threshold {
	switch {
	case !(p > 0):
		return threshold{}
	case p >= 1:
		return threshold{all: true}
	}
	x := p * (1 << 64)
	if x >= 1<<64 {
		return threshold{all: true}
	}
	return threshold{thr: uint64(x)}
}

func (t threshold) hit(r uint64) bool { return t.all || r < t.thr }

// layout generates page contents for one configuration. It is immutable
// and safe for concurrent use.
type layout struct {
	seed     uint64
	tag      uint64 // XORed into word 0
	pageSize int
	words    int
	counters int
	state    int // bytes of CPU/device state, 0 for none
	zero     threshold
	line     threshold
}

func newLayout(c GuestConfig) layout {
	return layout{
		seed:     c.Seed,
		tag:      mix(c.Seed ^ 0x6c6976656d696721),
		pageSize: c.PageSize,
		words:    c.PageSize / 8,
		counters: max(c.WriteWords, 0),
		state:    max(c.StateSize, 0),
		zero:     newThreshold(c.ZeroFraction),
		line:     newThreshold(c.Entropy),
	}
}

// zeroClass reports whether page n is all zeros until first written.
func (l *layout) zeroClass(n uint64) bool {
	return l.zero.hit(mix(l.seed ^ mix(n^0x7a65726f)))
}

// isZero reports whether page n in state s is all zeros.
func (l *layout) isZero(n uint64, s PageState) bool {
	return s.Version == 0 && l.zeroClass(n)
}

// counterPos is the word index of counter word i of page n.
func (l *layout) counterPos(n uint64, i int) int {
	return 2 + int(reduce(mix(l.seed^mix(n*golden+uint64(i)+0x636f756e74)), uint64(l.words-2)))
}

// counterVal is the value of counter word i of page n at version v.
func (l *layout) counterVal(n uint64, v uint32, i int) uint64 {
	return mix(l.seed ^ mix(n^uint64(v)<<32^uint64(i)<<24^0x76616c))
}

// fill writes the contents of page n in state s to dst, which is exactly
// one page long. It allocates nothing.
func (l *layout) fill(dst []byte, n uint64, s PageState) {
	dst = dst[:l.pageSize]
	zc := s.Generation == 0 && l.zeroClass(n)
	if zc {
		clear(dst)
		if s.Version == 0 {
			return
		}
	} else {
		l.background(dst, n, s.Generation)
	}
	binary.LittleEndian.PutUint64(dst[0:8], n^l.tag)
	binary.LittleEndian.PutUint64(dst[8:16], s.pack())
	for i := 0; i < l.counters; i++ {
		p := l.counterPos(n, i) * 8
		binary.LittleEndian.PutUint64(dst[p:p+8], l.counterVal(n, s.Version, i))
	}
}

// background fills dst with the background of page n at generation g.
func (l *layout) background(dst []byte, n uint64, g uint32) {
	s := mix(l.seed ^ mix(n*0x2545f4914f6cdd1d^uint64(g)<<17^0x626b67))
	var dict [4]uint64
	for i := range dict {
		dict[i] = wy(&s)
	}
	line := l.line
	for off := 0; off+64 <= len(dst); off += 64 {
		d := dst[off : off+64 : off+64]
		r := wy(&s)
		if line.hit(r) {
			binary.LittleEndian.PutUint64(d[0:], wy(&s))
			binary.LittleEndian.PutUint64(d[8:], wy(&s))
			binary.LittleEndian.PutUint64(d[16:], wy(&s))
			binary.LittleEndian.PutUint64(d[24:], wy(&s))
			binary.LittleEndian.PutUint64(d[32:], wy(&s))
			binary.LittleEndian.PutUint64(d[40:], wy(&s))
			binary.LittleEndian.PutUint64(d[48:], wy(&s))
			binary.LittleEndian.PutUint64(d[56:], wy(&s))
			continue
		}
		w := dict[r>>62]
		binary.LittleEndian.PutUint64(d[0:], w)
		binary.LittleEndian.PutUint64(d[8:], w)
		binary.LittleEndian.PutUint64(d[16:], w)
		binary.LittleEndian.PutUint64(d[24:], w)
		binary.LittleEndian.PutUint64(d[32:], w)
		binary.LittleEndian.PutUint64(d[40:], w)
		binary.LittleEndian.PutUint64(d[48:], w)
		binary.LittleEndian.PutUint64(d[56:], w)
	}
}

// wy is the wyrand step: 8 pseudo-random bytes per call.
func wy(s *uint64) uint64 {
	*s += wyAdd
	hi, lo := bits.Mul64(*s, *s^wyXor)
	return hi ^ lo
}

// parse reads the page state a page's header claims, and whether the
// header names page n. An all-zero page parses as (PageState{}, false)
// unless the tag happens to be n.
func (l *layout) parse(data []byte, n uint64) (PageState, bool) {
	if len(data) < 16 {
		return PageState{}, false
	}
	ok := binary.LittleEndian.Uint64(data[0:8])^l.tag == n
	return unpack(binary.LittleEndian.Uint64(data[8:16])), ok
}

// Package pagepat holds the nine page-change patterns that livemig's XBZRLE
// figures are measured on (issue 15: identical, one byte, eight counters,
// about 1 %, 10 % and 40 % of the bytes, a 512-byte block, every byte, and
// 16-byte fields in a quarter of the 64-byte lines), and the seeded page
// pairs made from them. The delta package's tests and benchmarks, the
// benchmark suite in package bench and the comparison with QEMU's encoders
// (scripts/qemu-xbzrle-bench.sh) use the same pages, so their figures
// describe the same input.
package pagepat

import (
	"encoding/binary"
	"math/rand/v2"
)

// A Pattern turns a copy of an old page into a new one. Mutate's rng is
// seeded by the caller.
type Pattern struct {
	Name   string
	Mutate func(rng *rand.Rand, p []byte)
}

// flip changes p[i] to a different value.
func flip(rng *rand.Rand, p []byte, i int) { p[i] ^= byte(1 + rng.IntN(255)) }

// Flip changes p[i] to a different value drawn from rng.
func Flip(rng *rand.Rand, p []byte, i int) { flip(rng, p, i) }

// randomBytes changes each byte of p with probability prob.
func randomBytes(prob float64) func(*rand.Rand, []byte) {
	return func(rng *rand.Rand, p []byte) {
		for i := range p {
			if rng.Float64() < prob {
				flip(rng, p, i)
			}
		}
	}
}

// All is the nine patterns, in the order of the tables in
// docs/BENCHMARKS.md.
var All = []Pattern{
	{"identical", func(*rand.Rand, []byte) {}},
	{"one-byte", func(rng *rand.Rand, p []byte) { flip(rng, p, rng.IntN(len(p))) }},
	{"counters8", func(rng *rand.Rand, p []byte) {
		// Eight distinct u64 counters, each incremented by one.
		words := len(p) / 8
		if words == 0 {
			flip(rng, p, rng.IntN(len(p)))
			return
		}
		for _, w := range rng.Perm(words)[:min(8, words)] {
			v := binary.LittleEndian.Uint64(p[8*w:])
			binary.LittleEndian.PutUint64(p[8*w:], v+1)
		}
	}},
	{"random1pct", randomBytes(0.01)},
	{"random10pct", randomBytes(0.10)},
	{"random40pct", randomBytes(0.40)},
	{"block512", func(rng *rand.Rand, p []byte) {
		// One aligned 512-byte block rewritten with all-new bytes.
		bl := min(512, len(p))
		start := rng.IntN(len(p)/bl) * bl
		for i := start; i < start+bl; i++ {
			flip(rng, p, i)
		}
	}},
	{"all-different", func(rng *rand.Rand, p []byte) {
		for i := range p {
			flip(rng, p, i)
		}
	}},
	{"fields16", func(rng *rand.Rand, p []byte) {
		// In a quarter of the 64-byte lines, one aligned 16-byte field is
		// rewritten.
		lines := len(p) / 64
		if lines == 0 {
			flip(rng, p, rng.IntN(len(p)))
			return
		}
		for _, l := range rng.Perm(lines)[:max(1, lines/4)] {
			start := 64*l + 16*rng.IntN(4)
			for i := start; i < start+16; i++ {
				flip(rng, p, i)
			}
		}
	}},
}

// Pair returns a random old page of size n and its new version under pat,
// from seed: the same pages for the same arguments, on every machine.
func Pair(pat Pattern, n int, seed uint64) (old, new []byte) {
	old, new = make([]byte, n), make([]byte, n)
	PairInto(old, new, pat, seed)
	return old, new
}

// PairInto is Pair into caller-owned buffers of the same length (memory
// the caller chose: aligned, or outside the Go heap).
func PairInto(old, new []byte, pat Pattern, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	for i := range old {
		old[i] = byte(rng.Uint32())
	}
	copy(new, old)
	if len(new) > 0 {
		pat.Mutate(rng, new)
	}
}

// Pairs returns count page pairs of size n under pat, from seeds base,
// base+1, …: the benchmarks' working sets. The pages lie side by side in
// one allocation, the old ones then the new ones, so that where they fall
// in the caches does not depend on the heap's layout.
func Pairs(pat Pattern, n, count int, base uint64) (olds, news [][]byte) {
	buf := make([]byte, 2*count*n)
	for i := range count {
		o, nw := buf[i*n:(i+1)*n:(i+1)*n], buf[(count+i)*n:(count+i+1)*n:(count+i+1)*n]
		PairInto(o, nw, pat, base+uint64(i))
		olds, news = append(olds, o), append(news, nw)
	}
	return olds, news
}

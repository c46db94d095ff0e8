package delta

import (
	"encoding/binary"
	"math/rand/v2"
)

// A pattern turns a copy of an old page into a new one, the change shapes
// the benchmarks and round-trip tests use. rng is seeded by the caller.
type pattern struct {
	name   string
	mutate func(rng *rand.Rand, p []byte)
}

// flip changes p[i] to a different value.
func flip(rng *rand.Rand, p []byte, i int) { p[i] ^= byte(1 + rng.IntN(255)) }

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

var patterns = []pattern{
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

// pagePair returns a random old page of size n and its new version under
// pat, from seed.
func pagePair(pat pattern, n int, seed uint64) (old, new []byte) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	old = make([]byte, n)
	for i := range old {
		old[i] = byte(rng.Uint32())
	}
	new = append([]byte(nil), old...)
	if n > 0 {
		pat.mutate(rng, new)
	}
	return old, new
}

package delta

import (
	"math/rand/v2"

	"github.com/livemig/livemig/internal/pagepat"
)

// The change patterns the benchmarks and round-trip tests use live in
// internal/pagepat, shared with the benchmark suite (package bench) and
// the comparison with QEMU's encoders (scripts/qemu-xbzrle-bench.sh).
type pattern struct {
	name   string
	mutate func(rng *rand.Rand, p []byte)
}

var patterns = func() []pattern {
	ps := make([]pattern, len(pagepat.All))
	for i, p := range pagepat.All {
		ps[i] = pattern{p.Name, p.Mutate}
	}
	return ps
}()

// flip changes p[i] to a different value.
func flip(rng *rand.Rand, p []byte, i int) { pagepat.Flip(rng, p, i) }

// pagePair returns a random old page of size n and its new version under
// pat, from seed.
func pagePair(pat pattern, n int, seed uint64) (old, new []byte) {
	return pagepat.Pair(pagepat.Pattern{Name: pat.name, Mutate: pat.mutate}, n, seed)
}

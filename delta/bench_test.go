package delta

import (
	"bytes"
	"errors"
	"testing"

	"github.com/livemig/livemig/internal/benchkit"
	"github.com/livemig/livemig/internal/pagepat"
)

// The benchmarks run per change pattern over 4 KiB pages; GB/s is of page
// input (b.SetBytes(4096)). BenchmarkEncode runs every Encode path this
// CPU has under each pattern, next to memcmp (bytes.Equal of the pair) and
// memcpy (a copy of the new page), the limits to compare with. A set of 16
// seeded pairs rotates so that branch predictors do not learn one page.
const benchPairs = 16

func benchPages(pat pattern) (olds, news [][]byte) {
	return pagepat.Pairs(pagepat.Pattern{Name: pat.name, Mutate: pat.mutate}, 4096, benchPairs, 100)
}

func BenchmarkEncode(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			olds, news := benchPages(pat)
			for _, p := range availablePaths(b) {
				b.Run(p, func(b *testing.B) {
					defer setPath(currentPath())
					setPath(p)
					benchEncode(b, olds, news)
				})
			}
			b.Run("memcmp", func(b *testing.B) {
				b.SetBytes(4096)
				b.ReportAllocs()
				eq := 0
				for i := 0; i < b.N; i++ {
					k := i % benchPairs
					if bytes.Equal(olds[k], news[k]) {
						eq++
					}
				}
				sink = eq
			})
			b.Run("memcpy", func(b *testing.B) {
				page := make([]byte, 4096)
				b.SetBytes(4096)
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					copy(page, news[i%benchPairs])
				}
			})
		})
	}
}

// sink keeps results the compiler could otherwise drop.
var sink int

func benchEncode(b *testing.B, olds, news [][]byte) {
	buf := make([]byte, 0, 4096)
	var outBytes, overflows int
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % benchPairs
		out, err := Encode(buf, olds[k], news[k], 0)
		if err == nil {
			outBytes += len(out)
		} else if errors.Is(err, ErrOverflow) {
			overflows++
		}
	}
	b.ReportMetric(float64(outBytes)/float64(b.N), "delta-B/page")
	b.ReportMetric(float64(overflows)/float64(b.N), "overflows/page")
}

func BenchmarkDecode(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			olds, news := benchPages(pat)
			deltas := make([][]byte, benchPairs)
			for k := range deltas {
				// A large limit so that every pattern has a delta to
				// decode (the dense ones overflow a 4096-byte limit).
				d, err := Encode(nil, olds[k], news[k], 1<<20)
				if err != nil && !errors.Is(err, ErrUnchanged) {
					b.Fatal(err)
				}
				deltas[k] = d
			}
			page := make([]byte, 4096)
			b.SetBytes(4096)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := i % benchPairs
				if err := Decode(page, deltas[k]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEncodeRatio runs the Encode paths and memcmp in turn on the same
// pages, batch by batch (benchkit.Race), and reports each one's GB/s from
// its fastest batch and the fastest path's speed over the others' (ns/op
// and MB/s are that path's): on a shared machine the
// fastest batch is the least disturbed, and ratios of batches run side by
// side are the figures to trust. One op is one page on every path. The
// pages are the 16 pairs of BenchmarkEncode (128 KiB, read from L2 cache:
// "16pairs") or the first pair alone (8 KiB, L1: "1pair"), where the
// encoders' own work shows rather than the cache's bandwidth.
func BenchmarkEncodeRatio(b *testing.B) {
	for _, pat := range patterns {
		olds, news := benchPages(pat)
		b.Run(pat.name+"/16pairs", func(b *testing.B) { benchRatio(b, olds, news) })
		b.Run(pat.name+"/1pair", func(b *testing.B) { benchRatio(b, olds[:1], news[:1]) })
	}
}

func benchRatio(b *testing.B, olds, news [][]byte) {
	defer setPath(currentPath())
	const batch = 256
	buf := make([]byte, 0, 4096)
	np := len(olds)
	paths := availablePaths(b)
	var cs []benchkit.Contender
	for k := len(paths) - 1; k >= 0; k-- { // the fastest path first
		p := paths[k]
		cs = append(cs, benchkit.Contender{Name: p, Batch: func() {
			setPath(p)
			for i := range batch {
				_, _ = Encode(buf, olds[i%np], news[i%np], 0)
			}
		}})
	}
	cs = append(cs, benchkit.Contender{Name: "memcmp", Batch: func() {
		for i := range batch {
			sink += bytes.Compare(olds[i%np], news[i%np])
		}
	}})
	benchkit.Race(b, batch, 4096, cs)
}

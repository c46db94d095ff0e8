package delta

import (
	"errors"
	"testing"
)

// The benchmarks run per change pattern over 4 KiB pages; GB/s is of page
// input (b.SetBytes(4096)). BenchmarkMemcpy copies the same new page, the
// limit to compare with. A set of 16 seeded pairs rotates so that branch
// predictors do not learn one page.
const benchPairs = 16

func benchPages(pat pattern) (olds, news [][]byte) {
	for s := range uint64(benchPairs) {
		o, n := pagePair(pat, 4096, 100+s)
		olds, news = append(olds, o), append(news, n)
	}
	return olds, news
}

func BenchmarkEncode(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			olds, news := benchPages(pat)
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
		})
	}
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

func BenchmarkMemcpy(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			_, news := benchPages(pat)
			page := make([]byte, 4096)
			b.SetBytes(4096)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(page, news[i%benchPairs])
			}
		})
	}
}

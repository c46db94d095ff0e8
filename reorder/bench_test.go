package reorder

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchPages is the guest of the benchmarks: 64 Mi pages of 4 KiB, 256 GiB.
const benchPages = 64 << 20

// benchDirty returns a dirty bitmap of benchPages pages with n set: one page
// per word when n is 1 Mi, every page when n is 64 Mi.
func benchDirty(r *rand.Rand, n int) []uint64 {
	d := make([]uint64, benchPages/64)
	switch n {
	case benchPages:
		for i := range d {
			d[i] = ^uint64(0)
		}
	case benchPages / 64:
		for i := range d {
			d[i] = 1 << r.IntN(64)
		}
	default:
		panic("benchDirty: unsupported count")
	}
	return d
}

// benchHistory gives f a skewed history: 16 syncs where the first eighth of
// the guest is dirtied at every sync, and the rest with densities 1/2, 1/4,
// 1/8, ... by region, so counts spread over 0..16.
func benchHistory(r *rand.Rand, f *Frequency) {
	d := make([]uint64, benchPages/64)
	for range 16 {
		for i := range d {
			switch region := i * 8 / len(d); region {
			case 0:
				d[i] = ^uint64(0)
			default:
				w := r.Uint64()
				for range region - 1 {
					w &= r.Uint64()
				}
				d[i] = w
			}
		}
		f.Observe(d)
	}
}

var benchSizes = []struct {
	name string
	n    int
}{{"1Mi", benchPages / 64}, {"64Mi", benchPages}}

// BenchmarkPlan measures the ordering of one round of N dirty pages in a
// 256 GiB guest, dst with room (steady state: 0 allocs). MB/s counts the
// guest memory ordered per second, to set against a link's rate (10 Gbit/s
// is 1250 MB/s, about 300,000 pages/s).
func BenchmarkPlan(b *testing.B) {
	r := rand.New(rand.NewPCG(11, 12))
	freq, err := NewFrequency(benchPages, FrequencyConfig{})
	if err != nil {
		b.Fatal(err)
	}
	benchHistory(r, freq)
	for _, o := range []Order{Sequential(), freq} {
		for _, sz := range benchSizes {
			b.Run(fmt.Sprintf("%s/%s", o.Name(), sz.name), func(b *testing.B) {
				dirty := benchDirty(r, sz.n)
				dst := make([]uint64, 0, sz.n)
				b.SetBytes(int64(sz.n) * 4096)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					dst = o.Plan(dst[:0], dirty)
				}
				if len(dst) != sz.n {
					b.Fatalf("planned %d pages of %d", len(dst), sz.n)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(sz.n), "ns/page")
			})
		}
	}
}

// BenchmarkObserve measures learning from one sync of N dirty pages in a
// 256 GiB guest, without and with a halving of every counter at each sync
// (the worst case of aging).
func BenchmarkObserve(b *testing.B) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, halve := range []int{0, 1} {
		for _, sz := range benchSizes {
			b.Run(fmt.Sprintf("halve=%d/%s", halve, sz.name), func(b *testing.B) {
				f, err := NewFrequency(benchPages, FrequencyConfig{HalveEvery: halve})
				if err != nil {
					b.Fatal(err)
				}
				dirty := benchDirty(r, sz.n)
				b.SetBytes(int64(sz.n) * 4096)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					f.Observe(dirty)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(sz.n), "ns/page")
			})
		}
	}
}

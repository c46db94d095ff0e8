package bitmap

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// benchPages is a 256 GiB guest of 4 KiB pages: 64 Mi pages, 8 MiB of words.
const benchPages = 64 << 20

var densities = []struct {
	name    string
	density float64
}{{"0.1%", 0.001}, {"1%", 0.01}, {"10%", 0.1}}

// benchPattern returns the words of a benchPages bitmap with about density
// of its pages marked at random (seeded), and how many are marked.
func benchPattern(density float64) ([]uint64, uint64) {
	b := New(benchPages)
	r := rand.New(rand.NewPCG(7, uint64(density*1e6)))
	for range int(density * benchPages) {
		_ = b.Set(r.Uint64N(benchPages))
	}
	return b.Words(), b.Count()
}

var sink uint64

func iterate(b *Bitmap, buf []uint64) (n, sum uint64) {
	for next := uint64(0); ; {
		var out []uint64
		next, out = b.NextSetMany(next, buf)
		if len(out) == 0 {
			return n, sum
		}
		n += uint64(len(out))
		for _, p := range out {
			sum += p
		}
	}
}

// BenchmarkSyncIterate is one round of an engine on a 256 GiB guest: drain a
// software dirty log (DrainInto) into the round's bitmap and walk every
// dirty page with NextSetMany into a reused buffer. Refilling the dirty log
// and clearing the round's bitmap are not timed.
func BenchmarkSyncIterate(b *testing.B) {
	for _, d := range densities {
		pattern, set := benchPattern(d.density)
		b.Run(d.name, func(b *testing.B) {
			src, dst := New(benchPages), New(benchPages)
			buf := make([]uint64, 1024)
			b.SetBytes(8 * benchPages / 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				copy(src.Words(), pattern)
				dst.ClearAll()
				b.StartTimer()
				moved, err := src.DrainInto(dst.Words())
				if err != nil || moved != set {
					b.Fatalf("DrainInto = %d, %v; want %d", moved, err, set)
				}
				n, sum := iterate(dst, buf)
				if n != set {
					b.Fatalf("iterated %d pages, want %d", n, set)
				}
				sink += sum
			}
			b.ReportMetric(float64(set*uint64(b.N))/b.Elapsed().Seconds(), "pages/s")
		})
	}
}

// BenchmarkDrain times DrainInto alone, and SnapshotInto, on the same
// bitmaps as BenchmarkSyncIterate.
func BenchmarkDrain(b *testing.B) {
	for _, d := range append([]struct {
		name    string
		density float64
	}{{"0%", 0}}, densities...) {
		pattern, set := benchPattern(d.density)
		b.Run("drain/"+d.name, func(b *testing.B) {
			src, dst := New(benchPages), New(benchPages)
			b.SetBytes(8 * benchPages / 64)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				copy(src.Words(), pattern)
				b.StartTimer()
				if n, _ := src.DrainInto(dst.Words()); n != set {
					b.Fatalf("moved %d, want %d", n, set)
				}
			}
			b.ReportMetric(float64(set*uint64(b.N))/b.Elapsed().Seconds(), "pages/s")
		})
		b.Run("snapshot/"+d.name, func(b *testing.B) {
			src, dst := New(benchPages), New(benchPages)
			copy(src.Words(), pattern)
			b.SetBytes(8 * benchPages / 64)
			b.ReportAllocs()
			for b.Loop() {
				if n, _ := src.SnapshotInto(dst.Words()); n != set {
					b.Fatalf("read %d, want %d", n, set)
				}
			}
			b.ReportMetric(float64(set*uint64(b.N))/b.Elapsed().Seconds(), "pages/s")
		})
	}
}

// BenchmarkIterate compares NextSetMany with bitset's NextSetMany over the
// same words, which is why NextSetMany has its own word scan (it also masks
// the tail word and works in uint64 page numbers).
func BenchmarkIterate(b *testing.B) {
	for _, d := range densities {
		pattern, set := benchPattern(d.density)
		bm, err := FromWords(pattern, benchPages)
		if err != nil {
			b.Fatal(err)
		}
		for _, size := range []int{256, 1024, 4096} {
			b.Run(fmt.Sprintf("own/%s/buf=%d", d.name, size), func(b *testing.B) {
				buf := make([]uint64, size)
				b.SetBytes(8 * benchPages / 64)
				b.ReportAllocs()
				for b.Loop() {
					n, sum := iterate(bm, buf)
					if n != set {
						b.Fatalf("iterated %d, want %d", n, set)
					}
					sink += sum
				}
				b.ReportMetric(float64(set*uint64(b.N))/b.Elapsed().Seconds(), "pages/s")
			})
			b.Run(fmt.Sprintf("bitset/%s/buf=%d", d.name, size), func(b *testing.B) {
				bs := bm.BitSet()
				buf := make([]uint, size)
				b.SetBytes(8 * benchPages / 64)
				b.ReportAllocs()
				for b.Loop() {
					var n, sum uint64
					for next := uint(0); ; next++ {
						var out []uint
						next, out = bs.NextSetMany(next, buf)
						if len(out) == 0 {
							break
						}
						n += uint64(len(out))
						for _, p := range out {
							sum += uint64(p)
						}
					}
					if n != set {
						b.Fatalf("iterated %d, want %d", n, set)
					}
					sink += sum
				}
				b.ReportMetric(float64(set*uint64(b.N))/b.Elapsed().Seconds(), "pages/s")
			})
		}
	}
}

// BenchmarkMarkAtomic marks pages of a 256 GiB guest: random pages from one
// goroutine (the bitmap is cleared every Mi marks, timed, so most marks set a
// fresh bit), random pages from GOMAXPROCS goroutines (the bitmap is cleared
// only at the start and fills up as the run goes), and one hot word that
// every goroutine marks, with MarkAtomic's load-first fast path and with a
// plain atomic.OrUint64 for comparison.
func BenchmarkMarkAtomic(b *testing.B) {
	bm := New(benchPages)
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "marks/s")
	}
	b.Run("serial/random", func(b *testing.B) {
		bm.ClearAll()
		r := rand.New(rand.NewPCG(1, 1))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = bm.MarkAtomic(r.Uint64N(benchPages))
			if i++; i == 1<<20 {
				bm.ClearAll()
				i = 0
			}
		}
		report(b)
	})
	b.Run("parallel/random", func(b *testing.B) {
		bm.ClearAll()
		var seed atomic.Uint64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 1))
			for pb.Next() {
				_ = bm.MarkAtomic(r.Uint64N(benchPages))
			}
		})
		report(b)
	})
	b.Run("parallel/hot", func(b *testing.B) {
		bm.ClearAll()
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			var p uint64
			for pb.Next() {
				_ = bm.MarkAtomic(p % 64)
				p++
			}
		})
		report(b)
	})
	b.Run("parallel/hot-always-or", func(b *testing.B) {
		w := &bm.Words()[0]
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var p uint64
			for pb.Next() {
				atomic.OrUint64(w, 1<<(p%64))
				p++
			}
		})
		report(b)
	})
}

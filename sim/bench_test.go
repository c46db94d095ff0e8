package sim

import (
	"fmt"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"

	"github.com/livemig/livemig"
)

// lz4Ratio compresses pages of g one by one and returns raw/compressed.
func lz4Ratio(t testing.TB, g *Guest, pages uint64) float64 {
	t.Helper()
	var c lz4.Compressor
	src := make([]byte, g.PageSize())
	dst := make([]byte, lz4.CompressBlockBound(g.PageSize()))
	var raw, enc int
	for n := uint64(0); n < pages; n++ {
		if err := g.ReadPage(n, src); err != nil {
			t.Fatal(err)
		}
		if allZero(src) {
			continue
		}
		k, err := c.CompressBlock(src, dst)
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 || k > len(src) {
			k = len(src) // incompressible: sent raw
		}
		raw += len(src)
		enc += k
	}
	return float64(raw) / float64(enc)
}

func TestCompressibility(t *testing.T) {
	cases := []struct {
		entropy  float64
		min, max float64
	}{
		{0, 1.8, 3.0},   // the default, 0.4
		{0.2, 3, 8},     // very compressible
		{1, 0.99, 1.01}, // random
	}
	for _, c := range cases {
		g, _ := newGuest(t, GuestConfig{Pages: 512, Seed: 21, Entropy: c.entropy}, nil)
		r := lz4Ratio(t, g, 512)
		t.Logf("entropy %v: LZ4 ratio %.2f", g.Config().Entropy, r)
		if r < c.min || r > c.max {
			t.Errorf("entropy %v: LZ4 ratio %.2f, want %.2f..%.2f", g.Config().Entropy, r, c.min, c.max)
		}
	}
}

func BenchmarkReadPage(b *testing.B) {
	for _, c := range []struct {
		name string
		cfg  GuestConfig
	}{
		{"4K/entropy=0.4", GuestConfig{Pages: 1 << 16, ZeroFraction: -1}},
		{"4K/entropy=1", GuestConfig{Pages: 1 << 16, ZeroFraction: -1, Entropy: 1}},
		{"4K/entropy=0", GuestConfig{Pages: 1 << 16, ZeroFraction: -1, Entropy: -1}},
		{"4K/zero", GuestConfig{Pages: 1 << 16, ZeroFraction: 1}},
		{"2M/entropy=0.4", GuestConfig{Pages: 64, PageSize: 2 << 20, ZeroFraction: -1}},
	} {
		b.Run(c.name, func(b *testing.B) {
			g, _ := newGuest(b, c.cfg, nil)
			dst := make([]byte, g.PageSize())
			mask := g.PageCount() - 1
			b.SetBytes(int64(g.PageSize()))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := g.ReadPage(uint64(i)&mask, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSinkWritePage(b *testing.B) {
	g, _ := newGuest(b, GuestConfig{Pages: 1 << 12, ZeroFraction: -1}, nil)
	s, _ := NewSink(g.Config())
	pages := make([][]byte, 64)
	for i := range pages {
		pages[i] = readPage(b, g, uint64(i))
	}
	b.SetBytes(int64(g.PageSize()))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := s.WritePage(uint64(i%64), pages[i%64]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWorkload measures the cost of advancing a guest, per write
// applied (dirty bit and page state included).
func BenchmarkWorkload(b *testing.B) {
	const pages = 1 << 20
	for _, w := range []Workload{
		Uniform(1e6, false),
		HotCold(1e6, 1<<12, 0.9, false),
		Sequential(1e6, 0, 1<<16, true),
		Mix(Uniform(5e5, false), Sequential(5e5, 0, 1<<16, true)),
	} {
		b.Run(w.Name(), func(b *testing.B) {
			g, clock := newGuest(b, GuestConfig{Pages: pages}, w)
			b.ReportAllocs()
			for b.Loop() {
				clock.Advance(time.Millisecond) // 1000 writes
				g.Advance()
			}
			st := g.Stats()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(st.Writes), "ns/write")
		})
	}
}

func BenchmarkSyncDirty(b *testing.B) {
	for _, pages := range []uint64{1 << 18, 1 << 22} {
		b.Run(fmt.Sprintf("%dGiB", pages*4096>>30), func(b *testing.B) {
			g, clock := newGuest(b, GuestConfig{Pages: pages}, Uniform(1e6, false))
			d := make([]uint64, livemig.WordsFor(pages))
			b.ReportAllocs()
			for b.Loop() {
				clock.Advance(100 * time.Microsecond)
				if err := g.SyncDirty(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

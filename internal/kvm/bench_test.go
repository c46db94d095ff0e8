package kvm

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/livemig/livemig"
)

// The host-side share of a dirty-log sync, per GiB of guest memory, at
// several dirty fractions, beside physical references measured in the same
// run: clearing the guest's bitmap and copying the dirty pages. These run
// without KVM; the kernel's share is measured by BenchmarkKVMDirtySync.

const gib = 1 << 30

var fractions = []struct {
	name string
	f    float64
}{{"0.1%", 0.001}, {"1%", 0.01}, {"10%", 0.1}}

// msPerGiB reports the time per op scaled to a guest of one GiB.
func msPerGiB(b *testing.B, guestBytes float64) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6*gib/guestBytes, "ms/GiB")
}

// randomPages returns k distinct pages below pages, seeded.
func randomPages(pages uint64, k int) []uint64 {
	rng := rand.New(rand.NewPCG(uint64(k), 7))
	seen := make(map[uint64]bool, k)
	out := make([]uint64, 0, k)
	for len(out) < k {
		if p := rng.Uint64N(pages); !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// BenchmarkStitch: ORing one slot's KVM bitmap into the livemig bitmap at
// an unaligned base (the bitmap and manual logs do this per slot).
func BenchmarkStitch(b *testing.B) {
	const pages = gib / PageSize
	for _, fr := range fractions {
		b.Run(fr.name, func(b *testing.B) {
			src := make([]uint64, livemig.WordsFor(pages))
			for _, p := range randomPages(pages, int(fr.f*pages)) {
				src[p/64] |= 1 << (p % 64)
			}
			dst := make([]uint64, livemig.WordsFor(pages+5))
			b.SetBytes(gib)
			b.ReportAllocs()
			for b.Loop() {
				orShifted(dst, src, 5, pages)
			}
			msPerGiB(b, gib)
		})
	}
}

// BenchmarkRingHarvest: harvesting one vCPU's ring holding the dirty pages
// of a 1 GiB guest (acquire load and release store per entry), then
// handing them over into the livemig bitmap.
func BenchmarkRingHarvest(b *testing.B) {
	const pages = gib / PageSize
	// A slot of 1 GiB of untouched Go memory: only its length matters.
	l := &Layout{slots: []Slot{{ID: 0, Mem: make([]byte, gib)}}, base: []uint64{0}, pages: pages}
	for _, fr := range fractions {
		b.Run(fr.name, func(b *testing.B) {
			k := int(fr.f * pages)
			count := uint32(1)
			for count < uint32(k) {
				count <<= 1
			}
			p := newPending(l)
			r := &ring{mem: make([]byte, int(count)*ringEntrySize), count: count}
			offs := randomPages(pages, k)
			dst := make([]uint64, livemig.WordsFor(pages))
			b.SetBytes(gib)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				for i, o := range offs { // what KVM does when the guest writes
					putEntry(r.mem, int((r.next+uint32(i))%r.count), dirtyGFNFlagDirty, 0, o)
				}
				b.StartTimer()
				if n := r.harvest(p); n != k {
					b.Fatalf("harvested %d of %d", n, k)
				}
				if err := p.drain(dst); err != nil {
					b.Fatal(err)
				}
			}
			msPerGiB(b, gib)
		})
	}
}

// BenchmarkReference: physical references for the figures above, per GiB
// of guest: clearing its dirty bitmap (32 KiB) and copying its dirty pages.
func BenchmarkReference(b *testing.B) {
	const pages = gib / PageSize
	b.Run("memclr-bitmap", func(b *testing.B) {
		w := make([]uint64, livemig.WordsFor(pages))
		b.SetBytes(gib)
		for b.Loop() {
			clear(w)
		}
		msPerGiB(b, gib)
	})
	for _, fr := range fractions {
		b.Run(fmt.Sprintf("memcpy-dirty/%s", fr.name), func(b *testing.B) {
			n := int(fr.f*pages) * PageSize
			src, dst := make([]byte, n), make([]byte, n)
			for i := range src {
				src[i] = byte(i)
			}
			b.SetBytes(gib)
			for b.Loop() {
				copy(dst, src)
			}
			msPerGiB(b, gib)
		})
	}
}

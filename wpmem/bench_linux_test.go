//go:build linux

package wpmem_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/region"
)

// The dirty fractions of the benchmarks, of a region's pages.
var fractions = []struct {
	name string
	f    float64
}{{"0.1%", 0.001}, {"1%", 0.01}, {"10%", 0.1}}

// spread returns k distinct pages of pages, seeded, sorted.
func spread(pages uint64, k int) []uint64 {
	rng := rand.New(rand.NewPCG(uint64(k), pages))
	w := make([]uint64, livemig.WordsFor(pages))
	for n := 0; n < k; {
		if bitmap.Words(w).Set(rng.Uint64N(pages)) {
			n++
		}
	}
	var out []uint64
	for p, ok := bitmap.Words(w).NextSet(0); ok; p, ok = bitmap.Words(w).NextSet(p + 1) {
		out = append(out, p)
	}
	return out
}

// populate writes every page once, so the memory is resident as a
// guest's would be.
func populate(mem []byte, ps int) {
	for off := 0; off < len(mem); off += ps {
		mem[off] = 1
	}
}

func perGiB(b *testing.B, bytes int, unit string) {
	if b.N > 0 {
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(ns/1e6*float64(1<<30)/float64(bytes), unit)
	}
}

func perPage(b *testing.B, pages int, unit string) {
	if b.N > 0 && pages > 0 {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(pages), unit)
	}
}

// benchFaultRef: the same stores into plain memory whose pages were
// dropped (MADV_DONTNEED, outside the timer), so that each takes an
// ordinary anonymous page fault (a page allocated and zeroed): a reference
// for the cost of a fault on this machine.
func benchFaultRef(b *testing.B, mib int, f float64) {
	ps := unix.Getpagesize()
	pages := uint64(mib << 20 / ps)
	mem := mapPlain(b, int(pages)*ps)
	dirty := spread(pages, int(float64(pages)*f))
	b.SetBytes(int64(len(dirty) * ps))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for _, n := range dirty {
			binary.LittleEndian.PutUint64(mem[int(n)*ps:], uint64(i))
		}
	}
	b.StopTimer()
	perGiB(b, len(dirty)*ps, "ms/GiB")
	perPage(b, len(dirty), "ns/page")
}

type tracker struct {
	name  string
	open  func(b *testing.B, pages uint64) (mem []byte, ps int, sync func([]uint64) error, write func(n uint64, word []byte), done func())
	store bool // write stores into mem; otherwise it goes through write
}

var trackers = []tracker{
	{name: "kernel", open: openKernel, store: true},
	{name: "software", open: openSoftware},
}

func openKernel(b *testing.B, pages uint64) ([]byte, int, func([]uint64) error, func(uint64, []byte), func()) {
	r := newOrSkip(b, pages)
	mem, ps := r.Bytes(), r.PageSize()
	return mem, ps, r.SyncDirty, func(n uint64, word []byte) { copy(mem[int(n)*ps:], word) }, func() {}
}

func openSoftware(b *testing.B, pages uint64) ([]byte, int, func([]uint64) error, func(uint64, []byte), func()) {
	ps := unix.Getpagesize()
	r, err := region.New(ps, pages)
	if err != nil {
		b.Fatal(err)
	}
	return r.Bytes(), ps, r.SyncDirty, func(n uint64, word []byte) {
		if err := r.Write(n, 0, word); err != nil {
			b.Fatal(err)
		}
	}, func() { r.Close() }
}

// BenchmarkSyncDirty: the cost of one SyncDirty of a region of which a
// fraction of the pages was written since the last (one word each, outside
// the timer), for the kernel's tracking (PAGEMAP_SCAN with WP_MATCHING, a
// walk of the page tables) and for region's software bitmap; and, as a
// physical reference, a memcpy of the dirtied pages (what a round then
// does with them at the least). SetBytes is the region's size; ms/GiB is
// the time of a sync per GiB of region.
func BenchmarkSyncDirty(b *testing.B) {
	for _, mib := range []int{64, 256} {
		for _, fr := range append([]struct {
			name string
			f    float64
		}{{"0%", 0}}, fractions...) {
			for _, tr := range trackers {
				b.Run(fmt.Sprintf("%dMiB/dirty=%s/%s", mib, fr.name, tr.name), func(b *testing.B) {
					pages := uint64(mib << 20 / unix.Getpagesize())
					mem, ps, sync, write, done := tr.open(b, pages)
					defer done()
					populate(mem, ps)
					dirty := spread(pages, int(float64(pages)*fr.f))
					dst := make([]uint64, livemig.WordsFor(pages))
					if err := sync(dst); err != nil {
						b.Fatal(err)
					}
					var word [8]byte
					b.SetBytes(int64(len(mem)))
					b.ReportAllocs()
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						b.StopTimer()
						binary.LittleEndian.PutUint64(word[:], uint64(i))
						for _, n := range dirty {
							write(n, word[:])
						}
						clear(dst)
						b.StartTimer()
						if err := sync(dst); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					if got := bitmap.CountWords(dst); got != uint64(len(dirty)) {
						b.Fatalf("sync reported %d pages, %d written", got, len(dirty))
					}
					perGiB(b, len(mem), "ms/GiB")
					perPage(b, len(dirty), "ns/dirty-page")
				})
			}
			b.Run(fmt.Sprintf("%dMiB/dirty=%s/memcpy-ref", mib, fr.name), func(b *testing.B) {
				benchCopyRef(b, mib, fr.f)
			})
		}
	}
}

func benchCopyRef(b *testing.B, mib int, f float64) {
	ps := unix.Getpagesize()
	pages := uint64(mib << 20 / ps)
	mem := mapPlain(b, int(pages)*ps)
	dirty := spread(pages, int(float64(pages)*f))
	buf := make([]byte, ps)
	b.SetBytes(int64(len(mem)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, n := range dirty {
			copy(buf, mem[int(n)*ps:int(n+1)*ps])
		}
	}
	b.StopTimer()
	perGiB(b, len(mem), "ms/GiB")
	perPage(b, len(dirty), "ns/dirty-page")
}

func mapPlain(b *testing.B, size int) []byte {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Munmap(mem) })
	populate(mem, 4096)
	return mem
}

// BenchmarkWrite: the writers' cost of the tracking, one 8-byte store into
// each of a fraction of a 64 MiB region's pages, right after a sync (outside
// the timer) re-armed the tracking. kernel: a plain store, which takes the
// write-protect fault the kernel resolves by itself (first write after a
// sync); kernel-again: a second store to the same pages, no fault;
// software: region.Write, which takes the page lock and marks the bitmap;
// memclr-ref: clearing those pages whole in plain memory, a physical
// reference; fault-ref: the stores of kernel into plain memory whose pages
// were dropped, an ordinary page fault each. SetBytes is the dirtied pages' bytes; ms/GiB is per GiB
// dirtied.
func BenchmarkWrite(b *testing.B) {
	const mib = 64
	for _, fr := range fractions {
		for _, tr := range append(trackers, tracker{name: "kernel-again", open: openKernel, store: true}) {
			b.Run(fmt.Sprintf("dirty=%s/%s", fr.name, tr.name), func(b *testing.B) {
				pages := uint64(mib << 20 / unix.Getpagesize())
				mem, ps, sync, write, done := tr.open(b, pages)
				defer done()
				populate(mem, ps)
				dirty := spread(pages, int(float64(pages)*fr.f))
				dst := make([]uint64, livemig.WordsFor(pages))
				var word [8]byte
				b.SetBytes(int64(len(dirty) * ps))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					if err := sync(dst); err != nil {
						b.Fatal(err)
					}
					if tr.name == "kernel-again" {
						for _, n := range dirty {
							mem[int(n)*ps+8] = byte(i)
						}
					}
					b.StartTimer()
					binary.LittleEndian.PutUint64(word[:], uint64(i))
					if tr.store {
						for _, n := range dirty {
							binary.LittleEndian.PutUint64(mem[int(n)*ps:], uint64(i))
						}
					} else {
						for _, n := range dirty {
							write(n, word[:])
						}
					}
				}
				b.StopTimer()
				perGiB(b, len(dirty)*ps, "ms/GiB")
				perPage(b, len(dirty), "ns/page")
			})
		}
		b.Run(fmt.Sprintf("dirty=%s/fault-ref", fr.name), func(b *testing.B) {
			benchFaultRef(b, mib, fr.f)
		})
		b.Run(fmt.Sprintf("dirty=%s/memclr-ref", fr.name), func(b *testing.B) {
			ps := unix.Getpagesize()
			pages := uint64(mib << 20 / ps)
			mem := mapPlain(b, int(pages)*ps)
			dirty := spread(pages, int(float64(pages)*fr.f))
			b.SetBytes(int64(len(dirty) * ps))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for _, n := range dirty {
					clear(mem[int(n)*ps : int(n+1)*ps])
				}
			}
			b.StopTimer()
			perGiB(b, len(dirty)*ps, "ms/GiB")
			perPage(b, len(dirty), "ns/page")
		})
	}
}

// BenchmarkSyncDirtyPacked: the kernel's SyncDirty of 256 MiB when the
// written pages lie together at the start of the region instead of spread
// over it: the same number of dirty pages in as few 2 MiB blocks (512
// pages) of page table as they fill, against spread, which touches nearly
// every block from 1 % up.
func BenchmarkSyncDirtyPacked(b *testing.B) {
	const mib = 256
	for _, fr := range fractions {
		for _, packed := range []bool{false, true} {
			b.Run(fmt.Sprintf("dirty=%s/%s", fr.name, map[bool]string{false: "spread", true: "packed"}[packed]), func(b *testing.B) {
				pages := uint64(mib << 20 / unix.Getpagesize())
				mem, ps, sync, _, done := openKernel(b, pages)
				defer done()
				populate(mem, ps)
				dirty := spread(pages, int(float64(pages)*fr.f))
				if packed {
					for i := range dirty {
						dirty[i] = uint64(i)
					}
				}
				dst := make([]uint64, livemig.WordsFor(pages))
				if err := sync(dst); err != nil {
					b.Fatal(err)
				}
				blocks := map[uint64]bool{}
				for _, n := range dirty {
					blocks[n/512] = true
				}
				b.SetBytes(int64(len(mem)))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					for _, n := range dirty {
						mem[int(n)*ps] = byte(i)
					}
					clear(dst)
					b.StartTimer()
					if err := sync(dst); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				perGiB(b, len(mem), "ms/GiB")
				perPage(b, len(dirty), "ns/dirty-page")
				perPage(b, len(blocks), "ns/2MiB-block")
			})
		}
	}
}

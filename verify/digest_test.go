package verify

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

func TestDigestNewestWins(t *testing.T) {
	const pages, ps = 64, 4096
	rng := rand.New(rand.NewPCG(1, 2))
	src, dst := New(pages, ps), New(pages, ps)
	final := make([][]byte, pages)
	for round := 0; round < 3; round++ {
		for n := uint64(0); n < pages; n++ {
			p := make([]byte, ps)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			src.Update(n, p)
			final[n] = p
		}
	}
	for n := uint64(0); n < pages; n++ {
		dst.Update(n, final[n])
	}
	if src.Sum() != dst.Sum() {
		t.Fatalf("same final pages, different sums %x %x", src.Sum(), dst.Sum())
	}
	// A stale page at the destination changes the sum.
	stale := append([]byte(nil), final[7]...)
	stale[100] ^= 1
	dst.Update(7, stale)
	if src.Sum() == dst.Sum() {
		t.Fatal("a flipped bit went unnoticed")
	}
	// Pages swapped between two numbers change the sum.
	dst.Update(7, final[8])
	dst.Update(8, final[7])
	if src.Sum() == dst.Sum() {
		t.Fatal("swapped pages went unnoticed")
	}
	dst.Update(7, final[7])
	dst.Update(8, final[8])
	if src.Sum() != dst.Sum() {
		t.Fatal("restored pages, different sums")
	}
}

func TestDigestZeroAndUnseen(t *testing.T) {
	a, b := New(4, 4096), New(4, 4096)
	a.Zero(2)
	b.Update(2, make([]byte, 4096))
	if a.Sum() != b.Sum() {
		t.Fatal("a zero record and a page of zeros must agree")
	}
	if !a.Seen(2) || a.Seen(1) {
		t.Fatal("Seen wrong")
	}
	c := New(4, 4096)
	if c.Sum() == a.Sum() {
		t.Fatal("a missing page must change the sum")
	}
}

func BenchmarkUpdate(b *testing.B) {
	d := New(1024, 4096)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.Update(uint64(i&1023), p)
	}
}

// Every bit of the page number counts: pages 2^32 apart have other terms,
// while page numbers below 2^32 keep the terms they always had.
func TestTermUsesEveryPageBit(t *testing.T) {
	for _, n := range []uint64{0, 1, 12345, 1<<32 - 1} {
		if Term(n, 7) == Term(n+1<<32, 7) {
			t.Errorf("pages %d and %d have the same term", n, n+1<<32)
		}
	}
}

// Goroutines updating pages at once, in the codec's stripes and across
// them, give the sum and the count one goroutine gives in any order.
func TestDigestConcurrent(t *testing.T) {
	const pages = 5000
	crc := func(n uint64, round int) uint32 { return uint32(n*2654435761) ^ uint32(round) }
	serial := New(pages, 4096)
	for n := range uint64(pages) {
		serial.UpdateCRC(n, crc(n, 1))
	}
	for n := uint64(0); n < pages; n += 3 {
		serial.UpdateCRC(n, crc(n, 2)) // a newer copy of every third page
	}
	d := New(pages, 4096)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := uint64(g); n < pages; n += 4 {
				d.UpdateCRC(n, crc(n, 1))
			}
		}()
	}
	wg.Wait()
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := uint64(pages - 1); n < pages; n-- {
				if n%3 == 0 && int(n/3)%3 == g {
					d.UpdateCRC(n, crc(n, 2))
				}
			}
		}()
	}
	wg.Wait()
	if d.Sum() != serial.Sum() || d.Covered() != pages {
		t.Fatalf("concurrent: sum %016x, %d pages; serial: %016x, %d", d.Sum(), d.Covered(), serial.Sum(), serial.Covered())
	}
}

// BenchmarkUpdateCRCParallel updates a digest from GOMAXPROCS goroutines,
// each on runs of 64 pages of its own as the codec's workers are: the
// cost of the digest's shared state (ns per page, all goroutines).
func BenchmarkUpdateCRCParallel(b *testing.B) {
	const pages = 1 << 18 // a 1 GiB guest
	d := New(pages, 4096)
	var next atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		run := next.Add(1) - 1
		n := run * 64
		for pb.Next() {
			d.UpdateCRC(n%pages, uint32(n))
			if n++; n%64 == 0 {
				run = next.Add(1) - 1
				n = run * 64
			}
		}
	})
}

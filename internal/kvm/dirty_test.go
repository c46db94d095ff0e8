package kvm

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/livemig/livemig"
)

// TestOrShifted compares orShifted with a bit-by-bit reference at every
// shift, with random sources and lengths.
func TestOrShifted(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		n := uint64(rng.IntN(300))
		base := uint64(rng.IntN(200))
		src := make([]uint64, livemig.WordsFor(n)+1) // one word past n: ignored
		for i := range src {
			src[i] = rng.Uint64()
		}
		dst := make([]uint64, livemig.WordsFor(base+n))
		for i := range dst {
			dst[i] = rng.Uint64() & rng.Uint64()
		}
		want := slices.Clone(dst)
		for i := uint64(0); i < n; i++ {
			if src[i/64]&(1<<(i%64)) != 0 {
				want[(base+i)/64] |= 1 << ((base + i) % 64)
			}
		}
		orShifted(dst, src, base, n)
		if !slices.Equal(dst, want) {
			t.Fatalf("base %d n %d: got %x, want %x", base, n, dst, want)
		}
	}
}

func putEntry(mem []byte, i int, flags, slot uint32, off uint64) {
	e := mem[i*ringEntrySize:]
	binary.LittleEndian.PutUint32(e, flags)
	binary.LittleEndian.PutUint32(e[4:], slot)
	binary.LittleEndian.PutUint64(e[8:], off)
}

// TestRingHarvest drives harvest over a ring in a plain buffer, as KVM
// would fill it: in order, stopping at the first entry not DIRTY, handing
// entries back as RESET, wrapping around, and mapping (slot, offset) into
// the layout's numbering.
func TestRingHarvest(t *testing.T) {
	l := twoSlots(t) // slot 0: pages 0-4; slot 3: pages 5-74
	r := &ring{mem: make([]byte, 8*ringEntrySize), count: 8}
	p := newPending(l)
	putEntry(r.mem, 0, dirtyGFNFlagDirty, 0, 4)
	putEntry(r.mem, 1, dirtyGFNFlagDirty, 3, 69)
	putEntry(r.mem, 2, 0, 3, 1) // not yet published
	putEntry(r.mem, 3, dirtyGFNFlagDirty, 3, 2)
	if n := r.harvest(p); n != 2 || r.next != 2 {
		t.Fatalf("harvest = %d, next %d; want 2, 2", n, r.next)
	}
	for i, want := range []uint32{dirtyGFNFlagReset, dirtyGFNFlagReset, 0, dirtyGFNFlagDirty} {
		if got := binary.LittleEndian.Uint32(r.mem[i*ringEntrySize:]); got != want {
			t.Errorf("entry %d flags %d, want %d", i, got, want)
		}
	}
	// KVM publishes 2..9 (wrapping onto entries 0 and 1 after its reset).
	for i := 2; i < 10; i++ {
		putEntry(r.mem, i%8, dirtyGFNFlagDirty, 3, uint64(10+i))
	}
	if n := r.harvest(p); n != 8 || r.next != 10 {
		t.Fatalf("second harvest = %d, next %d; want 8, 10", n, r.next)
	}
	dst := make([]uint64, livemig.WordsFor(l.PageCount()))
	if err := p.drain(dst); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for n := uint64(0); n < l.PageCount(); n++ {
		if dst[n/64]&(1<<(n%64)) != 0 {
			got = append(got, n)
		}
	}
	want := []uint64{4, 5 + 12, 5 + 13, 5 + 14, 5 + 15, 5 + 16, 5 + 17, 5 + 18, 5 + 19, 5 + 69}
	if !slices.Equal(got, want) {
		t.Fatalf("drained pages %v, want %v", got, want)
	}
	clear(dst)
	if err := p.drain(dst); err != nil || slices.ContainsFunc(dst, func(w uint64) bool { return w != 0 }) {
		t.Fatalf("second drain: %x, %v", dst, err)
	}
}

func TestRingBadEntry(t *testing.T) {
	l := twoSlots(t)
	p := newPending(l)
	p.mark(7, 0)       // unknown slot
	p.mark(3, 70)      // past slot 3's end
	p.mark(1<<16|3, 1) // SMM address space
	p.mark(3, 1)       // fine
	dst := make([]uint64, 2)
	err := p.drain(dst)
	if !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("drain after bad entries: err = %v, want ErrCorrupt", err)
	}
	if dst[0] != 1<<6 || dst[1] != 0 {
		t.Fatalf("drained %x, want page 6 only", dst)
	}
	if err := p.drain(dst); err != nil {
		t.Fatalf("error reported twice: %v", err)
	}
}

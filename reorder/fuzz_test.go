package reorder

import (
	"encoding/binary"
	"slices"
	"testing"
)

// FuzzPlan checks Frequency against the naive reference on arbitrary
// histories. data is read as: the page count (2 bytes, at most 1023), the
// halving interval (1 byte, mod 5), then syncs, each a word count (1 byte)
// and that many 8-byte little-endian words, the last being the bitmap to
// plan. Word counts may exceed or fall short of the guest's.
func FuzzPlan(f *testing.F) {
	f.Add([]byte{8, 0, 0, 1, 0x0a, 0, 0, 0, 0, 0, 0, 0, 1, 0x08, 0, 0, 0, 0, 0, 0, 0, 1, 0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x6a, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 3 {
			return
		}
		pages := uint64(binary.LittleEndian.Uint16(data)) % 1024
		halve := int(data[2] % 5)
		data = data[3:]
		fr, err := NewFrequency(pages, FrequencyConfig{HalveEvery: halve})
		if err != nil {
			t.Fatal(err)
		}
		ref := &naive{pages: pages, halve: halve, count: map[uint64]int{}}
		var dirty []uint64
		for len(data) > 0 {
			n := int(data[0]) % 20
			data = data[1:]
			dirty = make([]uint64, n)
			for i := range dirty {
				if len(data) >= 8 {
					dirty[i] = binary.LittleEndian.Uint64(data)
					data = data[8:]
				} else {
					dirty[i] = ^uint64(0) >> (i % 64)
				}
			}
			if len(data) > 0 {
				fr.Observe(dirty)
				ref.observe(dirty)
			}
		}
		keep := slices.Clone(dirty)
		got := fr.Plan(nil, dirty)
		if want := ref.plan(dirty); !slices.Equal(got, want) {
			t.Fatalf("pages %d halve %d:\n got %v\nwant %v", pages, halve, got, want)
		}
		if !slices.Equal(dirty, keep) {
			t.Fatal("Plan modified dirty")
		}
		if seq := Sequential().Plan(nil, dirty); len(seq) != len(got) {
			t.Fatalf("sequential planned %d pages, frequency %d", len(seq), len(got))
		}
	})
}

package bitmap

import (
	"encoding/binary"
	"slices"
	"testing"
)

// FuzzFromWords adopts arbitrary words with an arbitrary page count and
// checks every reader against the naive model: Count, Test, ForEach,
// NextSetMany with the fuzzed buffer size and start, and a drain.
func FuzzFromWords(f *testing.F) {
	f.Add([]byte{}, uint64(0), uint64(0), uint8(1))
	f.Add([]byte{0xff, 0, 0, 0, 0, 0, 0, 0x80}, uint64(64), uint64(0), uint8(3))
	f.Add(slices.Repeat([]byte{0xa5}, 24), uint64(130), uint64(7), uint8(4))
	f.Add(slices.Repeat([]byte{0xff}, 16), uint64(65), uint64(64), uint8(0))
	f.Fuzz(func(t *testing.T, raw []byte, pages, start uint64, bufLen uint8) {
		words := make([]uint64, len(raw)/8)
		for i := range words {
			words[i] = binary.LittleEndian.Uint64(raw[8*i:])
		}
		b, err := FromWords(words, pages)
		if err != nil {
			if pages <= uint64(len(words))*64 {
				t.Fatalf("FromWords(%d words, %d pages): %v", len(words), pages, err)
			}
			return
		}
		var want []uint64
		for p := uint64(0); p < pages; p++ {
			if words[p/64]&(1<<(p%64)) != 0 {
				want = append(want, p)
			}
		}
		if b.Count() != uint64(len(want)) {
			t.Fatalf("Count %d, want %d", b.Count(), len(want))
		}
		if got := collect(b); !slices.Equal(got, append([]uint64{}, want...)) {
			t.Fatalf("ForEach %v, want %v", got, want)
		}
		buf := make([]uint64, bufLen)
		var got []uint64
		for next, i := start, 0; i <= len(want); i++ {
			var out []uint64
			next, out = b.NextSetMany(next, buf)
			if len(out) == 0 {
				break
			}
			got = append(got, out...)
		}
		var wantFrom []uint64
		if bufLen > 0 {
			for _, p := range want {
				if p >= start {
					wantFrom = append(wantFrom, p)
				}
			}
		}
		if !slices.Equal(got, wantFrom) {
			t.Fatalf("NextSetMany from %d with buf %d: %v, want %v", start, bufLen, got, wantFrom)
		}
		if b.Test(start) != slices.Contains(want, start) {
			t.Fatalf("Test(%d) wrong", start)
		}
		dst := New(pages)
		if n, err := b.DrainInto(dst.Words()); err != nil || n != uint64(len(want)) || b.Count() != 0 || dst.Count() != n {
			t.Fatalf("DrainInto = %d, %v", n, err)
		}
	})
}

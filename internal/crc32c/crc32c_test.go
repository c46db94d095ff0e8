package crc32c

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

var table = crc32.MakeTable(crc32.Castagnoli)

// Combine agrees with hash/crc32 over the concatenation, for every split of
// random buffers and for the lengths the transport uses.
func TestCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 7, 13, 64, 100, 4096, 4096 + 13, 65536} {
		buf := make([]byte, n+300)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		for _, a := range []int{0, 1, 13, 299, 300} {
			whole := crc32.Checksum(buf[:a+n], table)
			ca, cb := crc32.Checksum(buf[:a], table), crc32.Checksum(buf[a:a+n], table)
			if got := Combine(ca, cb, n); got != whole {
				t.Fatalf("Combine(%d bytes, %d bytes) = %#08x, want %#08x", a, n, got, whole)
			}
			if got := NewShifter(n).Combine(ca, cb); got != whole {
				t.Fatalf("Shifter(%d).Combine after %d bytes = %#08x, want %#08x", n, a, got, whole)
			}
		}
	}
}

// A flipped bit anywhere changes the combined CRC as it changes the whole's.
func TestCombineDetects(t *testing.T) {
	a, b := make([]byte, 100), make([]byte, 4096)
	ca, cb := crc32.Checksum(a, table), crc32.Checksum(b, table)
	good := Combine(ca, cb, len(b))
	b[4000] ^= 4
	if Combine(ca, crc32.Checksum(b, table), len(b)) == good {
		t.Fatal("a flipped bit in b left the combined CRC unchanged")
	}
}

func BenchmarkCombine(b *testing.B) {
	s := NewShifter(4096)
	page := make([]byte, 4096)
	b.Run("shifter", func(b *testing.B) {
		var c uint32
		for b.Loop() {
			c = s.Combine(c, 0x12345678)
		}
		_ = c
	})
	b.Run("crc-4KiB", func(b *testing.B) {
		b.SetBytes(4096)
		var c uint32
		for b.Loop() {
			c = crc32.Update(c, table, page)
		}
		_ = c
	})
}

func BenchmarkCombineFrame(b *testing.B) {
	var c uint32
	for b.Loop() {
		c = Combine(c, 0x12345678, 256<<10+64*13)
	}
	_ = c
}

package crc32c

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// Update agrees with hash/crc32 for every length around the vector path's
// block boundaries, from any starting CRC and any alignment.
func TestUpdate(t *testing.T) {
	if !hasFold {
		t.Log("this CPU has no AVX-512 VPCLMULQDQ: Update is hash/crc32's code, compared with itself")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 9000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for n := 0; n <= 1300; n++ {
		for _, off := range []int{0, 1, 7} {
			p := buf[off : off+n]
			init := rng.Uint32()
			if got, want := Update(init, p), crc32.Update(init, table, p); got != want {
				t.Fatalf("Update(%#x, %d bytes at +%d) = %#08x, want %#08x", init, n, off, got, want)
			}
		}
	}
	for _, n := range []int{4096, 4096 + 13, 8192, 8999} {
		if got, want := Checksum(buf[:n]), crc32.Checksum(buf[:n], table); got != want {
			t.Fatalf("Checksum(%d bytes) = %#08x, want %#08x", n, got, want)
		}
	}
}

// FuzzUpdate compares Update with hash/crc32 on any input.
func FuzzUpdate(f *testing.F) {
	f.Add(uint32(0), make([]byte, 512))
	f.Add(uint32(0xffffffff), make([]byte, 4096))
	f.Fuzz(func(t *testing.T, init uint32, p []byte) {
		if got, want := Update(init, p), crc32.Update(init, table, p); got != want {
			t.Fatalf("Update(%#x, %d bytes) = %#08x, want %#08x", init, len(p), got, want)
		}
	})
}

// BenchmarkUpdate: Update against hash/crc32 on a 4 KiB page and a 256 KiB
// frame, from L1 and L2.
func BenchmarkUpdate(b *testing.B) {
	for _, n := range []int{4096, 256 << 10} {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i * 7)
		}
		name := "4KiB"
		if n > 4096 {
			name = "256KiB"
		}
		b.Run(name+"/crc32c", func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				Update(0, p)
			}
		})
		b.Run(name+"/hash-crc32", func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				crc32.Update(0, table, p)
			}
		})
	}
}

//go:build !purego

package crc32c

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// hasFold is whether this CPU runs foldAVX512: AVX-512 F and VL,
// VPCLMULQDQ, and SSE4.2's CRC32 for the last 16 bytes (x/sys/cpu checks
// that the OS saves the vector registers).
var hasFold = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasSSE42

// foldAVX512 returns the raw (not inverted) CRC32C state after the n
// bytes at p from state s; n is a multiple of 256, at least 512.
//
//go:noescape
func foldAVX512(s uint32, p *byte, n int, k *foldKeys) uint32

// foldUpdate is foldAVX512 over p, whose length is a multiple of
// foldBlock of at least two blocks. Call it only where hasFold.
func foldUpdate(s uint32, p []byte) uint32 {
	return foldAVX512(s, unsafe.SliceData(p), len(p), keys)
}

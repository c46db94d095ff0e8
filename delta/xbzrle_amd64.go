//go:build !purego

package delta

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// hasAVX2 is whether this CPU runs the AVX2 scanners; useAVX2 is whether
// Encode uses them (tests switch it off to compare with the Go scanners).
var (
	hasAVX2 = cpu.X86.HasAVX2
	useAVX2 = hasAVX2
)

// eqLenAVX2 returns the length of the common prefix of a[:n] and b[:n];
// n >= 32.
//
//go:noescape
func eqLenAVX2(a, b *byte, n int) int

// neLenAVX2 returns the length of the prefix of a[:n] and b[:n] that differs
// in every byte; n >= 32.
//
//go:noescape
func neLenAVX2(a, b *byte, n int) int

// eqLen returns the length of the longest common prefix of a and b
// (len(b) >= len(a)).
func eqLen(a, b []byte) int {
	if useAVX2 && len(a) >= 32 {
		_ = b[len(a)-1]
		return eqLenAVX2(unsafe.SliceData(a), unsafe.SliceData(b), len(a))
	}
	return eqLenGeneric(a, b)
}

// neLen returns the length of the longest prefix where a and b differ in
// every byte (len(b) >= len(a)).
func neLen(a, b []byte) int {
	if useAVX2 && len(a) >= 32 {
		_ = b[len(a)-1]
		return neLenAVX2(unsafe.SliceData(a), unsafe.SliceData(b), len(a))
	}
	return neLenGeneric(a, b)
}

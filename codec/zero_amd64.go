//go:build !purego

package codec

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// hasAVX512 is whether this CPU runs isZeroAVX512 (AVX-512F; x/sys/cpu
// checks that the OS saves the ZMM and K registers).
var hasAVX512 = cpu.X86.HasAVX512F

// isZeroAVX512 reports whether the n bytes at p are all zero; n is a
// multiple of 64.
//
//go:noescape
func isZeroAVX512(p *byte, n int) bool

// isZeroVec is IsZero with AVX-512 over the page's 64-byte blocks and
// bytes.Equal for the rest: the alternative BenchmarkIsZeroRatio measures
// (and TestIsZero checks), not used by IsZero since it does not pay on
// pages read from memory. Call it only where hasAVX512.
func isZeroVec(page []byte) bool {
	n := len(page) &^ 63
	if n > 0 && !isZeroAVX512(unsafe.SliceData(page), n) {
		return false
	}
	return isZeroEqual(page[n:])
}

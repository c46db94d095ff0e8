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
// bytes.Equal for the rest. Call it only where hasAVX512.
//
// BenchmarkIsZeroRatio measures it against bytes.Equal (IsZero): 2.3x on a
// page in L1, 1.5x in L2, but 0.83x on zero pages read from memory; on a
// page just copied into a buffer (ReadPage, then the check) the pair is
// 1.5x as fast from L2 and 1.05-1.3x from memory. So the worker uses it
// for pages it copied (isZeroCopied), and IsZero, which reads pages where
// they lie, does not.
func isZeroVec(page []byte) bool {
	n := len(page) &^ 63
	if n > 0 && !isZeroAVX512(unsafe.SliceData(page), n) {
		return false
	}
	return isZeroEqual(page[n:])
}

// isZeroCopied is IsZero for a page just copied into a buffer (in the L1
// cache): AVX-512 where the CPU has it.
func isZeroCopied(page []byte) bool {
	if hasAVX512 {
		return isZeroVec(page)
	}
	return isZeroEqual(page)
}

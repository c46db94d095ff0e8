package codec

import (
	"bytes"
	"encoding/binary"
)

// zeroPage is compared against by IsZero and stored in the XBZRLE cache for
// pages sent as zero pages.
var zeroPage [64 << 10]byte

// IsZero reports whether page is all zeros.
//
// It compares page with a static zero page through bytes.Equal, whose
// runtime implementation (memequal) uses the widest vector loads the CPU
// has; BenchmarkIsZero measures it against isZeroWords, a portable
// eight-word OR loop, and found it the faster of the two (see the package
// doc for the figures). BenchmarkIsZeroRatio also measures an AVX-512 check
// (isZeroVec, zero_amd64.s), which reads only the page: faster on a page in
// the cache, slower on zero pages read from memory, as IsZero reads a
// guest's pages; the pipeline's workers use it on the pages they have just
// copied (docs/BENCHMARKS.md).
func IsZero(page []byte) bool {
	return isZeroEqual(page)
}

// isZeroEqual is IsZero through bytes.Equal against zeroPage.
func isZeroEqual(page []byte) bool {
	for len(page) > len(zeroPage) {
		if !bytes.Equal(page[:len(zeroPage)], zeroPage[:]) {
			return false
		}
		page = page[len(zeroPage):]
	}
	return bytes.Equal(page, zeroPage[:len(page)])
}

// isZeroWords is IsZero as an unrolled loop ORing eight 64-bit words at a
// time, with an early exit every 64 bytes. It is the reference the tests
// compare IsZero with, and the alternative the benchmark measures.
func isZeroWords(page []byte) bool {
	for len(page) >= 64 {
		p := page[:64:64]
		if binary.LittleEndian.Uint64(p[0:])|binary.LittleEndian.Uint64(p[8:])|
			binary.LittleEndian.Uint64(p[16:])|binary.LittleEndian.Uint64(p[24:])|
			binary.LittleEndian.Uint64(p[32:])|binary.LittleEndian.Uint64(p[40:])|
			binary.LittleEndian.Uint64(p[48:])|binary.LittleEndian.Uint64(p[56:]) != 0 {
			return false
		}
		page = page[64:]
	}
	for _, b := range page {
		if b != 0 {
			return false
		}
	}
	return true
}

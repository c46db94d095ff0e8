//go:build !purego

package delta

import (
	"os"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// hasAVX2 is whether this CPU runs the AVX2 scanners, hasAVX512 whether it
// runs the AVX-512 encoder (AVX-512F and BW, with BMI1 and BMI2 for TZCNT,
// SHRX and BZHI; x/sys/cpu also checks that the OS saves the ZMM and K
// registers). useAVX2 and useAVX512 are what Encode uses; setPath changes
// them (tests, and LIVEMIG_DELTA_PATH at init).
var (
	hasAVX2   = cpu.X86.HasAVX2
	hasAVX512 = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasBMI1 && cpu.X86.HasBMI2
	useAVX2   = hasAVX2
	useAVX512 = hasAVX512
)

func init() {
	if p := os.Getenv(pathEnv); p != "" {
		setPath(p)
	}
}

// eqMasksAVX2 sets masks[j] bit k where a[64j+k] == b[64j+k], for
// j < nblocks (nblocks >= 1), and returns the AND and the OR of the masks.
//
//go:noescape
func eqMasksAVX2(a, b *byte, nblocks int, masks *uint64) (all, any uint64)

// encodeAVX512 is encode in AVX-512BW assembly: out points to w bytes,
// old and new to n >= 1 bytes, limit >= 2, w >= min(limit, 2n+16). It
// returns the delta's length, 0 for unchanged or -1 for overflow.
//
//go:noescape
func encodeAVX512(out *byte, w int, old, new *byte, n, limit int) int

// encodePage is encode on the fastest path this CPU has (or the one
// setPath chose), with encode's arguments and results.
func encodePage(out, old, new []byte, limit int) int {
	n := len(new)
	if useAVX512 {
		_, _ = old[n-1], out[min(limit, 2*n+16)-1]
		return encodeAVX512(unsafe.SliceData(out), len(out), unsafe.SliceData(old),
			unsafe.SliceData(new), n, limit)
	}
	return encode(out, old, new, limit)
}

// eqMasks sets masks[j] bit k where a[64j+k] == b[64j+k], for len(masks)
// blocks (len(a), len(b) >= 64*len(masks)), and returns the AND and the OR
// of the masks.
func eqMasks(masks []uint64, a, b []byte) (all, any uint64) {
	if useAVX2 && len(masks) > 0 {
		_, _ = a[64*len(masks)-1], b[64*len(masks)-1]
		return eqMasksAVX2(unsafe.SliceData(a), unsafe.SliceData(b), len(masks), unsafe.SliceData(masks))
	}
	return eqMasksGeneric(masks, a, b)
}

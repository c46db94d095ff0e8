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

// eqMasksAVX2 sets masks[j] bit k where a[64j+k] == b[64j+k], for
// j < nblocks (nblocks >= 1), and returns the AND and the OR of the masks.
//
//go:noescape
func eqMasksAVX2(a, b *byte, nblocks int, masks *uint64) (all, any uint64)

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

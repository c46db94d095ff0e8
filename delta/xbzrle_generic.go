//go:build purego || !amd64

package delta

// No assembly in this build: the scanners are the Go ones.
var (
	hasAVX2   = false
	hasAVX512 = false
	useAVX2   = false
	useAVX512 = false
)

func encodePage(out, old, new []byte, limit int) int {
	return encode(out, old, new, limit)
}

func eqMasks(masks []uint64, a, b []byte) (all, any uint64) {
	return eqMasksGeneric(masks, a, b)
}

//go:build purego || !amd64

package delta

// No assembly in this build: the scanners are the Go ones.
var (
	hasAVX2 = false
	useAVX2 = false
)

func eqLen(a, b []byte) int { return eqLenGeneric(a, b) }

func neLen(a, b []byte) int { return neLenGeneric(a, b) }

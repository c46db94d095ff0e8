//go:build purego || !amd64

package codec

// No assembly in this build.
const hasAVX512 = false

func isZeroVec(page []byte) bool { return isZeroEqual(page) }

func isZeroCopied(page []byte) bool { return isZeroEqual(page) }

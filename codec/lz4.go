package codec

import "github.com/pierrec/lz4/v4"

// lz4Compress compresses src into dst with c and returns the block's
// length, or 0 when the block would not fit in dst: the caller then sends
// the page raw. It is the only place that calls lz4 with its (src, dst)
// argument order. PageEncoder passes a dst of MaxLZ4 bytes.
func lz4Compress(c *lz4.Compressor, dst, src []byte) int {
	n, err := c.CompressBlock(src, dst)
	if err != nil || n <= 0 || n > len(dst) {
		return 0 // (0, nil) or an error: does not fit, send raw
	}
	return n
}

// lz4Decompress decompresses the LZ4 block src into dst and returns the
// decompressed length; an error means src is not a valid block or
// decompresses to more than len(dst) bytes.
func lz4Decompress(dst, src []byte) (int, error) {
	return lz4.UncompressBlock(src, dst)
}

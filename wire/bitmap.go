package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// CheckBitmap validates a bitmap message (KindDiscard, KindRecvBitmap) for
// a guest of pageCount pages and returns how many bitmap words it carries.
// Its Data is 1 to transport.MaxBitmapWords little-endian uint64 words in
// KVM's layout: bit i of word w is page m.Page + 64*w + i. m.Page must be a
// multiple of 64, the chunk must not reach past the guest's last word, and
// bits past the guest's last page must be clear. The error wraps
// livemig.ErrCorrupt (a malformed chunk) or livemig.ErrPageRange (a chunk
// past the guest). A Conn checks only that Data is whole words (the framing
// rule of transport.ClassBitmap); engines call CheckBitmap before they use a
// chunk.
func CheckBitmap(m transport.Msg, pageCount uint64) (int, error) {
	n := len(m.Data)
	switch {
	case m.Kind.Class() != transport.ClassBitmap:
		return 0, fmt.Errorf("wire: %v is not a bitmap message: %w", m.Kind, livemig.ErrCorrupt)
	case n == 0 || n%8 != 0 || n > 8*transport.MaxBitmapWords:
		return 0, fmt.Errorf("wire: %v chunk of %d bytes (want 1 to %d whole words): %w", m.Kind, n, transport.MaxBitmapWords, livemig.ErrCorrupt)
	case m.Page%64 != 0:
		return 0, fmt.Errorf("wire: %v chunk at page %d, not a multiple of 64: %w", m.Kind, m.Page, livemig.ErrCorrupt)
	}
	words := n / 8
	limit := uint64(livemig.WordsFor(pageCount))
	if w := m.Page / 64; w >= limit || uint64(words) > limit-w {
		return 0, &livemig.PageError{Op: "bitmap", Page: m.Page,
			Err: fmt.Errorf("%v chunk of %d words past page %d: %w", m.Kind, words, pageCount, livemig.ErrPageRange)}
	}
	if rem := pageCount % 64; rem != 0 && m.Page/64+uint64(words) == limit {
		if extra := binary.LittleEndian.Uint64(m.Data[n-8:]) >> rem; extra != 0 {
			return 0, &livemig.PageError{Op: "bitmap", Page: pageCount,
				Err: fmt.Errorf("%v chunk names pages past %d: %w", m.Kind, pageCount, livemig.ErrPageRange)}
		}
	}
	return words, nil
}

// BitmapWord returns word i of a bitmap message's Data (CheckBitmap first).
func BitmapWord(m transport.Msg, i int) uint64 { return binary.LittleEndian.Uint64(m.Data[8*i:]) }

// AppendBitmap appends words to dst in the layout of a bitmap message's Data
// and returns the extended slice.
func AppendBitmap(dst []byte, words []uint64) []byte {
	for _, w := range words {
		dst = binary.LittleEndian.AppendUint64(dst, w)
	}
	return dst
}

package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/crc32c"
)

// Frame layout (all integers little-endian):
//
//	header  u32 payload length, u8 frame type, u8 flags, u16 record count,
//	        u32 CRC32C (Castagnoli) of those 8 bytes
//	payload
//	trailer u32 CRC32C of header and payload
//
// The header's own CRC lets a receiver refuse a corrupt length or type the
// moment the header arrives, instead of waiting for a payload that never
// comes (protocol version 2; version 1 had no header CRC).
//
// The frame type is the Kind of the message(s) it carries. A frame of a
// ClassRecords kind is a batch of count page records, each u64 page, u8
// encoding, u32 data length, then the data. Every other frame carries one
// message: u64 page, u64 arg, then the data (the rest of the payload); its
// count is 0.
const (
	// FrameOverhead is the bytes a frame adds around its payload: the
	// 12-byte header and the 4-byte CRC.
	FrameOverhead = frameHeaderSize + frameTrailerSize
	// RecordOverhead is the bytes a page record adds to its data in a batch.
	RecordOverhead = recordHeaderSize

	frameHeaderSize   = 12
	headerCRCOffset   = 8
	frameTrailerSize  = 4
	recordHeaderSize  = 13
	controlHeaderSize = 16
	maxBatchCount     = 1<<16 - 1

	// frameFlagMore marks a ClassBlob frame that the next frame of its
	// kind continues (a blob longer than one frame).
	frameFlagMore = 1 << 0
)

// Bounds and defaults of the framing.
const (
	// DefaultBatchBytes is how many payload bytes of page records a batch
	// frame holds before it is flushed, when Config.BatchBytes is 0.
	DefaultBatchBytes = 256 << 10
	// DefaultMaxFrame bounds a frame's payload when Config.MaxFrame is 0:
	// 1 MiB plus room for a page record. A received frame announcing more is
	// refused before anything is allocated.
	DefaultMaxFrame = 1<<20 + 64<<10
	// DefaultMaxState bounds a reassembled blob (ClassBlob) when
	// Config.MaxState is 0. A blob longer than one frame is sent as several
	// frames and reassembled by the receiver, up to this bound.
	DefaultMaxState = 64 << 20
	// MaxPageSize is the largest page size a Conn accepts (2 MiB, a huge
	// page).
	MaxPageSize = 2 << 20
)

// MaxEncodedLen is the largest Data a page record of a codec encoding
// (EncXBZRLE, EncLZ4) may carry for a page of pageSize bytes: twice the page.
// A codec whose output would be larger sends the page raw instead.
func MaxEncodedLen(pageSize int) int { return 2 * pageSize }

// castagnoli is the CRC32C table; hash/crc32 uses the CPU's CRC32
// instruction for it where there is one.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors a Conn returns for messages it cannot send.
var (
	// ErrInvalid: Send was given a message that breaks the framing's
	// rules (a kind not defined, an unknown encoding, a raw page of the
	// wrong size, a page record past the guest, a bitmap of no or too many
	// words, data too large). Every refusal of Send wraps it: nothing was
	// sent, and the Conn goes on.
	ErrInvalid = errors.New("transport: invalid message")
	// ErrTooLarge: a message's Data exceeds what a frame (or, for a state
	// blob, Config.MaxState) can carry. It comes wrapped with ErrInvalid.
	ErrTooLarge = errors.New("transport: message too large")
)

// checkRecord says what is wrong with a page record of encoding enc and n
// data bytes, or "" if nothing is.
func checkRecord(enc Encoding, n, pageSize int) string {
	switch enc {
	case EncRaw:
		if n != pageSize {
			return "raw page of the wrong length"
		}
	case EncZero:
		if n != 0 {
			return "zero page with data"
		}
	case EncXBZRLE, EncLZ4:
		if n > MaxEncodedLen(pageSize) {
			return "encoded page longer than twice the page size"
		}
	default:
		return "unknown page encoding"
	}
	return ""
}

// frameHeader is a decoded frame header.
type frameHeader struct {
	length int
	kind   Kind
	flags  uint8
	count  int
}

func putFrameHeader(b []byte, length int, kind Kind, flags uint8, count int) {
	binary.LittleEndian.PutUint32(b[0:], uint32(length))
	b[4] = byte(kind)
	b[5] = flags
	binary.LittleEndian.PutUint16(b[6:], uint16(count))
	binary.LittleEndian.PutUint32(b[headerCRCOffset:], crc32.Checksum(b[:headerCRCOffset], castagnoli))
}

// parseFrameHeader decodes a frame header; ok is false when its CRC does not
// match (nothing in it can then be trusted).
func parseFrameHeader(b []byte) (h frameHeader, ok bool) {
	h = frameHeader{
		length: int(binary.LittleEndian.Uint32(b[0:])),
		kind:   Kind(b[4]),
		flags:  b[5],
		count:  int(binary.LittleEndian.Uint16(b[6:])),
	}
	return h, crc32.Checksum(b[:headerCRCOffset], castagnoli) == binary.LittleEndian.Uint32(b[headerCRCOffset:])
}

// checkHeader validates a frame header before its payload is read, so that a
// hostile length is refused before any allocation.
func checkHeader(h frameHeader, maxFrame int) string {
	if h.length > maxFrame {
		return fmt.Sprintf("frame length %d over the limit %d", h.length, maxFrame)
	}
	switch cl := h.kind.Class(); cl {
	case ClassNone:
		return fmt.Sprintf("unknown frame type %d", h.kind)
	case ClassHeartbeat:
		if h.length != controlHeaderSize || h.flags != 0 || h.count != 0 {
			return fmt.Sprintf("heartbeat frame of %d bytes, flags %#x, count %d", h.length, h.flags, h.count)
		}
	case ClassRecords:
		if h.flags != 0 {
			return fmt.Sprintf("batch frame with flags %#x", h.flags)
		}
		if h.count == 0 {
			return "empty batch frame"
		}
		if h.length < h.count*recordHeaderSize {
			return fmt.Sprintf("batch of %d records in %d bytes", h.count, h.length)
		}
	default:
		if h.count != 0 {
			return fmt.Sprintf("control frame with record count %d", h.count)
		}
		if h.flags&^frameFlagMore != 0 || (h.flags != 0 && cl != ClassBlob) {
			return fmt.Sprintf("%v frame with flags %#x", h.kind, h.flags)
		}
		if h.length < controlHeaderSize {
			return fmt.Sprintf("control frame of %d bytes", h.length)
		}
		if cl == ClassBitmap {
			if n := h.length - controlHeaderSize; n == 0 || n%8 != 0 || n > 8*MaxBitmapWords {
				return fmt.Sprintf("%v frame with %d bitmap bytes (want 1 to %d whole words)", h.kind, n, MaxBitmapWords)
			}
		}
	}
	return ""
}

// MaxBitmapWords bounds the Data of a ClassBitmap message: 512 words, 4 KiB
// (a chunk of a bitmap of 32768 pages), so that it fits the smallest frame a
// Conn allows. A 256 GiB guest of 4 KiB pages takes 2048 chunks.
const MaxBitmapWords = 512

// checkBatch validates every record of a batch payload holding count
// records. It returns the offset in p of the bad record and what is wrong,
// or what == "".
func checkBatch(p []byte, count, pageSize int, pageCount uint64) (off int, what string, rangeErr bool) {
	pos := 0
	for i := 0; i < count; i++ {
		if len(p)-pos < recordHeaderSize {
			return pos, fmt.Sprintf("record %d of %d: header past the frame's end", i, count), false
		}
		page := binary.LittleEndian.Uint64(p[pos:])
		enc := Encoding(p[pos+8])
		n := binary.LittleEndian.Uint32(p[pos+9:])
		if uint64(n) > uint64(len(p)-pos-recordHeaderSize) {
			return pos, fmt.Sprintf("record %d of %d: %d data bytes past the frame's end", i, count, n), false
		}
		if bad := checkRecord(enc, int(n), pageSize); bad != "" {
			return pos, fmt.Sprintf("record %d of %d (page %d, encoding %d, %d bytes): %s", i, count, page, enc, n, bad), false
		}
		if pageCount != 0 && page >= pageCount {
			return pos, fmt.Sprintf("record %d of %d: page %d of %d", i, count, page, pageCount), true
		}
		pos += recordHeaderSize + int(n)
	}
	if pos != len(p) {
		return pos, fmt.Sprintf("%d bytes after the last of %d records", len(p)-pos, count), false
	}
	return 0, "", false
}

// sealFrame appends the trailer, the CRC32C of b (a frame's header and
// payload), and returns the extended slice.
func sealFrame(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32c.Checksum(b))
}

// corruptf builds the error for bad data at stream offset off.
func corruptf(off int64, what string, extra ...error) error {
	err := livemig.ErrCorrupt
	if len(extra) > 0 {
		err = fmt.Errorf("%w: %w", livemig.ErrCorrupt, extra[0])
	}
	return &livemig.StreamError{Offset: off, What: what, Err: err}
}

package transport

import (
	"encoding/binary"
	"sync"

	"github.com/livemig/livemig/internal/crc32c"
)

// A frame's CRC32C covers its header and payload. Its raw page records'
// data are the guest's pages, whose CRCs the engines' end-to-end digest
// needs too (verify.Digest.UpdateCRC): so each side reads a page for a CRC
// once, not twice. The sender takes a page's CRC from Msg.DataCRC and
// combines it into the frame's (crc32c.Shifter); the receiver, as the
// frame's bytes arrive, takes each raw page's CRC apart and combines it
// into the frame's, and Recv returns it in Msg.DataCRC. The check is the
// same: the frame's CRC is that of its bytes, however it was computed.

// shifters holds a crc32c.Shifter per page size: its table is 4 KiB, made
// once per size for every Conn.
var shifters sync.Map // int -> crc32c.Shifter

func pageShifter(pageSize int) crc32c.Shifter {
	if s, ok := shifters.Load(pageSize); ok {
		return s.(crc32c.Shifter)
	}
	s, _ := shifters.LoadOrStore(pageSize, crc32c.NewShifter(pageSize))
	return s.(crc32c.Shifter)
}

// crcWalk builds a frame's CRC as its bytes arrive, and the CRC of each raw
// page record's data apart. It only splits the CRC's work at the record
// boundaries the bytes seem to give: lengths are not trusted (a frame with
// bad ones is refused by the CRC or by checkBatch before any record is
// returned), and acc is the CRC of the bytes fed whatever they hold.
type crcWalk struct {
	shift   crc32c.Shifter
	acc     uint32 // CRC32C of the frame's bytes fed so far, but the page under way
	seg     uint32 // CRC32C of the page under way, so far
	end     int    // offset of the frame's trailer
	next    int    // offset of the next record's header
	left    int    // records whose header has not come
	inPage  bool   // within a raw page's data, ending at pageEnd
	pageEnd int
	crcs    []uint64 // per record: 1<<32 | its data's CRC for a raw page, else 0
}

// start begins frame h, whose trailer is at offset end of its buffer.
func (w *crcWalk) start(h frameHeader, shift crc32c.Shifter, end int) {
	w.shift, w.acc, w.seg, w.end, w.inPage = shift, 0, 0, end, false
	w.crcs = w.crcs[:0]
	w.left, w.next = 0, frameHeaderSize
	if h.kind.Class() == ClassRecords {
		w.left = h.count
	}
}

// feed takes the frame's bytes buf[from:to] (to at most the trailer's
// offset), buf holding the frame from its start.
func (w *crcWalk) feed(buf []byte, from, to int) {
	for from < to {
		if w.inPage {
			upto := min(to, w.pageEnd)
			w.seg = crc32c.Update(w.seg, buf[from:upto])
			from = upto
			if from == w.pageEnd {
				w.acc = w.shift.Combine(w.acc, w.seg)
				w.crcs = append(w.crcs, 1<<32|uint64(w.seg))
				w.seg, w.inPage, w.next = 0, false, w.pageEnd
			}
			continue
		}
		hdrEnd := w.next + recordHeaderSize
		stop := to
		if w.left > 0 && hdrEnd <= w.end {
			stop = min(to, hdrEnd)
		}
		w.acc = crc32c.Update(w.acc, buf[from:stop])
		from = stop
		if w.left == 0 || from != hdrEnd {
			continue
		}
		// A record's header is whole at buf[w.next:hdrEnd].
		w.left--
		n := int(binary.LittleEndian.Uint32(buf[w.next+9:]))
		if Encoding(buf[w.next+8]) == EncRaw && n == w.shift.Len() && n <= w.end-hdrEnd {
			w.inPage, w.pageEnd = true, hdrEnd+n
			continue
		}
		w.crcs = append(w.crcs, 0)
		w.next = hdrEnd + min(n, w.end-hdrEnd)
	}
}

// page returns record i's data CRC, if it is a raw page's.
func (w *crcWalk) page(i int) (uint32, bool) {
	if i >= len(w.crcs) || w.crcs[i] == 0 {
		return 0, false
	}
	return uint32(w.crcs[i]), true
}

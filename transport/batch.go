package transport

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"iter"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/crc32c"
)

// BatchSender is an optional interface of a Conn, found by type assertion:
// its caller builds a batch frame of page records in a Batch the Conn lends
// and sends it whole, so that a page's bytes are written once, where they
// go on the link (a pre-copy source's codec workers read each page straight
// into the frame). The frame is the one Send would have built for the same
// records had they filled one batch: the receiver cannot tell them apart.
//
// A Conn of this package on one link (NewConn, Open) implements it; a
// multi-stream Conn (NewMulti) does not.
type BatchSender interface {
	// NewBatch returns an empty Batch of page records of kind, a
	// ClassRecords kind, bound to this Conn (its page size, page count
	// and frame sizes). Any goroutine may call it, at any time.
	NewBatch(kind Kind) *Batch
	// SendBatch sends b's committed records as one frame: first the
	// records queued with Send (a batch of them goes out before b's
	// frame), then b's; an open reservation is cancelled, and an empty b
	// sends nothing. It is a Send: the goroutine that calls Send calls
	// it, and an error is the Send side's (sticky, as Send's). Whatever it
	// returns, b is empty afterwards, ready for more records, and every
	// slice b returned before is no longer the caller's (see Batch). A b
	// made by another Conn is refused with an error wrapping ErrInvalid.
	SendBatch(ctx context.Context, b *Batch) error
}

// Batch is a batch frame of page records being built in a buffer a
// BatchSender lent, for BatchSender.SendBatch.
//
// Ownership. A Batch, and the bytes of its buffer, belong to the one
// goroutine that holds it; it is not safe for concurrent use, and may
// pass from one goroutine to another with the usual synchronization (a
// channel). Reserve lends its caller the bytes of one record's data:
//
//   - Reserved: the caller may write them, and only them, until it
//     commits or gives them back. Nothing of them is part of the batch.
//   - Committed (Commit): their first n bytes become the record's data, in
//     place; the rest are given back. From then on the caller must not
//     write them (it may still read them): the record's CRC is taken at
//     Commit, so bytes changed afterwards make the peer refuse the frame.
//   - Given back (Cancel, the next Reserve, Reset, a failed Commit): the
//     record is not in the batch, and the next record may overwrite them.
//   - Sent (SendBatch, whatever it returns): the buffer is the Conn's
//     (on a Pipe, the peer's, which reads the frame from it); every slice
//     Reserve returned is invalid, for reading too. The Batch holds
//     another buffer for its next records.
//
// A record is checked at Commit as Send checks a page record (encoding,
// length, page number): a bad one is refused with an error wrapping
// ErrInvalid, and the batch is as it was before the Reserve.
type Batch struct {
	c    *conn
	kind Kind
	buf  []byte // frame header room, then the committed records
	crc  uint32 // CRC32C of the committed records (the frame's payload)
	n    int    // committed records
	// The open reservation: its record header at buf[len(buf):], its
	// data the resN bytes after the header; resN < 0 when none is open.
	resPage uint64
	resN    int
}

// NewBatch returns an empty Batch for c; see BatchSender.
func (c *conn) NewBatch(kind Kind) *Batch {
	return &Batch{c: c, kind: kind, buf: make([]byte, frameHeaderSize, c.wcap), resN: -1}
}

// Kind returns the kind of b's records.
func (b *Batch) Kind() Kind { return b.kind }

// Count returns how many records b holds (committed).
func (b *Batch) Count() int { return b.n }

// Len returns the bytes of b's committed records, record headers included:
// the frame's payload.
func (b *Batch) Len() int { return len(b.buf) - frameHeaderSize }

// Limit returns the payload bytes past which Reserve refuses a record when
// b holds records already: the Conn's Config.BatchBytes.
func (b *Batch) Limit() int { return b.c.batchBytes }

// Reserve opens a record of page page with room for n bytes of data, and
// returns those n bytes for the caller to fill (see Batch for their
// ownership), or nil if the record does not fit: b holds records already
// and this one would take its payload past the Conn's Config.BatchBytes,
// or b holds the most records a frame may, or n is negative or over
// MaxEncodedLen of the page size. An empty batch takes any record up to
// that. A reservation still open is given back first.
func (b *Batch) Reserve(page uint64, n int) []byte {
	b.resN = -1
	if n < 0 || n > MaxEncodedLen(b.c.pageSize) || b.n == maxBatchCount {
		return nil
	}
	off := len(b.buf) + recordHeaderSize
	if b.n > 0 && off+n-frameHeaderSize > b.c.batchBytes {
		return nil
	}
	if off+n+frameTrailerSize > cap(b.buf) {
		return nil // cannot happen: the buffer holds a largest record
	}
	b.resPage, b.resN = page, n
	return b.buf[off : off+n : off+n]
}

// Commit adds the open reservation to b as a record of encoding enc whose
// data is the first n bytes of the reserved ones. With haveCRC, dataCRC is
// the CRC32C of those n bytes, which the caller has at hand (as
// Msg.DataCRC: taken only for a raw page, trusted, and a wrong one makes
// the peer refuse the frame); otherwise Commit reads the bytes for it. An
// error (no reservation open, n past it, a record Send would refuse) wraps
// ErrInvalid, and the reservation is given back.
func (b *Batch) Commit(enc Encoding, n int, dataCRC uint32, haveCRC bool) error {
	page, res := b.resPage, b.resN
	b.resN = -1
	if res < 0 {
		return fmt.Errorf("%w: commit of a batch record with no reservation open", ErrInvalid)
	}
	if n < 0 || n > res {
		return &livemig.PageError{Op: "send", Page: page, Err: fmt.Errorf("%w: %d bytes committed of %d reserved", ErrInvalid, n, res)}
	}
	if err := b.c.checkPage(page, enc, n); err != nil {
		return err
	}
	off := len(b.buf)
	r := b.buf[off : off+recordHeaderSize+n]
	binary.LittleEndian.PutUint64(r, page)
	r[8] = byte(enc)
	binary.LittleEndian.PutUint32(r[9:], uint32(n))
	b.crc = crc32c.Update(b.crc, r[:recordHeaderSize])
	if haveCRC && enc == EncRaw && n == b.c.shift.Len() {
		b.crc = b.c.shift.Combine(b.crc, dataCRC)
	} else {
		b.crc = crc32c.Update(b.crc, r[recordHeaderSize:])
	}
	b.buf = b.buf[:off+len(r)]
	b.n++
	return nil
}

// Cancel gives the open reservation back, if any.
func (b *Batch) Cancel() { b.resN = -1 }

// Reset drops b's records and any reservation; b keeps its buffer.
func (b *Batch) Reset() {
	b.buf, b.crc, b.n, b.resN = b.buf[:frameHeaderSize], 0, 0, -1
}

// Records returns b's committed records in order, as Send would have been
// given them: Kind, Enc, Page and Data, which is borrowed from b (see
// Batch). It does not set DataCRC.
func (b *Batch) Records() iter.Seq[Msg] {
	return func(yield func(Msg) bool) {
		pos := frameHeaderSize
		for range b.n {
			r := b.buf[pos:]
			n := int(binary.LittleEndian.Uint32(r[9:]))
			m := Msg{Kind: b.kind, Enc: Encoding(r[8]), Page: binary.LittleEndian.Uint64(r)}
			if n > 0 {
				m.Data = r[recordHeaderSize : recordHeaderSize+n : recordHeaderSize+n]
			}
			if !yield(m) {
				return
			}
			pos += recordHeaderSize + n
		}
	}
}

// checkPage returns the error Send returns for a page record it refuses,
// or nil.
func (c *conn) checkPage(page uint64, enc Encoding, n int) error {
	if bad := checkRecord(enc, n, c.pageSize); bad != "" {
		return &livemig.PageError{Op: "send", Page: page, Err: fmt.Errorf("%w: %s (encoding %d, %d bytes)", ErrInvalid, bad, enc, n)}
	}
	if c.pageCount != 0 && page >= c.pageCount {
		return &livemig.PageError{Op: "send", Page: page, Err: fmt.Errorf("%w: %w", ErrInvalid, livemig.ErrPageRange)}
	}
	return nil
}

// SendBatch sends b as one frame; see BatchSender.
func (c *conn) SendBatch(ctx context.Context, b *Batch) error {
	b.resN = -1
	if b.c != c {
		b.Reset()
		return fmt.Errorf("transport: send batch: a batch of another Conn: %w", ErrInvalid)
	}
	if b.n == 0 {
		return nil
	}
	defer b.Reset()
	if err := c.sendable(ctx); err != nil {
		return err
	}
	if b.kind.Class() != ClassRecords {
		return fmt.Errorf("transport: send batch: kind %d: %w", b.kind, ErrInvalid)
	}
	if err := c.flush(ctx); err != nil {
		return err
	}
	n := b.Len()
	c.fr.Batch(n)
	putFrameHeader(b.buf, n, b.kind, 0, b.n)
	crc := crc32c.Combine(crc32.Checksum(b.buf[:frameHeaderSize], castagnoli), b.crc, n)
	next, err := c.writeOut(ctx, binary.LittleEndian.AppendUint32(b.buf, crc))
	b.buf = next[:frameHeaderSize]
	return err
}

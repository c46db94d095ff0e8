package postcopy

import (
	"bytes"
	"fmt"

	"github.com/pierrec/lz4/v4"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// PageEncoder chooses the record of a page the post-copy source sends: a
// zero page as transport.EncZero, and with LZ4 a page whose LZ4 block is at
// most seven eighths of it as transport.EncLZ4; any other page raw. Every
// page crosses the link once in post-copy, so a delta codec has nothing to
// work from; LZ4 is the codec that pays, on links slower than the source
// compresses (about 1 GB/s a core here).
//
// The engine keeps one per goroutine that sends pages; package scenario's
// model uses the same, so that both send the same bytes. Not safe for
// concurrent use.
type PageEncoder struct {
	lz4  bool
	zero []byte
	c    lz4.Compressor
	out  []byte
}

// NewPageEncoder returns an encoder for pages of pageSize bytes, with LZ4
// if lz4 is set.
func NewPageEncoder(pageSize int, lz4 bool) *PageEncoder {
	e := &PageEncoder{lz4: lz4, zero: make([]byte, pageSize)}
	if lz4 {
		e.out = make([]byte, pageSize-pageSize/8)
	}
	return e
}

// Encode returns the encoding of page and its data: nil for a zero page,
// page itself when raw, else the encoder's buffer, valid until the next
// call.
func (e *PageEncoder) Encode(page []byte) (transport.Encoding, []byte) {
	if bytes.Equal(page, e.zero) {
		return transport.EncZero, nil
	}
	if e.lz4 {
		// CompressBlock returns 0 when the block does not fit in out.
		if k, err := e.c.CompressBlock(page, e.out); err == nil && k > 0 && k <= len(e.out) {
			return transport.EncLZ4, e.out[:k]
		}
	}
	return transport.EncRaw, page
}

// decodePage returns the contents of page record msg (already checked by
// checkPage): msg.Data when raw, the page decompressed into scratch (a page
// long) when LZ4, nil when zero. A block that does not decompress to
// exactly a page is an error wrapping livemig.ErrCorrupt.
func decodePage(msg transport.Msg, scratch []byte) ([]byte, error) {
	if msg.Enc != transport.EncLZ4 {
		return msg.Data, nil
	}
	k, err := lz4.UncompressBlock(msg.Data, scratch)
	if err != nil || k != len(scratch) {
		if err == nil {
			err = fmt.Errorf("%d bytes", k)
		}
		return nil, &livemig.PageError{Op: "decode", Page: msg.Page,
			Err: fmt.Errorf("LZ4 block does not decompress to a page of %d bytes (%v): %w", len(scratch), err, livemig.ErrCorrupt)}
	}
	return scratch, nil
}

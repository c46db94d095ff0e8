package codec

import (
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/transport"
	"github.com/pierrec/lz4/v4"
)

// MaxLZ4 returns the longest LZ4 block sent for a page of pageSize bytes:
// pageSize - pageSize/64, and at least one byte less than the page. A page
// goes as an LZ4 block only when the block saves at least 1/64 of the page
// (64 bytes of a 4 KiB page); otherwise it goes raw. Every engine follows
// this rule, through PageEncoder.
//
// Why 1/64. The source has compressed the page whatever the rule (it cannot
// know the block's size before), and a compressor that gives up when its
// output would pass MaxLZ4 is no slower, so the rule costs the source
// nothing. What it weighs
// is the destination's time: a block of nearly a page is mostly literals and
// decompresses in about the time of the copy a raw page costs anyway, but
// not quite. BenchmarkLZ4Limit (go test ./codec -run '^$' -bench LZ4Limit
// -count 10 -cpu 1) decompresses blocks of 92 to 99.9 % of a 4 KiB page in
// 120-175 ns against 58-95 ns for the copy, on a loaded, shared 2-CPU AMD
// EPYC VM (medians, ±15-45 %): 30-110 ns more per page, the link time of
// 4-14 bytes at 1 Gbit/s and of 40-140 bytes at 10 Gbit/s. 64 bytes is
// the break-even near 10 Gbit/s, about the speed one core's LZ4 keeps up
// with (0.4-1.9 GB/s here). On slower links, where compression pays most,
// every block the rule sends saves more link time than its decompression
// costs, and what it refuses would have saved at most 1/64 of a page. The
// two rules this one replaced erred each way: "any block smaller than the
// page" (the Pipeline's, and QEMU multifd UADK's) sent blocks saving a
// byte; "at most seven eighths of the page" (post-copy's) sent raw pages
// that LZ4 shrank by up to 12 %, 0.4 µs of link per page at 10 Gbit/s, to
// save about 0.1 µs of decompression.
//
// A decoder accepts any valid block of a page, whatever its size: the rule
// is the sender's choice, not part of the format.
func MaxLZ4(pageSize int) int {
	return pageSize - max(pageSize/64, 1)
}

// PageEncoder chooses the record of one page with no history: a zero page
// as transport.EncZero, with LZ4 a page whose LZ4 block is at most
// MaxLZ4 bytes as transport.EncLZ4, any other page as transport.EncRaw.
// It is steps 1, 3 and 4 of the Pipeline's choice (see the package doc),
// which its workers make with a PageEncoder; an engine that sends every page
// once, and so has nothing for XBZRLE to work from (post-copy), encodes its
// pages with one directly.
//
// The zero value encodes without LZ4. A PageEncoder holds LZ4's hash table
// (8.5 KiB), so allocate it once and reuse it. It is not safe for
// concurrent use: keep one per goroutine that encodes.
type PageEncoder struct {
	// LZ4 turns LZ4 on. It may change between calls to Encode.
	LZ4 bool

	c lz4.Compressor
}

// Encode chooses the record of page, whose length is the page size, and
// returns its encoding and data:
//
//   - transport.EncZero: nil, when page is all zeros;
//   - transport.EncLZ4: dst with the LZ4 block appended, when e.LZ4 is set
//     and the block is at most MaxLZ4(len(page)) bytes;
//   - transport.EncRaw: page itself, not copied.
//
// Encode only reads page, and keeps neither page nor dst. dst must not
// overlap page. It grows dst when dst has less than MaxLZ4(len(page)) bytes
// of spare capacity; with more (say dst[:0] of a buffer of a page), Encode
// allocates nothing.
func (e *PageEncoder) Encode(dst, page []byte) (transport.Encoding, []byte) {
	if IsZero(page) {
		return transport.EncZero, nil
	}
	return e.encodeNonZero(dst, page)
}

// encodeNonZero is Encode for a page known not to be all zeros.
func (e *PageEncoder) encodeNonZero(dst, page []byte) (transport.Encoding, []byte) {
	if !e.LZ4 {
		return transport.EncRaw, page
	}
	limit := MaxLZ4(len(page))
	if cap(dst)-len(dst) < limit {
		dst = append(dst[:len(dst):len(dst)], make([]byte, limit)...)[:len(dst)]
	}
	if k := lz4Compress(&e.c, dst[len(dst):len(dst)+limit], page); k > 0 {
		return transport.EncLZ4, dst[:len(dst)+k]
	}
	return transport.EncRaw, page
}

// DecodePage decodes one page record, page n encoded as enc in data, for
// a page of len(dst) bytes, and returns the page's new contents:
//
//   - transport.EncZero: nil (the page is all zeros); data must be empty.
//   - transport.EncRaw: data itself, which must be exactly a page.
//   - transport.EncLZ4: dst, into which data, an LZ4 block that must
//     decompress to exactly a page, was decompressed.
//   - transport.EncXBZRLE: dst, into which r.ReadPage(n, dst) read the
//     page's current contents and to which data, a delta.Decode delta of at
//     most a page, was applied. With r nil an XBZRLE record is an error
//     wrapping livemig.ErrNotSupported (an engine that sends no deltas
//     passes nil).
//
// dst is owned by the caller, who keeps the result until it is done with
// the page; data is only read, during the call. Errors are
// *livemig.PageError naming page n: bad data wraps livemig.ErrCorrupt (for
// a bad delta, through a *delta.DecodeError), an unknown encoding wraps
// livemig.ErrNotSupported, and r's errors are wrapped as they are (Op
// "read"). On an error dst may have been written.
//
// It is the decoding of every engine: Decoder.Apply uses it, and so does
// the post-copy destination, which places pages itself.
func DecodePage(dst []byte, n uint64, enc transport.Encoding, data []byte, r livemig.PageReader) ([]byte, error) {
	ps := len(dst)
	switch enc {
	case transport.EncRaw:
		if len(data) != ps {
			return nil, corrupt(n, "raw page of %d bytes, page size %d", len(data), ps)
		}
		return data, nil
	case transport.EncZero:
		if len(data) != 0 {
			return nil, corrupt(n, "zero page with %d bytes of data", len(data))
		}
		return nil, nil
	case transport.EncXBZRLE:
		if len(data) > ps {
			return nil, corrupt(n, "XBZRLE delta of %d bytes, longer than a page", len(data))
		}
		if r == nil {
			return nil, &livemig.PageError{Op: "decode", Page: n,
				Err: fmt.Errorf("codec: XBZRLE page but the current contents cannot be read back (livemig.PageReader): %w", livemig.ErrNotSupported)}
		}
		if err := r.ReadPage(n, dst); err != nil {
			return nil, &livemig.PageError{Op: "read", Page: n, Err: err}
		}
		if err := delta.Decode(dst, data); err != nil {
			return nil, &livemig.PageError{Op: "decode", Page: n, Err: err}
		}
		return dst, nil
	case transport.EncLZ4:
		if len(data) > lz4.CompressBlockBound(ps) {
			return nil, corrupt(n, "LZ4 block of %d bytes, longer than any page's", len(data))
		}
		k, err := lz4Decompress(dst, data)
		if err != nil {
			return nil, corrupt(n, "LZ4 block: %v", err)
		}
		if k != ps {
			return nil, corrupt(n, "LZ4 block of %d bytes, page size %d", k, ps)
		}
		return dst, nil
	default:
		return nil, &livemig.PageError{Op: "decode", Page: n,
			Err: fmt.Errorf("codec: encoding %d: %w", enc, livemig.ErrNotSupported)}
	}
}

func corrupt(n uint64, format string, args ...any) error {
	return &livemig.PageError{Op: "decode", Page: n,
		Err: fmt.Errorf("codec: "+format+": %w", append(args, livemig.ErrCorrupt)...)}
}

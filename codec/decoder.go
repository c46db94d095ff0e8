package codec

import (
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/transport"
	"github.com/pierrec/lz4/v4"
)

// Decoder is the destination's side of a Pipeline: it applies page records
// to the destination's memory.
//
// A Decoder accepts every encoding this package writes, whatever its
// Config enables (the features in use were agreed in the handshake); only
// Config.PageSize matters. It is not safe for concurrent use: use one per
// receiving goroutine.
type Decoder struct {
	ps      int
	scratch []byte
}

// NewDecoder returns a Decoder for pages of cfg.PageSize bytes (0 means
// livemig.DefaultPageSize; a negative size is taken as the default too).
func NewDecoder(cfg Config) *Decoder {
	ps := cfg.PageSize
	if ps <= 0 {
		ps = livemig.DefaultPageSize
	}
	return &Decoder{ps: ps, scratch: make([]byte, ps)}
}

// Apply applies one page record, page n encoded as enc in data, to sink,
// and returns the page's new contents so that the caller can update its
// digest: nil for a zero page, otherwise a slice that is data itself (raw)
// or the Decoder's scratch buffer, valid until the next Apply. data is
// owned by the caller; Apply does not keep it.
//
//   - EncRaw: data must be exactly a page; it is written with WritePage.
//   - EncZero: data must be empty; the page is zeroed with ZeroPage.
//   - EncXBZRLE: data (at most a page) is a delta.Decode delta against the
//     page's current contents, which the sink must let Apply read back
//     (livemig.PageReader, else an error wrapping livemig.ErrNotSupported).
//   - EncLZ4: data is an LZ4 block that must decompress to exactly a page.
//
// Errors are *livemig.PageError naming page n: bad data wraps
// livemig.ErrCorrupt (for a bad delta, through a *delta.DecodeError), an
// unknown encoding wraps livemig.ErrNotSupported, and the sink's own errors
// are wrapped as they are. On a data error the sink is not written.
func (d *Decoder) Apply(sink livemig.PageSink, n uint64, enc transport.Encoding, data []byte) ([]byte, error) {
	switch enc {
	case transport.EncRaw:
		if len(data) != d.ps {
			return nil, d.corrupt(n, "raw page of %d bytes, page size %d", len(data), d.ps)
		}
		if err := sink.WritePage(n, data); err != nil {
			return nil, &livemig.PageError{Op: "write", Page: n, Err: err}
		}
		return data, nil
	case transport.EncZero:
		if len(data) != 0 {
			return nil, d.corrupt(n, "zero page with %d bytes of data", len(data))
		}
		if err := sink.ZeroPage(n); err != nil {
			return nil, &livemig.PageError{Op: "zero", Page: n, Err: err}
		}
		return nil, nil
	case transport.EncXBZRLE:
		if len(data) > d.ps {
			return nil, d.corrupt(n, "XBZRLE delta of %d bytes, longer than a page", len(data))
		}
		r, ok := sink.(livemig.PageReader)
		if !ok {
			return nil, &livemig.PageError{Op: "decode", Page: n,
				Err: fmt.Errorf("codec: XBZRLE page but the sink cannot read pages back (livemig.PageReader): %w", livemig.ErrNotSupported)}
		}
		if err := r.ReadPage(n, d.scratch); err != nil {
			return nil, &livemig.PageError{Op: "read", Page: n, Err: err}
		}
		if err := delta.Decode(d.scratch, data); err != nil {
			return nil, &livemig.PageError{Op: "decode", Page: n, Err: err}
		}
	case transport.EncLZ4:
		if len(data) > lz4.CompressBlockBound(d.ps) {
			return nil, d.corrupt(n, "LZ4 block of %d bytes, longer than any page's", len(data))
		}
		k, err := lz4Decompress(d.scratch, data)
		if err != nil {
			return nil, d.corrupt(n, "LZ4 block: %v", err)
		}
		if k != d.ps {
			return nil, d.corrupt(n, "LZ4 block of %d bytes, page size %d", k, d.ps)
		}
	default:
		return nil, &livemig.PageError{Op: "decode", Page: n,
			Err: fmt.Errorf("codec: encoding %d: %w", enc, livemig.ErrNotSupported)}
	}
	if err := sink.WritePage(n, d.scratch); err != nil {
		return nil, &livemig.PageError{Op: "write", Page: n, Err: err}
	}
	return d.scratch, nil
}

func (d *Decoder) corrupt(n uint64, format string, args ...any) error {
	return &livemig.PageError{Op: "decode", Page: n,
		Err: fmt.Errorf("codec: "+format+": %w", append(args, livemig.ErrCorrupt)...)}
}

package codec

import (
	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
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

// Apply applies one page record, page n encoded as enc in data, to sink
// (decoded by DecodePage, with sink as the PageReader of XBZRLE records),
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
	var r livemig.PageReader
	if enc == transport.EncXBZRLE {
		r, _ = sink.(livemig.PageReader)
	}
	page, err := DecodePage(d.scratch, n, enc, data, r)
	if err != nil {
		return nil, err
	}
	if page == nil {
		if err := sink.ZeroPage(n); err != nil {
			return nil, &livemig.PageError{Op: "zero", Page: n, Err: err}
		}
		return nil, nil
	}
	if err := sink.WritePage(n, page); err != nil {
		return nil, &livemig.PageError{Op: "write", Page: n, Err: err}
	}
	return page, nil
}

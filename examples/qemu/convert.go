package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/examples/qemu/stream"
)

type convertMode int

const (
	convertCopy convertMode = iota
	convertPlain
	convertXBZRLE
)

// convertStats counts what convert did to the page records.
type convertStats struct {
	In, Out           int64 // stream bytes
	Expanded          int   // XBZRLE or compressed records written as pages
	Deltas            int   // pages written as XBZRLE deltas
	Dropped           int   // pages unchanged since last sent: not written
	Overflows         int   // deltas that did not fit: kept as pages
	DeltaBytes        int64 // bytes of the deltas written
	PagesIn, PagesOut int
}

func (s convertStats) String() string {
	return fmt.Sprintf("convert: %d -> %d bytes; page records %d -> %d (expanded %d, deltas %d of %d bytes, dropped %d unchanged, %d overflows)",
		s.In, s.Out, s.PagesIn, s.PagesOut, s.Expanded, s.Deltas, s.DeltaBytes, s.Dropped, s.Overflows)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// convert rewrites the stream in to out record by record. An Image follows
// the destination's view of RAM: what QEMU holds after each record.
func convert(in io.Reader, out io.Writer, mode convertMode) (convertStats, error) {
	var st convertStats
	r := stream.NewReader(in, stream.Config{})
	cw := &countWriter{w: out}
	w := stream.NewWriter(cw)
	img, _ := stream.NewImage(nil, stream.ImageConfig{})
	page := make([]byte, stream.PageSize)
	dbuf := make([]byte, 0, stream.PageSize)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		if rec.Kind.IsPage() {
			st.PagesIn++
		}
		outRec := &rec
		var conv stream.Record
		switch {
		case mode == convertPlain && (rec.Kind == stream.KindXBZRLE || rec.Kind == stream.KindCompressed):
			if err := img.Apply(&rec); err != nil {
				return st, err
			}
			_ = img.ReadPage(rec.Page, page)
			conv = rec
			conv.Kind, conv.Data = stream.KindPage, page
			outRec = &conv
			st.Expanded++
		case mode == convertXBZRLE && rec.Kind == stream.KindPage && img.Sent(rec.Page):
			_ = img.ReadPage(rec.Page, page)
			d, err := delta.Encode(dbuf[:0], page, rec.Data, stream.PageSize)
			switch {
			case err == nil:
				conv = rec
				conv.Kind, conv.Data = stream.KindXBZRLE, d
				outRec = &conv
				st.Deltas++
				st.DeltaBytes += int64(len(d))
			case errors.Is(err, delta.ErrUnchanged):
				outRec = nil
				st.Dropped++
			case errors.Is(err, delta.ErrOverflow):
				st.Overflows++
			default:
				return st, err
			}
			if err := img.Apply(&rec); err != nil {
				return st, err
			}
		default:
			if err := img.Apply(&rec); err != nil {
				return st, err
			}
		}
		if outRec == nil {
			continue
		}
		if outRec.Kind.IsPage() {
			st.PagesOut++
		}
		if err := w.Write(outRec); err != nil {
			return st, err
		}
	}
	if err := w.Flush(); err != nil {
		return st, err
	}
	st.In, st.Out = r.Offset(), cw.n
	return st, nil
}

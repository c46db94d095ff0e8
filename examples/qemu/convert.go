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
	convertCompact
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

// recoder rewrites page records one at a time, following the
// destination's view of RAM in an Image: what QEMU holds after each record.
type recoder struct {
	mode convertMode
	img  *stream.Image
	page []byte
	dbuf []byte
	out  stream.Record
	st   convertStats
	// plainOnly is set from the first post-copy command on: QEMU's
	// post-copy loader takes only zero and plain pages, and discarded
	// pages no longer hold what the image says.
	plainOnly bool
}

func newRecoder(mode convertMode) *recoder {
	img, _ := stream.NewImage(nil, imageConfig)
	return &recoder{mode: mode, img: img, page: make([]byte, stream.PageSize), dbuf: make([]byte, 0, stream.PageSize)}
}

// recode returns the record to write in rec's place, or nil to write
// nothing. The result is valid until the next call.
func (c *recoder) recode(rec *stream.Record) (*stream.Record, error) {
	if rec.Kind.IsPage() {
		c.st.PagesIn++
	}
	if rec.Kind == stream.KindCommand && (rec.Command == stream.CmdPackaged || rec.Command == stream.CmdPostcopyDiscard) {
		c.plainOnly = true
	}
	out := rec
	switch {
	case c.mode == convertCopy: // a copy needs no view of RAM
	case c.mode == convertPlain && (rec.Kind == stream.KindXBZRLE || rec.Kind == stream.KindCompressed):
		if err := c.img.Apply(rec); err != nil {
			return nil, err
		}
		_ = c.img.ReadPage(rec.Page, c.page)
		c.out = *rec
		c.out.Kind, c.out.Data = stream.KindPage, c.page
		out = &c.out
		c.st.Expanded++
	case c.mode == convertXBZRLE && !c.plainOnly && rec.Kind == stream.KindPage && c.img.Sent(rec.Page):
		_ = c.img.ReadPage(rec.Page, c.page)
		d, err := delta.Encode(c.dbuf[:0], c.page, rec.Data, stream.PageSize)
		switch {
		case err == nil:
			c.out = *rec
			c.out.Kind, c.out.Data = stream.KindXBZRLE, d
			out = &c.out
			c.st.Deltas++
			c.st.DeltaBytes += int64(len(d))
		case errors.Is(err, delta.ErrUnchanged):
			out = nil
			c.st.Dropped++
		case errors.Is(err, delta.ErrOverflow):
			c.st.Overflows++
		default:
			return nil, err
		}
		if err := c.img.Apply(rec); err != nil {
			return nil, err
		}
	default:
		if err := c.img.Apply(rec); err != nil {
			return nil, err
		}
	}
	if out != nil && out.Kind.IsPage() {
		c.st.PagesOut++
	}
	return out, nil
}

// convert rewrites the stream in to out record by record.
func convert(in io.Reader, out io.Writer, mode convertMode) (convertStats, error) {
	if mode == convertCompact {
		return compact(in, out)
	}
	r := stream.NewReader(in, stream.Config{})
	cw := &countWriter{w: out}
	w := stream.NewWriter(cw)
	c := newRecoder(mode)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return c.st, err
		}
		o, err := c.recode(&rec)
		if err != nil {
			return c.st, err
		}
		if o != nil {
			if err := w.Write(o); err != nil {
				return c.st, err
			}
		}
	}
	if err := w.Flush(); err != nil {
		return c.st, err
	}
	c.st.In, c.st.Out = r.Offset(), cw.n
	return c.st, nil
}

// compact reads the whole stream, then writes one holding each page once,
// with its final contents: what came before the RAM section (the header,
// the configuration, devices QEMU sends first), the RAM section (its block
// list; every page, zero pages as ZERO records; an empty end), then the
// other sections, EOF and the description as they were. Post-copy streams
// (with commands) and multifd ones are refused.
func compact(in io.Reader, out io.Writer) (convertStats, error) {
	var st convertStats
	r := stream.NewReader(in, stream.Config{})
	img, _ := stream.NewImage(nil, imageConfig)
	var head, tail []stream.Record // before the RAM section; after it
	var ramStart stream.Record
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		if err := img.Apply(&rec); err != nil {
			return st, err
		}
		if rec.Kind.IsPage() {
			st.PagesIn++
		}
		switch {
		case rec.Kind == stream.KindCommand:
			return st, fmt.Errorf("compact: a stream with commands (%s at offset %d): post-copy or return path", rec.Command, rec.Offset)
		case rec.Kind == stream.KindMultifdFlush:
			return st, fmt.Errorf("compact: a MULTIFD_FLUSH record at offset %d: the stream's pages went on multifd channels, which are not in it", rec.Offset)
		case ramStart.Kind == 0 && !(rec.Kind == stream.KindSection && rec.Name == stream.RAMName):
			// Before the RAM section: the header, the configuration and
			// the devices QEMU 10 sends first (early_setup), in order.
			head = append(head, keep(rec))
		case rec.Kind == stream.KindSection && rec.Name == stream.RAMName:
			if rec.Type == stream.SectionStart {
				ramStart = rec
			}
		case rec.Kind.IsRAM() || (rec.Kind == stream.KindFooter && rec.Name == stream.RAMName):
		default:
			tail = append(tail, keep(rec))
		}
	}
	if img.Layout() == nil || ramStart.Kind == 0 {
		return st, fmt.Errorf("compact: the stream has no RAM section")
	}
	cw := &countWriter{w: out}
	w := stream.NewWriter(cw)
	var recs []stream.Record
	recs = append(recs, head...)
	id := ramStart.ID
	footer := stream.Record{Kind: stream.KindFooter, ID: id}
	recs = append(recs, ramStart,
		stream.Record{Kind: stream.KindMemSize, Blocks: img.Layout().Blocks()},
		stream.Record{Kind: stream.KindEOS}, footer,
		stream.Record{Kind: stream.KindSection, Type: stream.SectionPart, ID: id})
	for _, rec := range recs {
		if err := w.Write(&rec); err != nil {
			return st, err
		}
	}
	page := make([]byte, stream.PageSize)
	for _, b := range img.Layout().Blocks() {
		for p := range b.Pages() {
			rec := stream.Record{Kind: stream.KindZero, Block: b.Name, Addr: p * stream.PageSize}
			if v := img.View(b.First + p); v != nil && !allZero(v) {
				copy(page, v)
				rec.Kind, rec.Data = stream.KindPage, page
			}
			if err := w.Write(&rec); err != nil {
				return st, err
			}
			st.PagesOut++
		}
	}
	recs = append(recs[:0], stream.Record{Kind: stream.KindEOS}, footer,
		stream.Record{Kind: stream.KindSection, Type: stream.SectionEnd, ID: id},
		stream.Record{Kind: stream.KindEOS}, footer)
	recs = append(recs, tail...)
	for _, rec := range recs {
		if err := w.Write(&rec); err != nil {
			return st, err
		}
	}
	if err := w.Flush(); err != nil {
		return st, err
	}
	st.In, st.Out = r.Offset(), cw.n
	return st, nil
}

// keep returns rec with its borrowed slices copied.
func keep(rec stream.Record) stream.Record {
	rec.Data = append([]byte(nil), rec.Data...)
	rec.Blocks = append([]stream.Block(nil), rec.Blocks...)
	return rec
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

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

// convert rewrites the stream in to out record by record. An Image follows
// the destination's view of RAM: what QEMU holds after each record.
func convert(in io.Reader, out io.Writer, mode convertMode) (convertStats, error) {
	if mode == convertCompact {
		return compact(in, out)
	}
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
		case mode != convertCopy: // a copy needs no view of RAM
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

// compact reads the whole stream, then writes one holding each page once,
// with its final contents: the header and configuration, the RAM section
// (its block list; every page, zero pages as ZERO records; an empty end),
// then the other sections, EOF and the description as they were. Post-copy
// streams (with commands) are refused.
func compact(in io.Reader, out io.Writer) (convertStats, error) {
	var st convertStats
	r := stream.NewReader(in, stream.Config{})
	img, _ := stream.NewImage(nil, stream.ImageConfig{})
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
		case rec.Kind == stream.KindHeader || rec.Kind == stream.KindConfiguration:
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

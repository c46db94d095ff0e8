// Package stream reads and writes QEMU's migration stream (the format of
// `migrate "exec:cat > FILE"`, of a migration socket, and of savevm), as
// QEMU 7.2 to 10.0 write it for an x86 guest: the header, the configuration
// section, sections (start, part, end, full) with their footers, commands
// (including post-copy's PACKAGED sub-stream), EOF and the trailing JSON
// description; and inside the "ram" section, its records: the RAM block
// list, zero pages, pages, XBZRLE deltas (decoded by package delta),
// zlib-compressed pages, end-of-section marks and multifd flushes. Device
// sections are kept as opaque bytes, which the JSON description walks field
// by field when the stream has one (VMDesc).
//
// The facts of the format (constants, byte layouts) come from QEMU's
// migration/savevm.c, migration/ram.c and migration/qemu-file.c; this
// package shares no code with QEMU.
//
// # Usage
//
// A Reader turns a stream into records, one pass, bounded memory:
//
//	r := stream.NewReader(f, stream.Config{})
//	for {
//		rec, err := r.Next()
//		if err == io.EOF {
//			break
//		}
//		if err != nil {
//			return err // a *livemig.StreamError with the offset
//		}
//		switch rec.Kind {
//		case stream.KindPage:
//			// rec.Block, rec.Addr, rec.Page, rec.Data (valid until Next)
//		}
//	}
//
// An Image applies the records to memory and holds each RAM block's final
// contents (what the destination QEMU holds after loading the stream):
//
//	img, _ := stream.NewImage(nil, stream.ImageConfig{})
//	... img.Apply(&rec) for each record ...
//	img.WriteBlock(out, 0) // the first block, e.g. pc.ram
//
// A Writer turns records back into a stream that QEMU loads; writing every
// record a Reader returns reproduces the stream byte for byte, so a tool
// changes a stream by changing, dropping or adding records on the way:
//
//	w := stream.NewWriter(out)
//	... w.Write(&rec) for each record ...
//	w.Flush()
//
// A Layout numbers the pages of all RAM blocks consecutively in stream
// order (livemig page numbers), and maps a block and offset to a page
// number and back.
//
// # Safety
//
// The Reader never panics on bad input and never allocates from a length it
// has not checked against a bound (Config); buffers grow only as bytes
// arrive. Its errors are *livemig.StreamError values carrying the stream
// offset of the bad item and wrapping livemig.ErrCorrupt (a format rule
// broken), ErrLimit (over a bound), livemig.ErrVersion,
// livemig.ErrNotSupported (RDMA, mapped-ram, huge-page post-copy, a stream
// without section footers) or
// io.ErrUnexpectedEOF (a cut stream).
//
// # Limits
//
// The page size is 4096 (x86). Streams need section footers (QEMU's
// default since machine types of 2.4): one without is refused at its first
// section's end, as not supported. A block list may declare at most
// Config.MaxRAM bytes (1 TiB by default). Device sections carry no length:
// the Reader finds a device section's end at its footer (7E and the section
// id) followed by a well-formed record (or, when the input pauses right
// after the footer and EOF, as a source waiting for its destination's
// answer does, at that footer), so device bytes that happened to contain
// such a sequence would end the section early (and fail at the next
// record); QEMU's own streams never do in practice, and a VMDesc
// (the trailing JSON description, ParseVMDesc) walks each device section's
// bytes field by field to confirm its extent. Multifd channels
// and post-copy's preempt channel are separate connections this package
// does not read.
package stream

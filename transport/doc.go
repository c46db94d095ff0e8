// Package transport carries messages between a migration source and its
// destination: the handshake, the framing of messages (Conn), and the links
// it runs on: the in-memory Pipe, TCP and TLS (Dial, Listen), a bandwidth
// limit (RateLimit), a simulated link in virtual time (SimLink) and several
// connections used as one (NewMulti, DialMulti), whose barrier keeps the
// order across them.
//
// What the messages mean is the protocol's: livemig's migration protocol,
// its kinds, Ack codes and commit sequence, is package wire. The transport
// knows of a kind only its name and its Class, which the protocol declares
// (DefineKind), and which says how the framing carries it.
//
// # Handshake
//
// Each side first writes a fixed 50-byte hello and reads the peer's (both at
// once, so two peers on an unbuffered link do not deadlock): the magic
// "LVMG", the protocol version (ProtocolVersion), the page size, the page
// count, the features it supports, the stream count and index of a
// multi-stream session with its 16-byte session id, and a CRC32C of all that.
// All integers are little-endian. Handshake refuses a peer that speaks
// another version or has another page size or page count with an error
// wrapping livemig.ErrVersion that names both values ("peer page size 8192,
// ours 4096"), and bytes that are not a hello with one wrapping
// livemig.ErrCorrupt ("not a livemig peer"). The session uses the features
// both sides announced (Agreed).
//
// # Frames
//
// After the handshake, each direction is a sequence of frames: a 12-byte
// header (u32 payload length, u8 type, u8 flags, u16 record count, and a
// CRC32C of those 8 bytes, so that a corrupt length or type is refused the
// moment the header arrives), the payload, and a CRC32C (Castagnoli;
// hash/crc32 uses the CPU's instruction) of header and payload. A frame's
// type is the Kind of what it carries, and the kind's Class its layout:
//
//   - ClassRecords: page records, in batches. A frame holds count records
//     of u64 page, u8 encoding (EncRaw: exactly one page; EncZero: no data;
//     EncXBZRLE, EncLZ4: a codec's output, at most MaxEncodedLen), u32
//     length and the data. A page must be below Config.PageCount.
//   - ClassControl, ClassPriority: one frame of u64 page, u64 arg and the
//     data, which fits a frame.
//   - ClassBlob: the same, but data longer than a frame goes as several
//     frames, all but the last flagged "more", reassembled by the receiver
//     up to Config.MaxState.
//   - ClassBitmap: the same, with 1 to MaxBitmapWords whole 8-byte words
//     of data.
//   - ClassHeartbeat: KindHeartbeat's empty frame (see Liveness).
//
// A frame of a kind no one defined is corrupt.
//
// A Conn (NewConn, Open) collects page records into a batch of about
// Config.BatchBytes and writes it when it fills, at Flush, or before any
// other message, which goes out at once: every frame in one Write. On the
// receiving side a frame is read whole, its CRC checked, and every record
// checked before the first is returned, so a flipped bit is an error, never
// a wrong page. A length over Config.MaxFrame is refused before anything is
// allocated. Errors about the data are *livemig.StreamError values wrapping
// livemig.ErrCorrupt, at the stream offset of the bad frame or record; a
// link cut inside a frame is io.ErrUnexpectedEOF; a link that ends between
// frames is io.EOF. Sending or receiving a page record allocates nothing.
// A caller that encodes pages itself can build a batch frame's records in
// place, in a buffer the Conn lends (BatchSender, Batch: reserve a record,
// write its data there, commit it or give it back), and send the frame
// whole: the bytes are those Send would have framed.
//
// # Several streams
//
// NewMulti (DialMulti, AcceptConn) stripes a session over several Conns,
// like QEMU's multifd, by class: the page records of page p on stream
// (p / StreamRun) % N, so that the copies of a page keep their order;
// ClassPriority messages on stream 0 alone, free to overtake records that
// other streams still hold; every other message as a barrier, written on
// every stream behind its pending records and received only once every
// stream has delivered it, hence after everything sent before it. At the
// receiving end the streams' page records can be applied on the streams'
// own goroutines (ParallelReceiver), in parallel.
//
// # Liveness
//
// Each side announces its Config.Liveness in the hello, and both use the
// longer of the two (none if either has it off). A Conn writes a
// KindHeartbeat frame when it has written nothing since the watcher's last
// wake (every eighth of the bound), so at most a quarter of the bound
// apart; it fails with ErrStalled a Recv that has seen no byte for the
// bound, or a frame write stuck as long while nothing comes in either, or
// stuck as long after the peer closed its end (a half-open link whose
// other side gave up first). These are checked at each wake: a stall is
// found between the bound and an eighth more. A peer whose process is
// alive (it sends heartbeats) but does not read is not a stall: the write
// waits, bounded by its ctx.
//
// # Conformance
//
// The conformance suite in package transporttest runs one body of tests
// over any Link or Conn.
//
// # Usage
//
// The messages are package wire's.
//
//	// Source side.
//	link, err := transport.Dial(ctx, "dest:7070", transport.DialConfig{})
//	if err != nil {
//		return err
//	}
//	hello := transport.Hello{PageSize: 4096, PageCount: mem.PageCount(), Features: transport.FeatLZ4}
//	conn, peer, err := transport.Open(ctx, link, hello, transport.Config{})
//	if err != nil {
//		return err // errors.Is(err, livemig.ErrVersion): another version or geometry
//	}
//	defer conn.Close()
//	useLZ4 := transport.Agreed(hello, peer)&transport.FeatLZ4 != 0
//	for n := range mem.PageCount() {
//		mem.ReadPage(n, buf)
//		if err := conn.Send(ctx, transport.Msg{Kind: wire.KindPage, Page: n, Data: buf}); err != nil {
//			return err
//		}
//	}
//	conn.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: 0})
//
//	// Destination side.
//	var m transport.Msg
//	for {
//		if err := conn.Recv(ctx, &m); err != nil {
//			return err
//		}
//		switch m.Kind {
//		case wire.KindPage: // m.Data is valid until the next Recv
//			if m.Enc == transport.EncZero {
//				sink.ZeroPage(m.Page)
//			} else {
//				sink.WritePage(m.Page, m.Data) // EncRaw; a codec decodes the others
//			}
//		case wire.KindError:
//			return fmt.Errorf("source: %s: %w", m.Data, livemig.ErrPeer)
//		}
//	}
package transport

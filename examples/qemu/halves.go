package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/examples/qemu/stream"
	"github.com/livemig/livemig/transport"
)

// The relay's message kinds between its two halves. Package wire (livemig's
// migration protocol) uses kinds 1 to 12 and the transport 13: the relay
// takes 40 to 45, so that both protocols may share a process.
const (
	// kindQPage (records) is one RAM page: Page is its livemig page number
	// (stream.Layout), Enc and Data its codec record (codec.DecodePage).
	kindQPage transport.Kind = 40
	// kindQStream (blob) is bytes of QEMU's stream that are no page: the
	// header, configuration, section framing, device sections, commands,
	// EOF and the JSON description, in stream order.
	kindQStream transport.Kind = 41
	// kindQBlocks (blob) is the RAM block list (a MEM_SIZE record), in
	// stream order: for each block, u8 name length, the name, be64 size.
	kindQBlocks transport.Kind = 42
	// kindQSync (control) says the source half has nothing more buffered:
	// the destination half writes out what it holds.
	kindQSync transport.Kind = 43
	// kindQEnd (control) ends a direction cleanly: from the source half,
	// the source QEMU's stream ended; from the destination half, the
	// destination QEMU closed its return path.
	kindQEnd transport.Kind = 44
	// kindQReturn (control) is bytes of QEMU's return path, from the
	// destination QEMU to the source QEMU.
	kindQReturn transport.Kind = 45
)

func init() {
	for _, d := range []struct {
		k    transport.Kind
		name string
		c    transport.Class
	}{
		{kindQPage, "QEMUPage", transport.ClassRecords},
		{kindQStream, "QEMUStream", transport.ClassBlob},
		{kindQBlocks, "QEMUBlocks", transport.ClassBlob},
		{kindQSync, "QEMUSync", transport.ClassControl},
		{kindQEnd, "QEMUEnd", transport.ClassControl},
		{kindQReturn, "QEMUReturn", transport.ClassControl},
	} {
		transport.DefineKind(d.k, d.name, d.c)
	}
}

// relayHello is what both halves announce: 4 KiB pages and no page count
// (the block list comes with the stream; the destination half checks page
// numbers against it).
var relayHello = transport.Hello{PageSize: stream.PageSize}

// maxReturnChunk bounds a return-path message's data: it fits a frame.
const maxReturnChunk = 32 << 10

// blobFlushAt is how many stream bytes the source half collects before it
// sends them as one blob, whatever comes next.
const blobFlushAt = 256 << 10

// sourceConfig configures the source half.
type sourceConfig struct {
	XBZRLE bool  // pages sent before go as deltas against the relay's cache
	LZ4    bool  // pages go as LZ4 blocks when that saves 1/64
	Cache  int64 // the XBZRLE cache's bytes; 0 means 64 MiB (QEMU's default)
	// wrap, if set, wraps the link to the destination half (tests: a cut).
	wrap func(transport.Link) transport.Link
	// ch, if set, watches the source QEMU's connections (relaySource):
	// records pass its note, and its refusal is the error.
	ch *channels
}

// sourceStats is what the source half carried.
type sourceStats struct {
	QEMUBytes   int64  // bytes of the source QEMU's stream read
	LinkBytes   uint64 // bytes written on the livemig link (frames, heartbeats)
	ReturnBytes int64  // return-path bytes written to the source QEMU
	Pages       int    // page records of QEMU's stream
	Codec       livemig.CodecStats
}

func (s sourceStats) String() string {
	return fmt.Sprintf("relay source half: QEMU stream %d bytes, %d page records -> livemig link %d bytes (%.1f%%); %d deltas, %d LZ4 pages, %d cache hits, %d misses; return path %d bytes",
		s.QEMUBytes, s.Pages, s.LinkBytes, 100*float64(s.LinkBytes)/float64(max(s.QEMUBytes, 1)),
		s.Codec.DeltaPages, s.Codec.LZ4Pages, s.Codec.CacheHits, s.Codec.CacheMisses, s.ReturnBytes)
}

// closeWrite shuts c's write side when it has one (a TCP connection).
func closeWrite(c any) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// returnPath receives the destination half's messages at the source half:
// return-path bytes, written to the source QEMU, until kindQEnd. On an error
// it closes qemu, so that the source QEMU fails its migration.
func returnPath(ctx context.Context, conn transport.Conn, qemu net.Conn, n *int64) error {
	var m transport.Msg
	for {
		if err := conn.Recv(ctx, &m); err != nil {
			qemu.Close()
			return fmt.Errorf("relay source half: return path from the destination half: %w", err)
		}
		switch m.Kind {
		case kindQReturn:
			k, err := qemu.Write(m.Data)
			*n += int64(k)
			if err != nil {
				return fmt.Errorf("relay source half: return path to the source QEMU: %w", err)
			}
		case kindQEnd:
			closeWrite(qemu)
			return nil
		default:
			qemu.Close()
			return fmt.Errorf("relay source half: unexpected %v message from the destination half: %w", m.Kind, livemig.ErrCorrupt)
		}
	}
}

// runSource is the source half: it reads the stream of the source QEMU on
// qemu record by record and carries it over conn to the destination half,
// RAM pages through livemig's codecs and everything else as stream bytes,
// and passes the return path back. It returns when both directions have
// ended; on an error it closes qemu and conn (the source QEMU then fails its
// migration and its guest runs on; the destination half fails too).
func runSource(ctx context.Context, qemu net.Conn, conn transport.Conn, cfg sourceConfig) (sourceStats, error) {
	var st sourceStats
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rpDone := make(chan error, 1)
	go func() { rpDone <- returnPath(ctx, conn, qemu, &st.ReturnBytes) }()
	s := newSourceSender(ctx, conn, cfg)
	r := stream.NewReader(qemu, stream.Config{})
	err := s.copyStream(r)
	st.QEMUBytes = r.Offset()
	if err == nil {
		err = s.finish(qemu, &st.QEMUBytes)
	}
	if err != nil {
		qemu.Close()
		conn.Close()
		// A failure on the return path (the destination half gone) closed
		// qemu under the reader: say so first.
		if rpErr := <-rpDone; rpErr != nil && !errors.Is(rpErr, livemig.ErrClosed) {
			err = errors.Join(rpErr, err)
		}
	} else {
		err = <-rpDone
		conn.Close()
	}
	qemu.Close()
	st.Pages = s.pages
	if s.pl != nil {
		st.Codec = s.pl.Stats()
		s.pl.Close()
	}
	st.LinkBytes, _ = transport.Written(conn)
	if err != nil && cfg.ch != nil {
		if rerr := cfg.ch.settle(); rerr != nil && !errors.Is(err, rerr) {
			// A second channel refused the migration and closed qemu
			// under the reader, or the destination QEMU hung up on a
			// command only that capability explains: say why first.
			err = errors.Join(rerr, err)
		}
	}
	return st, err
}

// finish sends whatever follows the stream's end as it is, then kindQEnd.
func (s *sourceSender) finish(qemu net.Conn, n *int64) error {
	k, err := io.Copy(blobSender{s}, qemu)
	*n += k
	if err == nil {
		err = s.flush(true)
	}
	if err == nil {
		err = s.conn.Send(s.ctx, transport.Msg{Kind: kindQEnd})
	}
	if err == nil {
		err = s.conn.Flush(s.ctx)
	}
	if err != nil {
		return fmt.Errorf("relay source half: after the stream's end: %w", err)
	}
	return nil
}

// sourceSender turns the source QEMU's records into messages.
type sourceSender struct {
	ctx   context.Context
	conn  transport.Conn
	cfg   sourceConfig
	img   *stream.Image // what the destination QEMU holds: QEMU's deltas apply to it
	pl    *codec.Pipeline
	pe    codec.PageEncoder // post-copy: no XBZRLE, and no page skipped
	pbuf  []byte
	blob  bytes.Buffer
	bw    *stream.Writer
	round int
	plain bool // post-copy has begun
	dirty bool // pages sent since the destination half last wrote out
	pages int
}

func newSourceSender(ctx context.Context, conn transport.Conn, cfg sourceConfig) *sourceSender {
	s := &sourceSender{ctx: ctx, conn: conn, cfg: cfg, pe: codec.PageEncoder{LZ4: cfg.LZ4}, pbuf: make([]byte, 0, stream.PageSize)}
	s.bw = stream.NewWriter(&s.blob)
	return s
}

// copyStream carries the stream until its end (io.EOF: nil).
func (s *sourceSender) copyStream(r *stream.Reader) error {
	for {
		if r.Buffered() == 0 {
			// Next may wait for the source QEMU: let the destination have
			// everything so far (it may have to answer first).
			if err := s.flush(true); err != nil {
				return err
			}
		}
		rec, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("relay source half: source QEMU's stream: %w", err)
		}
		if err := s.record(&rec); err != nil {
			return fmt.Errorf("relay source half: %v record at stream offset %d: %w", rec.Kind, rec.Offset, err)
		}
	}
}

// record carries one record.
func (s *sourceSender) record(rec *stream.Record) error {
	if s.cfg.ch != nil {
		if err := s.cfg.ch.note(rec); err != nil {
			return err
		}
	}
	switch {
	case rec.Kind == stream.KindMemSize:
		return s.blocks(rec)
	case rec.Kind.IsPage():
		s.pages++
		return s.page(rec)
	case rec.Kind == stream.KindCommand && (rec.Command == stream.CmdPackaged || rec.Command == stream.CmdPostcopyDiscard):
		// QEMU's post-copy loader places each page it receives, and the
		// discarded pages no longer hold what was sent: every page goes
		// from now on, with no delta.
		s.plain = true
	case rec.Kind == stream.KindSection && rec.Name == stream.RAMName && rec.Type != stream.SectionStart && s.pl != nil:
		// Each RAM section after the block list is a round of the
		// pipeline: its cache generation. Round 2 and up use the cache.
		s.round = max(s.round+1, 2)
		if err := s.pl.Barrier(s.ctx); err != nil {
			return err
		}
		s.pl.StartRound(s.round, rec.Type == stream.SectionEnd)
	}
	if err := s.bw.Write(rec); err != nil {
		return err
	}
	if s.blob.Len() >= blobFlushAt {
		return s.flush(false)
	}
	return nil
}

// blocks sends the block list and sets up the image and the pipeline.
func (s *sourceSender) blocks(rec *stream.Record) error {
	if err := s.flush(false); err != nil {
		return err
	}
	var b []byte
	for _, blk := range rec.Blocks {
		if blk.Addr != 0 {
			return fmt.Errorf("block %s with an address (x-ignore-shared): %w", blk.Name, livemig.ErrNotSupported)
		}
		b = append(b, byte(len(blk.Name)))
		b = append(b, blk.Name...)
		b = binary.BigEndian.AppendUint64(b, blk.Size)
	}
	if s.img == nil {
		l, err := stream.NewLayout(rec.Blocks)
		if err != nil {
			return err
		}
		if s.img, err = stream.NewImage(l, imageConfig); err != nil {
			return err
		}
		s.pl, err = codec.NewPipeline(codec.Config{XBZRLE: s.cfg.XBZRLE, LZ4: s.cfg.LZ4, Workers: 1, NoAdapt: true,
			Cache: deltaCache(s.cfg.Cache)}, s.img, nil, s.sendPage)
		if err != nil {
			return err
		}
	}
	return s.conn.Send(s.ctx, transport.Msg{Kind: kindQBlocks, Data: b})
}

// page applies a page record of QEMU's (a delta to the page QEMU last sent)
// and sends the page's new contents through the codecs.
func (s *sourceSender) page(rec *stream.Record) error {
	if rec.Packaged || s.img == nil {
		return fmt.Errorf("a page record inside a PACKAGED sub-stream or before the block list: %w", livemig.ErrNotSupported)
	}
	if err := s.flush(false); err != nil {
		return err
	}
	if err := s.img.Apply(rec); err != nil {
		return err
	}
	s.dirty = true
	if !s.plain {
		return s.pl.Submit(s.ctx, rec.Page)
	}
	v := s.img.View(rec.Page)
	if v == nil {
		return s.sendPage(transport.Msg{Enc: transport.EncZero, Page: rec.Page})
	}
	enc, data := s.pe.Encode(s.pbuf[:0], v)
	return s.sendPage(transport.Msg{Enc: enc, Page: rec.Page, Data: data})
}

func (s *sourceSender) sendPage(m transport.Msg) error {
	m.Kind = kindQPage
	return s.conn.Send(s.ctx, m)
}

// flush sends the stream bytes collected; with sync (the source QEMU's
// input is drained) it also makes the destination half write out what it
// holds, and flushes the Conn.
func (s *sourceSender) flush(sync bool) error {
	if err := s.bw.Flush(); err != nil {
		return err
	}
	if s.blob.Len() > 0 {
		if err := s.conn.Send(s.ctx, transport.Msg{Kind: kindQStream, Data: s.blob.Bytes()}); err != nil {
			return err
		}
		s.blob.Reset()
		s.dirty = false
	}
	if !sync {
		return nil
	}
	if s.dirty {
		if err := s.conn.Send(s.ctx, transport.Msg{Kind: kindQSync}); err != nil {
			return err
		}
		s.dirty = false
	}
	return s.conn.Flush(s.ctx)
}

// blobSender sends what is written to it as stream bytes.
type blobSender struct{ s *sourceSender }

func (b blobSender) Write(p []byte) (int, error) {
	if err := b.s.conn.Send(b.s.ctx, transport.Msg{Kind: kindQStream, Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// deltaCache configures the relay's XBZRLE cache: QEMU's policy
// (direct-mapped), of n bytes (0: QEMU's default, 64 MiB).
func deltaCache(n int64) delta.CacheConfig {
	return delta.CacheConfig{Bytes: n, PageSize: stream.PageSize}
}

// relaySource runs the source half of one migration: it accepts the source
// QEMU on ln (one connection: a second, which multifd or post-copy's preempt
// channel would open, refuses the migration with an error wrapping
// livemig.ErrNotSupported that names the capability), dials the destination half at peer over livemig's transport
// (its writes limited to rate bytes per second; 0: no limit) and carries
// the migration (runSource).
func relaySource(ctx context.Context, ln net.Listener, peer string, rate float64, cfg sourceConfig) (sourceStats, error) {
	ch := acceptChannels(ln)
	defer ch.close()
	qemu, err := ch.accept()
	if err != nil {
		// Tell the destination half, which waits for us: a link that
		// closes before the stream makes it fail its QEMU's load.
		if link, derr := transport.Dial(ctx, peer, transport.DialConfig{}); derr == nil {
			if conn, _, oerr := transport.Open(ctx, link, relayHello, transport.Config{}); oerr == nil {
				conn.Close()
			} else {
				link.Close()
			}
		}
		return sourceStats{}, fmt.Errorf("relay source half: %w", err)
	}
	cfg.ch = ch
	link, err := transport.Dial(ctx, peer, transport.DialConfig{})
	if err != nil {
		qemu.Close()
		return sourceStats{}, fmt.Errorf("relay source half: dialing the destination half at %s: %w", peer, err)
	}
	if rate > 0 {
		link = transport.RateLimit(link, transport.RateConfig{BytesPerSec: rate})
	}
	if cfg.wrap != nil {
		link = cfg.wrap(link)
	}
	conn, _, err := transport.Open(ctx, link, relayHello, transport.Config{})
	if err != nil {
		qemu.Close()
		return sourceStats{}, fmt.Errorf("relay source half: handshake with the destination half at %s: %w", peer, err)
	}
	ch.closeOnRefusal(conn)
	return runSource(ctx, qemu, conn, cfg)
}

// relayDest runs the destination half of one migration: it accepts the
// source half on ln, dials the destination QEMU at to and carries the
// migration (runDest).
func relayDest(ctx context.Context, ln *transport.Listener, to string) (destStats, error) {
	conn, _, err := ln.AcceptConn(ctx, relayHello, transport.Config{})
	if err != nil {
		return destStats{}, fmt.Errorf("relay destination half: accepting the source half: %w", err)
	}
	qemu, err := net.Dial("tcp", to)
	if err != nil {
		conn.Close()
		return destStats{}, fmt.Errorf("relay destination half: dialing the destination QEMU at %s: %w", to, err)
	}
	return runDest(ctx, conn, qemu)
}

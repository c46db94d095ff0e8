package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/examples/qemu/stream"
	"github.com/livemig/livemig/transport"
)

// destStats is what the destination half carried.
type destStats struct {
	QEMUBytes   int64 // stream bytes written to the destination QEMU
	ReturnBytes int64 // return-path bytes read from it
	Pages       int   // page records written
}

func (s destStats) String() string {
	return fmt.Sprintf("relay destination half: %d page records, %d stream bytes to the destination QEMU; return path %d bytes",
		s.Pages, s.QEMUBytes, s.ReturnBytes)
}

// endWait bounds how long the destination half waits, after both
// directions have ended, for the source half to close the link.
const endWait = 10 * time.Second

// runDest is the destination half: it rebuilds the source QEMU's stream
// from conn's messages and writes it to the destination QEMU on qemu (pages
// as PAGE and ZERO records, the rest as it came), and carries the return
// path back. It returns when both directions have ended. On an error, a cut
// link included, it closes qemu without ending the stream, so that the
// destination QEMU fails the load and never runs the guest.
func runDest(ctx context.Context, conn transport.Conn, qemu net.Conn) (destStats, error) {
	var st destStats
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rpDone := make(chan error, 1)
	go func() { rpDone <- sendReturnPath(ctx, conn, qemu, &st.ReturnBytes) }()
	d := &destWriter{out: &countWriter{w: stallWriter{qemu}}, buf: make([]byte, stream.PageSize)}
	d.w = stream.NewWriter(d.out)
	err := d.run(ctx, conn)
	st.Pages, st.QEMUBytes = d.pages, d.out.n
	if err != nil {
		qemu.Close()
		conn.Close()
		<-rpDone
		return st, err
	}
	closeWrite(qemu)
	if err := <-rpDone; err != nil {
		qemu.Close()
		conn.Close()
		return st, err
	}
	// Both directions ended: wait for the source half to close the link
	// (a close with our last message unread would lose it).
	wctx, wcancel := context.WithTimeout(ctx, endWait)
	defer wcancel()
	var m transport.Msg
	for conn.Recv(wctx, &m) == nil {
	}
	conn.Close()
	qemu.Close()
	return st, nil
}

// qemuStall bounds how long the destination half waits for the destination
// QEMU to take stream bytes: a QEMU that takes no write for this long (one
// that waits for channels the relay does not carry, say, after the source
// half refused them) is a silent peer, and the destination half fails
// rather than wait for it for ever, reading nothing from the link.
var qemuStall = 30 * time.Second

// stallWriter writes to the destination QEMU, failing a write that does
// not complete within qemuStall.
type stallWriter struct{ c net.Conn }

func (w stallWriter) Write(p []byte) (int, error) {
	if err := w.c.SetWriteDeadline(time.Now().Add(qemuStall)); err != nil {
		return 0, err
	}
	n, err := w.c.Write(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("the destination QEMU took no stream bytes for %v: %w", qemuStall, err)
	}
	return n, err
}

// sendReturnPath copies the destination QEMU's return path to the source
// half, then sends kindQEnd.
func sendReturnPath(ctx context.Context, conn transport.Conn, qemu net.Conn, n *int64) error {
	buf := make([]byte, maxReturnChunk)
	for {
		k, rerr := qemu.Read(buf)
		if k > 0 {
			*n += int64(k)
			if err := conn.Send(ctx, transport.Msg{Kind: kindQReturn, Data: buf[:k]}); err != nil {
				return fmt.Errorf("relay destination half: return path to the source half: %w", err)
			}
		}
		if rerr == io.EOF {
			if err := conn.Send(ctx, transport.Msg{Kind: kindQEnd}); err != nil {
				return fmt.Errorf("relay destination half: return path to the source half: %w", err)
			}
			return conn.Flush(ctx)
		}
		if rerr != nil {
			if errors.Is(rerr, net.ErrClosed) {
				return nil // closed by runDest after an error
			}
			return fmt.Errorf("relay destination half: return path from the destination QEMU: %w", rerr)
		}
	}
}

// destWriter writes the rebuilt stream.
type destWriter struct {
	out   *countWriter
	w     *stream.Writer // page and block-list records; stream bytes go to out
	img   *stream.Image  // the pages last received: XBZRLE deltas apply to them
	buf   []byte
	pages int
}

// run handles the source half's messages until kindQEnd.
func (d *destWriter) run(ctx context.Context, conn transport.Conn) error {
	var m transport.Msg
	for {
		if err := conn.Recv(ctx, &m); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the link ended before the stream
			}
			return fmt.Errorf("relay destination half: from the source half: %w", err)
		}
		var err error
		switch m.Kind {
		case kindQPage:
			err = d.page(&m)
		case kindQStream:
			if err = d.w.Flush(); err == nil {
				_, err = d.out.Write(m.Data)
			}
		case kindQBlocks:
			err = d.blocks(m.Data)
		case kindQSync:
			err = d.w.Flush()
		case kindQEnd:
			return d.w.Flush()
		default:
			err = fmt.Errorf("unexpected %v message: %w", m.Kind, livemig.ErrCorrupt)
		}
		if err != nil && m.Kind == kindQPage {
			return fmt.Errorf("relay destination half: %v message (page %d): %w", m.Kind, m.Page, err)
		}
		if err != nil {
			return fmt.Errorf("relay destination half: %v message: %w", m.Kind, err)
		}
	}
}

// blocks parses a block list, writes it as a MEM_SIZE record and, the first
// time, sets up the image.
func (d *destWriter) blocks(b []byte) error {
	var blocks []stream.Block
	for at := 0; at < len(b); {
		n := int(b[at])
		if n == 0 || len(b)-at < 1+n+8 {
			return fmt.Errorf("%w: block list cut or with an empty name at byte %d of %d", livemig.ErrCorrupt, at, len(b))
		}
		blocks = append(blocks, stream.Block{Name: string(b[at+1 : at+1+n]), Size: binary.BigEndian.Uint64(b[at+1+n:])})
		at += 1 + n + 8
		if len(blocks) > stream.DefaultMaxBlocks {
			return fmt.Errorf("%w: more than %d blocks", livemig.ErrCorrupt, stream.DefaultMaxBlocks)
		}
	}
	l, err := stream.NewLayout(blocks)
	if err != nil {
		return err
	}
	if d.img == nil {
		if d.img, err = stream.NewImage(l, imageConfig); err != nil {
			return err
		}
	} else if !d.img.Layout().Equal(l) {
		return fmt.Errorf("a second block list that differs from the first: %w", livemig.ErrNotSupported)
	}
	return d.w.Write(&stream.Record{Kind: stream.KindMemSize, Blocks: blocks})
}

// page decodes a page record against the image and writes it as a PAGE or
// ZERO record.
func (d *destWriter) page(m *transport.Msg) error {
	if d.img == nil {
		return fmt.Errorf("%w: a page before the block list", livemig.ErrCorrupt)
	}
	l := d.img.Layout()
	bi, off, err := l.Locate(m.Page)
	if err != nil {
		return err
	}
	p, err := codec.DecodePage(d.buf, m.Page, m.Enc, m.Data, d.img)
	if err != nil {
		return err
	}
	rec := stream.Record{Kind: stream.KindZero, Block: l.Blocks()[bi].Name, Addr: off}
	if p == nil {
		err = d.img.ZeroPage(m.Page)
	} else {
		rec.Kind, rec.Data = stream.KindPage, p
		err = d.img.WritePage(m.Page, p)
	}
	if err != nil {
		return err
	}
	d.pages++
	return d.w.Write(&rec)
}

package transport

import (
	"context"
	"sync/atomic"
)

// Framing is the framing's batching rule and its byte count, as a pure
// value: which page record closes the batch being built, and how many bytes
// the frames closed so far take on the link.
//
// A Conn decides its batch boundaries with one, so a model of a Conn's link
// that feeds its own Framing the same sends and flushes (the simulator's
// post-copy link, a test's scripted connection) counts exactly the bytes the
// Conn writes, without a Conn. Heartbeats are not sends: a Conn's Written
// counts them besides.
//
// The zero value is not ready: use NewFraming. A Framing is not safe for
// concurrent use.
type Framing struct {
	batchBytes int  // payload bytes of records a batch holds
	kind       Kind // the open batch's kind
	count      int  // its records
	payload    int  // its payload bytes
	written    uint64
}

// NewFraming returns the Framing of a Conn whose Config.BatchBytes is
// batchBytes (0 or less: DefaultBatchBytes) and whose frames are bounded by
// maxFrame payload bytes (0 or less: DefaultMaxFrame).
func NewFraming(batchBytes, maxFrame int) Framing {
	if batchBytes <= 0 {
		batchBytes = DefaultBatchBytes
	}
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return Framing{batchBytes: min(batchBytes, maxFrame)}
}

// Page counts a page record of kind (a ClassRecords kind) with dataLen bytes
// of data. It reports whether the batch open before it had to be closed
// first: it is full, at its record limit, or of another kind. The record
// then opens a new batch.
func (f *Framing) Page(kind Kind, dataLen int) (closed bool) {
	rec := recordHeaderSize + dataLen
	if f.count > 0 && (f.payload+rec > f.batchBytes || f.count == maxBatchCount || kind != f.kind) {
		f.Flush()
		closed = true
	}
	f.kind = kind
	f.count++
	f.payload += rec
	return closed
}

// Flush closes the open batch, if any, and reports whether there was one.
func (f *Framing) Flush() bool {
	if f.count == 0 {
		return false
	}
	f.written += uint64(FrameOverhead + f.payload)
	f.count, f.payload = 0, 0
	return true
}

// Batch counts a batch frame of payload bytes built whole (a Conn's
// BatchSender.SendBatch): it closes the open batch, then takes one frame.
func (f *Framing) Batch(payload int) {
	f.Flush()
	f.written += uint64(FrameOverhead + payload)
}

// Control counts a message of any other class with dataLen bytes of data:
// it closes the open batch, then takes one frame, or several for a blob
// longer than a frame's payload of maxFrame bytes (0 or less:
// DefaultMaxFrame; a Conn's Config.MaxFrame).
func (f *Framing) Control(dataLen, maxFrame int) {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	f.Flush()
	chunk := maxFrame - controlHeaderSize
	frames := 1
	if dataLen > chunk {
		frames = (dataLen + chunk - 1) / chunk
	}
	f.written += uint64(frames*(FrameOverhead+controlHeaderSize) + dataLen)
}

// Written returns the bytes of the frames closed so far.
func (f *Framing) Written() uint64 { return f.written }

// Pending returns how many records the open batch holds.
func (f *Framing) Pending() int { return f.count }

// Meter is implemented by a Conn that counts the bytes it writes to its
// link: every frame, heartbeats included, the handshake's hello not. Written
// may be called from any goroutine, at any time; it grows as frames are
// written (a batch still being built is not written yet). Every Conn of
// this package is a Meter (a multi-stream Conn counts its streams).
type Meter interface {
	Written() uint64
}

// Written returns the bytes c has written to its link, and false if c does
// not count them (it is no Meter).
func Written(c Conn) (uint64, bool) {
	m, ok := c.(Meter)
	if !ok {
		return 0, false
	}
	return m.Written(), true
}

// Metered returns c if it is a Meter, and otherwise a Conn that passes every
// call to c and counts what it sends with a Framing at this package's
// defaults (DefaultBatchBytes, DefaultMaxFrame): the bytes a Conn of this
// package would write for the same sends, without heartbeats. Engines use it
// so that their reports count bytes the same way on any Conn.
func Metered(c Conn) Conn {
	if _, ok := c.(Meter); ok {
		return c
	}
	return &meteredConn{Conn: c, fr: NewFraming(0, 0)}
}

// meteredConn counts a Conn's sends. fr belongs to the goroutine that
// sends; written is its count for any goroutine.
type meteredConn struct {
	Conn
	fr      Framing
	written atomic.Uint64
}

func (m *meteredConn) Send(ctx context.Context, msg Msg) error {
	if err := m.Conn.Send(ctx, msg); err != nil {
		return err
	}
	if msg.Kind.Class() == ClassRecords {
		m.fr.Page(msg.Kind, len(msg.Data))
	} else {
		m.fr.Control(len(msg.Data), 0)
	}
	m.written.Store(m.fr.Written())
	return nil
}

func (m *meteredConn) Flush(ctx context.Context) error {
	if err := m.Conn.Flush(ctx); err != nil {
		return err
	}
	m.fr.Flush()
	m.written.Store(m.fr.Written())
	return nil
}

func (m *meteredConn) Written() uint64 { return m.written.Load() }

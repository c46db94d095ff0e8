package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/crc32c"
)

// Config configures a Conn. The zero value is the default for every field.
type Config struct {
	// PageSize is the size of a raw page record: livemig.DefaultPageSize
	// if 0. It must not exceed MaxPageSize.
	PageSize int
	// PageCount, if not 0, bounds the page numbers of page records
	// (ClassRecords): a record past it is refused on Send and is corrupt
	// on Recv. Open sets it from the hello. The Page of other messages is
	// the protocol's to check.
	PageCount uint64
	// BatchBytes is how many bytes of page records (data and record
	// headers) a batch frame collects before it goes out:
	// DefaultBatchBytes if 0. It is lowered to MaxFrame if larger.
	BatchBytes int
	// MaxFrame bounds a frame's payload, sent and received: DefaultMaxFrame
	// if 0. It is raised to fit one page record of the largest encoded size
	// (MaxEncodedLen) if smaller. Both peers must use the same value or the
	// receiver's must be larger.
	MaxFrame int
	// MaxState bounds a blob (ClassBlob, such as a guest's CPU and device
	// state), sent and reassembled on receipt: DefaultMaxState if 0.
	MaxState int
	// Liveness bounds how long the peer may stay silent: a Recv that sees
	// no byte arrive for this long, or a frame write that makes no headway
	// for this long while no byte arrives either, fails with an error
	// wrapping ErrStalled and the link is closed; it is noticed between
	// the bound and an eighth more. Once the peer has closed its end, a
	// write with no headway for the bound fails whatever came in before.
	// To keep a healthy but quiet direction alive, the Conn sends a
	// heartbeat frame when it has written nothing for an eighth of it (at
	// most a quarter of it apart); Recv skips the
	// peer's heartbeats. Open announces it in the hello and gives the Conn
	// the bound both sides agree on (the longer; none if either is off),
	// and bounds its handshake with it. DefaultLiveness if 0; negative
	// turns it off (no heartbeats, no deadline). It is off on links in
	// virtual time (a SimLink end, or a RateLink on a virtual clock,
	// possibly wrapped), whose pace is not the wall clock's.
	//
	// A frame (up to MaxFrame bytes) must go out within Liveness: on a
	// link slower than MaxFrame/Liveness (1.6 Mbit/s at the defaults),
	// raise it.
	Liveness time.Duration
	// Logger receives debug records about failures (a corrupt frame, a cut
	// link). Nil means no logging.
	Logger *slog.Logger
}

// DefaultLiveness is Config.Liveness's default.
const DefaultLiveness = 5 * time.Second

// ErrStalled is wrapped by the error a Conn (or a handshake) returns when
// the peer stayed silent for longer than Config.Liveness: no byte came while
// a Recv waited, or a write made no headway. The link is then closed. A
// stall is a link failure, like a cut.
var ErrStalled = errors.New("transport: link stalled")

// liveness returns the effective liveness bound of cfg on link: 0 when off.
func liveness(cfg Config, link Link) time.Duration {
	d := cfg.Liveness
	if d == 0 {
		d = DefaultLiveness
	}
	if d < 0 || isVirtual(link) {
		return 0
	}
	return d
}

// isVirtual reports whether link runs in virtual time: a SimLink end, a
// RateLink measured on a virtual clock, or a link that unwraps to one.
func isVirtual(link Link) bool {
	for {
		if v, ok := link.(interface{ virtualTime() bool }); ok && v.virtualTime() {
			return true
		}
		switch l := link.(type) {
		case interface{ Clock() *livemig.VirtualClock }:
			return true
		case interface{ Unwrap() Link }:
			link = l.Unwrap()
		default:
			return false
		}
	}
}

var (
	errConnSendClosed = fmt.Errorf("transport: send: %w", livemig.ErrClosed)
	errConnRecvClosed = fmt.Errorf("transport: recv: %w", livemig.ErrClosed)
)

// NewConn returns a Conn that frames messages over link, which it owns from
// now on (Close closes it). It does not handshake: see Open and Handshake.
//
// Page records (ClassRecords) go out in batch frames of about
// cfg.BatchBytes; any other message flushes the batch and then goes out as
// its own frame. Every frame goes to the link in one Write (on a Pipe end,
// in one hand-over of its buffer, without a copy: see Pipe). A blob
// (ClassBlob) longer than a frame goes as several frames, which Recv
// reassembles into one message.
//
// Recv's Data is borrowed from the Conn until the next Recv. Sending or
// receiving a 4 KiB page record allocates nothing; with a ctx whose Done is
// not nil, each frame read or written costs one small allocation (the
// context.AfterFunc that closes the link if ctx ends while it is blocked).
//
// Close does not flush: call Flush first to send a pending batch. After
// Close, Send, Flush and Recv return errors wrapping livemig.ErrClosed. After
// any other error from the link or a corrupt frame, the direction that saw
// it (Send and Flush, or Recv) keeps returning that error.
//
// With liveness on (Config.Liveness), two goroutines watch the link until
// Close: one checks for a silent peer and a stuck write, the other writes
// the heartbeats. Close waits for both to end.
func NewConn(link Link, cfg Config) Conn {
	c := &conn{link: link, log: cfg.Logger, pageCount: cfg.PageCount}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.abortFn = c.abort
	c.fl, _ = link.(frameLink)
	c.pageSize = cfg.PageSize
	if c.pageSize <= 0 {
		c.pageSize = livemig.DefaultPageSize
	}
	if c.pageSize > MaxPageSize {
		c.cfgErr = fmt.Errorf("transport: page size %d over %d: %w", c.pageSize, MaxPageSize, ErrInvalid)
		c.werr, c.rerr = c.cfgErr, c.cfgErr
		c.pageSize = livemig.DefaultPageSize
	}
	c.shift = pageShifter(c.pageSize)
	c.maxFrame = cfg.MaxFrame
	if c.maxFrame <= 0 {
		c.maxFrame = DefaultMaxFrame
	}
	c.maxFrame = max(c.maxFrame, recordHeaderSize+MaxEncodedLen(c.pageSize), controlHeaderSize+256)
	c.batchBytes = cfg.BatchBytes
	if c.batchBytes <= 0 {
		c.batchBytes = DefaultBatchBytes
	}
	c.batchBytes = min(c.batchBytes, c.maxFrame)
	c.wcap = frameHeaderSize + max(c.batchBytes, recordHeaderSize+MaxEncodedLen(c.pageSize)) + frameTrailerSize
	c.fr = NewFraming(c.batchBytes, c.maxFrame)
	c.maxState = cfg.MaxState
	if c.maxState <= 0 {
		c.maxState = DefaultMaxState
	}
	if c.cfgErr == nil {
		c.live = liveness(cfg, link)
		c.startLiveness(c.live)
	}
	return c
}

// conn is the single-link Conn. The fields under "sender" belong to the
// goroutine calling Send and Flush, those under "receiver" to the one calling
// Recv; closed and once may be used by any.
type conn struct {
	link       Link
	log        *slog.Logger
	pageSize   int
	pageCount  uint64
	batchBytes int
	maxFrame   int
	maxState   int
	cfgErr     error
	live       time.Duration // the liveness bound in effect; 0: off
	abortFn    func()
	fl         frameLink // link, when it moves frames without copying (Pipe)
	wcap       int       // wbuf's capacity: a full batch or one largest record, and the CRC

	closed   atomic.Bool
	once     sync.Once
	closeErr error
	written  atomic.Uint64 // bytes written to the link (Meter)

	// liveness (see live.go)
	wmu      sync.Mutex    // one frame write at a time: the sender's or a heartbeat
	wdone    atomic.Uint64 // frame writes done, heartbeats included
	wbusy    atomic.Bool   // a frame write is under way
	rprog    atomic.Uint64 // reads that returned bytes
	reading  atomic.Bool   // a Recv waits on the link
	rend     atomic.Bool   // a read of the link failed (the peer's end, or a broken link)
	stallErr atomic.Pointer[error]
	stop     chan struct{}
	beat     chan struct{}
	watchers sync.WaitGroup

	shift crc32c.Shifter // combines a page's CRC into a frame's (both directions)

	// sender
	wbuf   []byte  // the frame being built: header room, then the payload
	wcrc   uint32  // CRC32C of wbuf's payload so far
	wcount int     // records in wbuf
	wkind  Kind    // their kind
	werr   error   // sticky send error
	fr     Framing // where batches end

	// receiver
	rbuf      []byte  // the current frame, header included; then read-ahead bytes
	rown      []byte  // the conn's own receive buffer while rbuf is a taken frame
	rtaken    []byte  // a frame taken from fl, borrowed by the caller until the next frame
	roff      int64   // stream offset of the next frame
	foff      int64   // stream offset of the current frame
	rpos      int     // offset in rbuf of the next record to return
	rleft     int     // records of the current batch not yet returned
	rkind     Kind    // their kind
	rcrc      crcWalk // the current frame's CRC, and its raw pages' CRCs
	rnum      int     // records of the current batch
	rerr      error   // sticky receive error
	state     []byte  // a blob being reassembled
	inState   bool    // a blob frame with the "more" flag came last
	stateKind Kind    // that frame's kind
	stateOff  int64   // stream offset of the blob's first frame
	ahead     int     // bytes of the next frame read ahead, at rbuf[len(rbuf):]
	aheadErr  error   // the link's error that came with the end of a frame
}

// Close closes the Conn and its link, unblocking any Send, Flush or Recv.
// It returns the link's Close error the first time, nil after.
func (c *conn) Close() error {
	first := false
	c.once.Do(func() {
		first = true
		c.closed.Store(true)
		c.closeErr = c.link.Close()
		if c.stop != nil {
			close(c.stop)
			c.watchers.Wait()
		}
	})
	if first {
		return c.closeErr
	}
	return nil
}

// abort closes the conn when a ctx ends during a blocking call.
func (c *conn) abort() { c.Close() }

// ctxDone returns ctx.Err() if ctx is done, nil otherwise, without allocating.
func ctxDone(ctx context.Context) error {
	done := ctx.Done()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return ctx.Err()
	default:
		return nil
	}
}

// sendable says whether a send may go on: the Conn open, no earlier write
// failed, ctx not done.
func (c *conn) sendable(ctx context.Context) error {
	if c.closed.Load() {
		return errConnSendClosed
	}
	if c.werr != nil {
		return c.werr
	}
	if err := ctxDone(ctx); err != nil {
		return fmt.Errorf("transport: send: %w", err)
	}
	return nil
}

// Send queues m; see Conn.
func (c *conn) Send(ctx context.Context, m Msg) error {
	if err := c.sendable(ctx); err != nil {
		return err
	}
	if c.wbuf == nil {
		c.wbuf = make([]byte, frameHeaderSize, c.wcap)
	}
	switch cl := m.Kind.Class(); cl {
	case ClassRecords:
		return c.sendPage(ctx, m.Kind, m.Page, m.Enc, m.Data, m.DataCRC, m.HaveCRC)
	case ClassNone, ClassHeartbeat:
		return fmt.Errorf("transport: send: kind %d: %w", m.Kind, ErrInvalid)
	default:
		return c.sendControl(ctx, m.Kind, cl, m.Page, m.Arg, m.Data)
	}
}

func (c *conn) sendPage(ctx context.Context, kind Kind, page uint64, enc Encoding, data []byte, dataCRC uint32, haveCRC bool) error {
	if err := c.checkPage(page, enc, len(data)); err != nil {
		return err
	}
	rec := recordHeaderSize + len(data)
	if c.fr.Page(kind, len(data)) { // the open batch ends before this record
		if err := c.writeBatch(ctx); err != nil {
			return err
		}
	}
	// wbuf's capacity holds a full batch or one largest record, plus the CRC.
	off := len(c.wbuf)
	b := c.wbuf[:off+rec]
	binary.LittleEndian.PutUint64(b[off:], page)
	b[off+8] = byte(enc)
	binary.LittleEndian.PutUint32(b[off+9:], uint32(len(data)))
	copy(b[off+recordHeaderSize:], data)
	c.wcrc = crc32c.Update(c.wcrc, b[off:off+recordHeaderSize])
	if haveCRC && len(data) == c.shift.Len() {
		// The caller read the page for its CRC already (the digest's):
		// the frame's CRC takes it instead of reading the bytes again.
		// A wrong one makes the peer refuse the frame.
		c.wcrc = c.shift.Combine(c.wcrc, dataCRC)
	} else {
		// The copy's bytes, not data's: data may be guest memory that
		// changes under us (a PageView), and the frame must carry the
		// CRC of what it carries.
		c.wcrc = crc32c.Update(c.wcrc, b[off+recordHeaderSize:off+rec])
	}
	c.wbuf = b
	c.wcount++
	c.wkind = kind
	return nil
}

func (c *conn) sendControl(ctx context.Context, kind Kind, cl Class, page, arg uint64, data []byte) error {
	if n := len(data); cl == ClassBitmap && (n == 0 || n%8 != 0 || n > 8*MaxBitmapWords) {
		// The peer's checkHeader would reject the frame as corrupt.
		return fmt.Errorf("transport: send %v: %d bitmap bytes, want 1 to %d whole words: %w", kind, n, MaxBitmapWords, ErrInvalid)
	}
	chunk := c.maxFrame - controlHeaderSize
	if len(data) > chunk && (cl != ClassBlob || len(data) > c.maxState) {
		return fmt.Errorf("transport: send %v: %d bytes: %w (%w)", kind, len(data), ErrTooLarge, ErrInvalid)
	}
	if err := c.flush(ctx); err != nil {
		return err
	}
	c.fr.Control(len(data), c.maxFrame)
	for {
		n := min(len(data), chunk)
		var flags uint8
		if n < len(data) {
			flags = frameFlagMore
		}
		need := frameHeaderSize + controlHeaderSize + n + frameTrailerSize
		if cap(c.wbuf) < need {
			c.wbuf = make([]byte, frameHeaderSize, need)
		}
		b := c.wbuf[:frameHeaderSize]
		b = binary.LittleEndian.AppendUint64(b, page)
		b = binary.LittleEndian.AppendUint64(b, arg)
		b = append(b, data[:n]...)
		putFrameHeader(b, len(b)-frameHeaderSize, kind, flags, 0)
		c.wbuf = b
		if err := c.writeFrame(ctx); err != nil {
			return err
		}
		data = data[n:]
		if len(data) == 0 {
			return nil
		}
	}
}

// Flush sends the pending batch, if any.
func (c *conn) Flush(ctx context.Context) error {
	if c.closed.Load() {
		return errConnSendClosed
	}
	if c.werr != nil {
		return c.werr
	}
	if err := ctxDone(ctx); err != nil {
		return fmt.Errorf("transport: flush: %w", err)
	}
	return c.flush(ctx)
}

func (c *conn) flush(ctx context.Context) error {
	if !c.fr.Flush() {
		return nil
	}
	return c.writeBatch(ctx)
}

// Written returns the bytes written to the link; see Meter.
func (c *conn) Written() uint64 { return c.written.Load() }

// writeBatch writes the batch in wbuf.
func (c *conn) writeBatch(ctx context.Context) error {
	n := len(c.wbuf) - frameHeaderSize
	putFrameHeader(c.wbuf, n, c.wkind, 0, c.wcount)
	crc := crc32c.Combine(crc32.Checksum(c.wbuf[:frameHeaderSize], castagnoli), c.wcrc, n)
	c.wcrc = 0
	return c.writeSealed(ctx, binary.LittleEndian.AppendUint32(c.wbuf, crc))
}

// writeFrame appends the CRC to the frame in wbuf, writes it and empties wbuf.
func (c *conn) writeFrame(ctx context.Context) error {
	return c.writeSealed(ctx, sealFrame(c.wbuf))
}

// writeSealed writes b, the frame in wbuf with its trailer, and empties wbuf.
func (c *conn) writeSealed(ctx context.Context, b []byte) error {
	next, err := c.writeOut(ctx, b)
	c.wbuf = next[:frameHeaderSize]
	c.wcount = 0
	return err
}

// writeOut writes b, a whole frame with its trailer, and returns the
// buffer for the next frame (see write) and the Send side's error.
func (c *conn) writeOut(ctx context.Context, b []byte) ([]byte, error) {
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, c.abortFn)
	}
	next, err := c.write(b)
	if stop != nil && !stop() {
		c.werr = fmt.Errorf("transport: send: %w", ctx.Err())
		return next, c.werr
	}
	if err != nil {
		if serr := c.stalled(); serr != nil {
			c.werr = fmt.Errorf("transport: send: %w", serr)
			return next, c.werr
		}
		if c.closed.Load() {
			return next, errConnSendClosed
		}
		c.werr = fmt.Errorf("transport: send: %w", err)
		c.log.LogAttrs(ctx, slog.LevelDebug, "transport: send failed", slog.Any("err", err))
		return next, c.werr
	}
	return next, nil
}

// Recv receives the next message; see Conn.
func (c *conn) Recv(ctx context.Context, m *Msg) error {
	if c.closed.Load() {
		return errConnRecvClosed
	}
	if c.rerr != nil {
		return c.rerr
	}
	if c.rleft > 0 {
		c.nextRecord(m)
		return nil
	}
	if err := ctxDone(ctx); err != nil {
		return fmt.Errorf("transport: recv: %w", err)
	}
	err := c.recvFrame(ctx, m)
	if err != nil {
		c.rerr = err
		if err != io.EOF {
			c.log.LogAttrs(ctx, slog.LevelDebug, "transport: recv failed", slog.Any("err", err))
		}
	}
	return err
}

func (c *conn) nextRecord(m *Msg) {
	b := c.rbuf[c.rpos:]
	n := int(binary.LittleEndian.Uint32(b[9:]))
	m.Kind = c.rkind
	m.Enc = Encoding(b[8])
	m.Page = binary.LittleEndian.Uint64(b)
	m.Arg = 0
	m.DataCRC, m.HaveCRC = c.rcrc.page(c.rnum - c.rleft)
	if n == 0 {
		m.Data = nil
	} else {
		end := recordHeaderSize + n
		m.Data = b[recordHeaderSize:end:end]
	}
	c.rpos += recordHeaderSize + n
	c.rleft--
}

// recvFrame reads frames until it has a message for m.
func (c *conn) recvFrame(ctx context.Context, m *Msg) error {
	c.state = c.state[:0]
	c.inState = false
	for {
		h, err := c.readFrame(ctx)
		if err != nil {
			return err
		}
		cl := h.kind.Class()
		if cl == ClassHeartbeat {
			continue // it kept the link alive; nothing for the caller
		}
		p := c.rbuf[frameHeaderSize : frameHeaderSize+h.length]
		if c.inState && h.kind != c.stateKind {
			return corruptf(c.foff, fmt.Sprintf("%v frame inside a %v blob begun at offset %d", h.kind, c.stateKind, c.stateOff))
		}
		if cl == ClassRecords {
			off, what, outOfRange := checkBatch(p, h.count, c.pageSize, c.pageCount)
			if what != "" {
				if outOfRange {
					return corruptf(c.foff+frameHeaderSize+int64(off), what, livemig.ErrPageRange)
				}
				return corruptf(c.foff+frameHeaderSize+int64(off), what)
			}
			c.rpos, c.rleft, c.rnum, c.rkind = frameHeaderSize, h.count, h.count, h.kind
			c.nextRecord(m)
			return nil
		}
		page := binary.LittleEndian.Uint64(p)
		arg := binary.LittleEndian.Uint64(p[8:])
		data := p[controlHeaderSize:]
		if cl == ClassBlob && (c.inState || h.flags&frameFlagMore != 0) {
			if !c.inState {
				c.stateOff, c.stateKind = c.foff, h.kind
			}
			if len(c.state)+len(data) > c.maxState {
				return corruptf(c.stateOff, fmt.Sprintf("%v blob over the limit %d", h.kind, c.maxState))
			}
			if need := len(c.state) + len(data); need > cap(c.state) {
				// Grow by doubling, never past maxState.
				ns := make([]byte, len(c.state), min(max(2*cap(c.state), need), c.maxState))
				copy(ns, c.state)
				c.state = ns
			}
			c.state = append(c.state, data...)
			c.inState = h.flags&frameFlagMore != 0
			if c.inState {
				continue
			}
			data = c.state
		}
		m.Kind, m.Enc, m.Page, m.Arg, m.DataCRC, m.HaveCRC = h.kind, 0, page, arg, 0, false
		if len(data) == 0 {
			m.Data = nil
		} else {
			m.Data = data[:len(data):len(data)]
		}
		return nil
	}
}

// readFrame reads one whole frame into rbuf and checks its header and CRC.
func (c *conn) readFrame(ctx context.Context) (frameHeader, error) {
	if c.rtaken != nil {
		// The previous frame's data is no longer borrowed: its buffer goes
		// back to the link, for the peer's next frames.
		c.fl.release(c.rtaken)
		c.rtaken, c.rbuf, c.rown = nil, c.rown[:0], nil
	}
	if c.rbuf == nil {
		c.rbuf = make([]byte, 0, c.rbufSize(DefaultBatchBytes+recordHeaderSize+c.pageSize))
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, c.abortFn)
	}
	if c.stop != nil {
		c.reading.Store(true)
	}
	h, err := c.readFrameBody()
	if c.stop != nil {
		c.reading.Store(false)
	}
	if stop != nil && !stop() {
		return h, fmt.Errorf("transport: recv: %w", ctx.Err())
	}
	if err != nil && !errors.Is(err, livemig.ErrCorrupt) {
		if serr := c.stalled(); serr != nil {
			return h, &livemig.StreamError{Offset: c.foff, What: "recv", Err: serr}
		}
		if c.closed.Load() {
			return h, errConnRecvClosed
		}
	}
	return h, err
}

// rbufSize is the receive buffer's size for a payload of n bytes: the frame,
// and room to read ahead the next frame's header.
func (c *conn) rbufSize(n int) int {
	return frameHeaderSize + min(n, c.maxFrame) + frameTrailerSize + frameHeaderSize
}

// readFrameBody reads a frame into rbuf[:need]. Reads ask for up to the next
// frame's header too (a Read returns what is there, so this never waits for
// it); the bytes of it that came are kept at rbuf[need:need+ahead] for the
// next frame. The CRC is computed as the bytes arrive, while the sender is
// still sending the rest.
func (c *conn) readFrameBody() (frameHeader, error) {
	c.foff = c.roff
	// The previous frame's data is no longer borrowed: move the bytes read
	// ahead to the front.
	have := copy(c.rbuf[:cap(c.rbuf)], c.rbuf[len(c.rbuf):len(c.rbuf)+c.ahead])
	c.ahead = 0
	if have == 0 && c.aheadErr == nil && c.fl != nil {
		if b := c.fl.nextFrame(); b != nil {
			return c.takeFrame(b)
		}
		// Bytes written with Write come first, or the link has ended:
		// Read returns them, or its error.
	}
	hb := c.rbuf[:frameHeaderSize]
	if have < frameHeaderSize {
		if c.aheadErr != nil {
			err := c.aheadErr
			c.aheadErr = nil
			if err == io.EOF && have == 0 && !c.inState {
				return frameHeader{}, io.EOF
			}
			return frameHeader{}, c.readErr(err, have > 0, "frame header")
		}
		n, err := io.ReadFull(c.reader(), hb[have:])
		if err != nil {
			if err == io.EOF && have == 0 && !c.inState {
				return frameHeader{}, io.EOF
			}
			return frameHeader{}, c.readErr(err, have+n > 0, "frame header")
		}
		have = frameHeaderSize
	}
	h, ok := parseFrameHeader(hb)
	if !ok {
		return h, corruptf(c.foff, fmt.Sprintf("frame header %x: header CRC mismatch", hb))
	}
	if bad := checkHeader(h, c.maxFrame); bad != "" {
		return h, corruptf(c.foff, bad)
	}
	need := frameHeaderSize + h.length + frameTrailerSize
	if size := c.rbufSize(h.length); size > cap(c.rbuf) {
		nb := make([]byte, 0, max(size, min(2*cap(c.rbuf), c.rbufSize(c.maxFrame))))
		c.rbuf = append(nb, c.rbuf[:have]...)
	}
	c.rbuf = c.rbuf[:need]
	buf := c.rbuf[:need+frameHeaderSize]
	end := need - frameTrailerSize // CRC'd bytes: header and payload
	w := &c.rcrc
	w.start(h, c.shift, end)
	w.feed(buf, 0, min(have, end))
	done := min(have, end)
	for have < need {
		n, err := c.reader().Read(buf[have:])
		have += n
		if to := min(have, end); to > done {
			w.feed(buf, done, to)
			done = to
		}
		if err != nil {
			if have >= need {
				c.aheadErr = err // the frame is whole: report it at the next frame
				break
			}
			return h, c.readErr(err, true, fmt.Sprintf("%v frame of %d bytes", h.kind, h.length))
		}
	}
	c.ahead = have - need
	c.roff += int64(need)
	if crc, want := w.acc, binary.LittleEndian.Uint32(buf[end:]); crc != want {
		return h, corruptf(c.foff, fmt.Sprintf("%v frame of %d bytes: CRC %#08x, want %#08x", h.kind, h.length, crc, want))
	}
	return h, nil
}

// takeFrame checks the frame b, handed over whole by the peer's Conn
// through fl, and makes it the current frame: its records are returned from
// b itself, which readFrame gives back to fl at the next frame. b is checked
// as a frame read byte by byte is: header CRC, header, length, frame CRC.
func (c *conn) takeFrame(b []byte) (frameHeader, error) {
	c.rprog.Add(1) // bytes came (the liveness watcher's count)
	c.rown, c.rbuf, c.rtaken = c.rbuf, b[:len(b):len(b)], b
	if len(b) < frameHeaderSize {
		return frameHeader{}, corruptf(c.foff, fmt.Sprintf("frame of %d bytes, shorter than a header", len(b)))
	}
	h, ok := parseFrameHeader(b)
	if !ok {
		return h, corruptf(c.foff, fmt.Sprintf("frame header %x: header CRC mismatch", b[:frameHeaderSize]))
	}
	if bad := checkHeader(h, c.maxFrame); bad != "" {
		return h, corruptf(c.foff, bad)
	}
	need := frameHeaderSize + h.length + frameTrailerSize
	if len(b) != need {
		return h, corruptf(c.foff, fmt.Sprintf("%v frame of %d bytes handed over in %d bytes", h.kind, h.length, len(b)))
	}
	end := need - frameTrailerSize
	w := &c.rcrc
	w.start(h, c.shift, end)
	w.feed(b, 0, end)
	c.roff += int64(need)
	if crc, want := w.acc, binary.LittleEndian.Uint32(b[end:]); crc != want {
		return h, corruptf(c.foff, fmt.Sprintf("%v frame of %d bytes: CRC %#08x, want %#08x", h.kind, h.length, crc, want))
	}
	return h, nil
}

// readErr wraps an error from the link; an EOF inside a frame (partial) is
// io.ErrUnexpectedEOF.
func (c *conn) readErr(err error, partial bool, what string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		if partial || c.inState {
			return &livemig.StreamError{Offset: c.foff, What: what, Err: io.ErrUnexpectedEOF}
		}
		return io.EOF
	}
	return fmt.Errorf("transport: recv: %w", err)
}

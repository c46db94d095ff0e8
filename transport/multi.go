package transport

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
)

// MaxStreams is the most connections a multi-stream session may have.
const MaxStreams = 256

// StreamRun is how many consecutive pages take the same stream of a
// multi-stream Conn: page p's records go on stream (p / StreamRun) % N.
const StreamRun = 64

// DefaultStreamWait is ListenConfig.StreamWait's default.
const DefaultStreamWait = 30 * time.Second

// multiSlots is how many received messages each stream's reader may hold
// ahead of Recv: its read-ahead, and the bound on its memory.
const multiSlots = 128

// multiBigBuf is the buffer size above which a slot drops its buffer after
// use instead of keeping it (a state blob is received once).
const multiBigBuf = 1 << 20

var errMultiClosed = fmt.Errorf("transport: multi-stream: %w", livemig.ErrClosed)

// zeroWord is the bitmap a ClassBitmap barrier carries on the streams other
// than 0.
var zeroWord [8]byte

// NewMulti returns a Conn that stripes messages over conns, a multi-stream
// session like QEMU's multifd. It owns conns from now on (Close closes them).
// Both peers must build it over the same streams in the same order.
//
// Which streams a message takes depends on its kind's Class. Sending: a
// page record (ClassRecords) for page p goes on conns[(p / StreamRun) % N],
// so that each page always takes the same stream and the stream's order
// keeps the newest copy of a page behind the older ones (newest wins); runs
// of consecutive pages share a stream, so that the goroutines applying
// them at the destination (ParallelReceiver) touch memory far apart. A
// ClassPriority message goes on stream 0 only: not a barrier. Every other
// message (ClassControl, ClassBlob, ClassBitmap) is a barrier: it is
// written on every stream, after that stream's pending page records, with
// its Data on stream 0 only (the other streams' copies of a ClassBitmap
// message carry one zero word, since a bitmap is not valid without words).
// A barrier that names pages (say, pages to forget) is thus received only
// after every older copy of them. A message Send refuses (ErrInvalid)
// leaves the Conn usable, as a single Conn does.
//
// Receiving: one goroutine per stream reads ahead (up to a bounded number of
// messages, whose buffers are recycled: receiving a page allocates nothing),
// so a peer blocked sending on one full stream cannot deadlock with a Recv
// waiting on another. The readers start at the first Recv. With
// HandlePages (the Conn is a ParallelReceiver) they apply the page records
// themselves, each on its stream's goroutine, and Recv returns the rest.
// Recv returns page records as they come, in order for each page; it
// returns a barrier only once every stream has delivered its copy, hence
// after every page record sent before it, and holds back what the streams
// deliver after their copy until then. ClassPriority messages from stream
// 0 come in stream 0's order, possibly before page records that other
// streams still hold: a peer that relies on their order does not also
// send pages.
//
// Errors: an error on any stream fails the whole Conn and closes every
// stream. A stream the peer closed cleanly (io.EOF) just ends; Recv returns
// io.EOF once every stream has ended, and io.ErrUnexpectedEOF if a barrier
// can no longer complete. One goroutine may Send and Flush while another
// Recvs; Close may be called from any goroutine.
//
// With one Conn, NewMulti returns it unchanged. With none, every call fails
// with an error wrapping ErrInvalid.
func NewMulti(conns []Conn) Conn {
	if len(conns) == 1 {
		return conns[0]
	}
	c := &multiConn{
		conns: append([]Conn(nil), conns...),
		done:  make(chan struct{}),
	}
	n := len(conns)
	if n == 0 {
		c.failErr = fmt.Errorf("transport: multi-stream: no connections: %w", ErrInvalid)
		close(c.done)
		return c
	}
	c.items = make(chan multiItem, n*(multiSlots+1))
	c.streams = make([]multiStream, n)
	for i := range c.streams {
		s := &c.streams[i]
		s.free = make(chan int32, multiSlots)
		s.resume = make(chan struct{}, 1)
		for k := range multiSlots {
			s.free <- int32(k)
		}
	}
	return c
}

// start starts the readers, once, unless the Conn is shutting down. Recv
// calls it every time: after the first, it is one atomic load.
func (c *multiConn) start() {
	if c.running.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started || c.stopping {
		return
	}
	c.started = true
	c.running.Store(true)
	c.wg.Add(len(c.conns))
	for i := range c.conns {
		go c.reader(i)
	}
}

// Streams returns how many streams the Conn has: how many goroutines may
// call a PageHandler at once.
func (c *multiConn) Streams() int { return len(c.conns) }

// HandlePages implements ParallelReceiver.
func (c *multiConn) HandlePages(h PageHandler) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h == nil || c.started || c.handler != nil {
		return fmt.Errorf("transport: multi-stream: HandlePages with a nil handler, after Recv or twice: %w", ErrInvalid)
	}
	c.handler = h
	return nil
}

// multiItem is what a stream's reader hands to Recv: a filled slot, or the
// error that ended the stream (slot -1).
type multiItem struct {
	stream  int32
	slot    int32
	err     error
	handler bool // err is the PageHandler's: the Conn fails with it as it is
}

// multiSlot holds one received message; buf owns its Data.
type multiSlot struct {
	m   Msg
	buf []byte
}

// multiStream is the state of one stream. slots and free are shared between
// its reader and Recv, under the channel handoffs; the rest belongs to Recv.
type multiStream struct {
	slots  [multiSlots]multiSlot
	free   chan int32    // slots the reader may fill
	resume chan struct{} // with a PageHandler: the barrier was taken

	pend     [multiSlots + 1]multiItem // items held back behind a barrier
	pendHead int
	pendN    int
	parked   bool      // delivered its copy of the barrier being gathered
	barrier  multiItem // that copy
	ended    bool      // the peer closed it cleanly
}

func (s *multiStream) push(it multiItem) {
	s.pend[(s.pendHead+s.pendN)%len(s.pend)] = it
	s.pendN++
}

func (s *multiStream) pop() multiItem {
	it := s.pend[s.pendHead]
	s.pendHead = (s.pendHead + 1) % len(s.pend)
	s.pendN--
	return it
}

type multiConn struct {
	conns []Conn
	items chan multiItem
	done  chan struct{} // closed when the Conn is closed or failed
	wg    sync.WaitGroup

	mu       sync.Mutex // guards failErr, the readers' start and the shutdown
	failErr  error
	shutOnce sync.Once
	closed   atomic.Bool
	started  bool        // the readers run (Recv was called)
	running  atomic.Bool // started, for Recv without the lock
	stopping bool        // shutdown began: no reader may start
	handler  PageHandler // set before the readers start, then read-only

	// receiver's state
	streams []multiStream
	held    multiItem // slot lent to the caller of Recv until the next
	holding bool
	// heldBarrier: the held item is a barrier; with a PageHandler the
	// readers wait for the next Recv to go on.
	heldBarrier bool
	pending     int // items held back, all streams
	parkedN     int
	endedN      int
	rerr        error // sticky receive error (io.EOF once every stream ended)
}

func (c *multiConn) reader(i int) {
	defer c.wg.Done()
	s := &c.streams[i]
	conn := c.conns[i]
	h := c.handler // set before start, under mu
	for {
		var k int32
		select {
		case k = <-s.free:
		case <-c.done:
			return
		}
		sl := &s.slots[k]
		for {
			if err := conn.Recv(context.Background(), &sl.m); err != nil {
				select {
				case c.items <- multiItem{stream: int32(i), slot: -1, err: err}:
				case <-c.done:
				}
				return
			}
			if h == nil || sl.m.Kind.Class() != ClassRecords {
				break
			}
			// Applied here, from the stream's own buffer: no copy, and
			// the slot is filled again.
			if err := h(i, &sl.m); err != nil {
				select {
				case c.items <- multiItem{stream: int32(i), slot: -1, err: err, handler: true}:
				case <-c.done:
				}
				return
			}
		}
		sl.buf = append(sl.buf[:0], sl.m.Data...)
		sl.m.Data = sl.buf
		barrier := sl.m.Kind.Class().barrier()
		select {
		case c.items <- multiItem{stream: int32(i), slot: k}:
		case <-c.done:
			return
		}
		if h != nil && barrier {
			// The records sent after a barrier wait until the caller
			// has had it from Recv and called Recv again: applied
			// before, they could change memory the caller is checking.
			select {
			case <-s.resume:
			case <-c.done:
				return
			}
		}
	}
}

// barrier reports whether a message of class cl is a barrier on a
// multi-stream Conn (ClassControl, ClassBlob, ClassBitmap: every class but
// records and priority messages that a Conn's Recv returns): sent on every
// stream, returned once all delivered it. Recv parks a stream on it, and
// with a PageHandler the stream's reader waits after it.
func (cl Class) barrier() bool {
	return cl != ClassRecords && cl != ClassPriority
}

// fail records err as the reason the Conn failed, unless it is already
// closed or failed, and shuts everything down. It returns the error callers
// should see.
func (c *multiConn) fail(err error) error {
	c.mu.Lock()
	if c.failErr == nil && !c.closed.Load() {
		c.failErr = err
	}
	c.mu.Unlock()
	c.shutdown()
	return c.state()
}

// state returns the error every call returns now: ErrClosed after Close,
// the failure, or nil.
func (c *multiConn) state() error {
	if c.closed.Load() {
		return errMultiClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failErr
}

func (c *multiConn) shutdown() {
	c.shutOnce.Do(func() {
		c.mu.Lock()
		c.stopping = true
		c.mu.Unlock()
		close(c.done)
		for _, cn := range c.conns {
			cn.Close()
		}
		c.wg.Wait()
	})
}

// Close closes every stream and stops the readers. It is idempotent.
func (c *multiConn) Close() error {
	c.closed.Store(true)
	c.shutdown()
	return nil
}

// Send implements Conn.Send; see NewMulti for which streams a message takes.
func (c *multiConn) Send(ctx context.Context, m Msg) error {
	if err := c.state(); err != nil {
		return err
	}
	n := uint64(len(c.conns))
	var err error
	switch cl := m.Kind.Class(); cl {
	case ClassRecords:
		err = c.conns[m.Page/StreamRun%n].Send(ctx, m)
	case ClassPriority, ClassNone, ClassHeartbeat:
		// Stream 0 alone; it refuses kinds it may not send.
		err = c.conns[0].Send(ctx, m)
	default:
		// Stream 0 first, with the data: if it refuses the message (an
		// error wrapping ErrInvalid) no stream has written anything. The
		// others carry only the marker; a bitmap is not valid without
		// words, so theirs is one zero word.
		err = c.conns[0].Send(ctx, m)
		for i := 1; i < len(c.conns) && err == nil; i++ {
			cp := m
			cp.Data = nil
			if cl == ClassBitmap {
				cp.Data = zeroWord[:]
			}
			err = c.conns[i].Send(ctx, cp)
		}
	}
	if err != nil {
		if errors.Is(err, ErrInvalid) && ctx.Err() == nil {
			return err // a refused message: nothing was sent, the Conn is fine
		}
		return c.fail(fmt.Errorf("transport: multi-stream: send: %w", err))
	}
	return nil
}

// Flush flushes every stream.
func (c *multiConn) Flush(ctx context.Context) error {
	if err := c.state(); err != nil {
		return err
	}
	for _, cn := range c.conns {
		if err := cn.Flush(ctx); err != nil {
			return c.fail(fmt.Errorf("transport: multi-stream: flush: %w", err))
		}
	}
	return nil
}

// release gives a slot back to its stream's reader.
func (c *multiConn) release(it multiItem) {
	s := &c.streams[it.stream]
	sl := &s.slots[it.slot]
	if cap(sl.buf) > multiBigBuf {
		sl.buf = nil
	}
	sl.m.Data = nil
	s.free <- it.slot
}

// Recv implements Conn.Recv; see NewMulti for the order it keeps.
func (c *multiConn) Recv(ctx context.Context, out *Msg) error {
	c.start()
	if c.holding {
		c.holding = false
		c.release(c.held)
	}
	if c.heldBarrier {
		c.heldBarrier = false
		for i := range c.streams {
			select {
			case c.streams[i].resume <- struct{}{}:
			default: // its reader has ended
			}
		}
	}
	if err := c.state(); err != nil {
		return err
	}
	if c.rerr != nil {
		return c.rerr
	}
	if err := ctx.Err(); err != nil {
		c.Close()
		return fmt.Errorf("transport: multi-stream: recv: %w", err)
	}
	for {
		if c.pending > 0 {
			for i := range c.streams {
				s := &c.streams[i]
				for !s.parked && s.pendN > 0 {
					c.pending--
					if ok, err := c.take(s.pop(), out); ok || err != nil {
						return err
					}
				}
			}
		}
		select {
		case it := <-c.items:
			s := &c.streams[it.stream]
			if s.parked || s.pendN > 0 {
				s.push(it)
				c.pending++
				continue
			}
			if ok, err := c.take(it, out); ok || err != nil {
				return err
			}
		case <-ctx.Done():
			c.Close()
			return fmt.Errorf("transport: multi-stream: recv: %w", ctx.Err())
		case <-c.done:
			return c.state()
		}
	}
}

// take handles the next item of a stream that is not parked: it fills out
// and returns true if Recv should return it, or returns an error.
func (c *multiConn) take(it multiItem, out *Msg) (bool, error) {
	s := &c.streams[it.stream]
	if it.err != nil {
		if it.handler {
			return false, c.fail(it.err)
		}
		if !errors.Is(it.err, io.EOF) {
			return false, c.fail(fmt.Errorf("transport: multi-stream: stream %d: %w", it.stream, it.err))
		}
		s.ended = true
		c.endedN++
		return false, c.checkEnded()
	}
	m := &s.slots[it.slot].m
	switch cl := m.Kind.Class(); {
	case cl == ClassPriority:
		if it.stream != 0 {
			c.release(it)
			return false, c.fail(fmt.Errorf("transport: multi-stream: %v on stream %d, not 0: %w", m.Kind, it.stream, livemig.ErrCorrupt))
		}
	case cl.barrier():
		s.parked = true
		s.barrier = it
		c.parkedN++
		if c.parkedN < len(c.streams) {
			return false, c.checkEnded()
		}
		return true, c.completeBarrier(out)
	}
	*out = *m
	c.held, c.holding = it, true
	return true, nil
}

// completeBarrier returns the barrier every stream has delivered.
func (c *multiConn) completeBarrier(out *Msg) error {
	first := c.streams[0].barrier
	m0 := &c.streams[0].slots[first.slot].m
	var bad error
	for i := range c.streams {
		s := &c.streams[i]
		s.parked = false
		if i == 0 {
			continue
		}
		m := &s.slots[s.barrier.slot].m
		if bad == nil && (m.Kind != m0.Kind || m.Arg != m0.Arg || m.Page != m0.Page) {
			bad = fmt.Errorf("transport: multi-stream: stream %d sent %v arg %d where stream 0 sent %v arg %d: %w",
				i, m.Kind, m.Arg, m0.Kind, m0.Arg, livemig.ErrCorrupt)
		}
		c.release(s.barrier)
	}
	c.parkedN = 0
	if bad != nil {
		c.release(first)
		return c.fail(bad)
	}
	*out = *m0
	c.held, c.holding = first, true
	c.heldBarrier = c.handler != nil
	return nil
}

// checkEnded fails Recv if ended streams leave a barrier unable to complete,
// and returns io.EOF once every stream has ended.
func (c *multiConn) checkEnded() error {
	if c.endedN == 0 {
		return nil
	}
	if c.parkedN > 0 && c.parkedN+c.endedN >= len(c.streams) {
		c.rerr = fmt.Errorf("transport: multi-stream: a stream ended inside a barrier: %w", io.ErrUnexpectedEOF)
		return c.rerr
	}
	if c.endedN == len(c.streams) {
		c.rerr = io.EOF
		return c.rerr
	}
	return nil
}

// DialMulti opens a multi-stream session of n connections to a Listener at
// addr: each is dialed with cfg and opened with Open, announcing
// Hello{Streams: n, Stream: i} and a random Session shared by all, in turn.
// It returns NewMulti over them and the peer's hello from stream 0. With
// n <= 1 it opens one connection and returns its Conn. n may not exceed
// MaxStreams. On error every connection opened is closed.
func DialMulti(ctx context.Context, addr string, n int, dc DialConfig, local Hello, cfg Config) (Conn, Hello, error) {
	if n > MaxStreams {
		return nil, Hello{}, fmt.Errorf("transport: dial: %d streams, at most %d: %w", n, MaxStreams, ErrInvalid)
	}
	n = max(n, 1)
	local.Streams = uint16(n)
	if _, err := rand.Read(local.Session[:]); err != nil {
		return nil, Hello{}, fmt.Errorf("transport: dial: session id: %w", err)
	}
	conns := make([]Conn, 0, n)
	var peer0 Hello
	for i := range n {
		link, err := Dial(ctx, addr, dc)
		if err == nil {
			h := local
			h.Stream = uint16(i)
			var c Conn
			var peer Hello
			c, peer, err = Open(ctx, link, h, cfg)
			if err == nil {
				conns = append(conns, c)
				if i == 0 {
					peer0 = peer
				}
				continue
			}
		}
		for _, c := range conns {
			c.Close()
		}
		return nil, Hello{}, fmt.Errorf("transport: dial stream %d of %d: %w", i, n, err)
	}
	return NewMulti(conns), peer0, nil
}

// AcceptConn returns the next migration connection: it takes a connection
// whose hello has arrived, runs Open on it with local and cfg, and, if the
// peer announced a multi-stream session (Streams > 1), gathers the session's
// other connections, opening each as it arrives, and returns NewMulti over
// them in stream order, with the peer's hello of stream 0.
//
// The listener sets up connections concurrently in the background (TLS
// handshake, key exchange, reading the hello: see Listener), so a silent or
// slow client does not delay the others, and several AcceptConn calls may
// run at once, each taking its own connection or session. Any call may
// take any source, so calls that run at once should pass the same page
// geometry in local (a source of another geometry fails Open on both sides
// with livemig.ErrVersion); cfg and the features may differ. Streams are
// matched to their session by its Session id, so sessions whose
// connections arrive interleaved all complete. A connection refused in its
// set-up (TLS, key, not a livemig hello), or that repeats a stream of a
// session being gathered, is closed and logged, and AcceptConn goes on
// waiting. A session whose first stream was taken waits at most
// ListenConfig.StreamWait for the others.
//
// Errors: a peer of another protocol version or page geometry (Open's
// error, wrapping livemig.ErrVersion), a session whose numbering is invalid
// (ErrVersion too), a session incomplete after StreamWait (wrapping
// context.DeadlineExceeded), ctx ending (wrapping ctx.Err()) and Close
// (livemig.ErrClosed). On error every connection AcceptConn took is
// closed. Once AcceptConn has been called, the listener's Accept returns an
// error wrapping ErrInvalid.
func (l *Listener) AcceptConn(ctx context.Context, local Hello, cfg Config) (Conn, Hello, error) {
	if err := l.check(ctx); err != nil {
		return nil, Hello{}, err
	}
	l.serve()
	var a *arrival
	select {
	case a = <-l.ready:
		<-l.slots
	case <-ctx.Done():
		return nil, Hello{}, fmt.Errorf("transport: accept: %w", ctx.Err())
	case <-l.closed:
		return nil, Hello{}, fmt.Errorf("transport: accept: %w", livemig.ErrClosed)
	}
	if a.sess != nil {
		defer l.endSession(a.sess)
	}
	first, peer, err := Open(ctx, a.link, local, cfg)
	if err != nil {
		return nil, peer, fmt.Errorf("transport: accept %s: %w", a.remote, err)
	}
	n := int(peer.Streams)
	if n <= 1 {
		return first, peer, nil
	}
	if a.sess == nil {
		first.Close()
		return nil, peer, fmt.Errorf("transport: accept %s: peer announced stream %d of %d (at most %d): %w",
			a.remote, peer.Stream, n, MaxStreams, livemig.ErrVersion)
	}
	conns := make([]Conn, n)
	conns[peer.Stream] = first
	hellos := make([]Hello, n)
	hellos[peer.Stream] = peer
	fail := func(err error) (Conn, Hello, error) {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		got := 0
		for _, c := range conns {
			if c != nil {
				got++
			}
		}
		return nil, peer, fmt.Errorf("transport: accept: session %x from %s: %d of %d streams: %w", peer.Session[:4], a.remote, got, n, err)
	}
	timer := time.NewTimer(l.cfg.StreamWait)
	defer timer.Stop()
	for got := 1; got < n; {
		var b *arrival
		select {
		case b = <-a.sess.inbox:
			<-l.slots
		case <-timer.C:
			return fail(fmt.Errorf("the others did not come within %v: %w", l.cfg.StreamWait, context.DeadlineExceeded))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-l.closed:
			return fail(livemig.ErrClosed)
		}
		if int(b.hello.Streams) != n || conns[b.hello.Stream] != nil {
			b.link.Close()
			l.log.Warn("transport: refused a connection: not a new stream of the session being gathered",
				"remote", b.remote, "stream", b.hello.Stream, "streams", b.hello.Streams, "session", fmt.Sprintf("%x", b.hello.Session))
			continue
		}
		c, p, err := Open(ctx, b.link, local, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return fail(err)
			}
			l.log.Warn("transport: refused a connection: handshake failed", "remote", b.remote, "err", err)
			continue
		}
		conns[p.Stream], hellos[p.Stream] = c, p
		got++
	}
	return NewMulti(conns), hellos[0], nil
}

// Written returns the bytes its streams have written; see Meter. A stream
// that is no Meter counts nothing.
func (c *multiConn) Written() uint64 {
	var n uint64
	for _, s := range c.conns {
		if w, ok := Written(s); ok {
			n += w
		}
	}
	return n
}

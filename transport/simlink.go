package transport

import (
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/livemig/livemig"
)

// DefaultSimBuffer is SimConfig.Buffer's default: the real memory one
// direction of a simulated link may hold.
const DefaultSimBuffer = 64 << 20

// simMaxChunks bounds the writes in flight in one direction, so that a
// stream of tiny writes cannot grow the chunk queue without bound.
const simMaxChunks = 1 << 16

// simMinRing is the initial ring size of one direction of a simulated link.
const simMinRing = 64 << 10

var (
	errSimClosed     = fmt.Errorf("transport: simulated link: %w", livemig.ErrClosed)
	errSimPeerClosed = fmt.Errorf("transport: simulated link: peer closed: %w", livemig.ErrClosed)
	errSimWriteShut  = fmt.Errorf("transport: simulated link: write side shut down: %w", livemig.ErrClosed)
)

// SimConfig describes a simulated link. Its zero value is a link with no
// transmission delay and no latency.
type SimConfig struct {
	// Bandwidth is the rate of each direction in bits per second; <= 0
	// means infinite (writes take no virtual time).
	Bandwidth float64
	// Latency is the one-way propagation delay; negative counts as 0.
	Latency time.Duration
	// Buffer bounds, in real memory, the bytes in flight in each direction
	// (written, not yet read): Write blocks in real time beyond it.
	// <= 0 means DefaultSimBuffer.
	Buffer int
}

// SimStats counts the bytes that went through one end of a simulated link.
type SimStats struct {
	Sent     int64 // bytes written at this end
	Received int64 // bytes read at this end
}

// SimLink returns the two ends of a simulated full-duplex link that runs in
// virtual time. End a reads and advances clockA, end b clockB; a nil clock is
// replaced by a new VirtualClock of the end's own.
//
// Timing: a Write of n bytes at the writer's virtual time t starts at
// s = max(t, the end of the previous transmission in that direction),
// finishes transmitting at f = s + 8n/Bandwidth, and the writer's clock
// moves to f (the sender is busy while it transmits). The bytes arrive at
// f + Latency: a Read that returns any of them moves the reader's clock to that
// arrival time (AdvanceTo: a reader already later stays where it is). Each end
// only moves its own clock, so the virtual times are the same whatever the
// goroutine scheduling.
//
// In real time, Read blocks until bytes are written or the link is closed, and
// Write blocks while the bytes in flight exceed cfg.Buffer. One goroutine may
// Read while another Writes; concurrent Writes at one end are serialized.
// Close semantics are those of Pipe (including CloseWrite).
func SimLink(cfg SimConfig, clockA, clockB *livemig.VirtualClock) (a, b *SimEnd) {
	if clockA == nil {
		clockA = livemig.NewVirtualClock()
	}
	if clockB == nil {
		clockB = livemig.NewVirtualClock()
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultSimBuffer
	}
	if cfg.Latency < 0 {
		cfg.Latency = 0
	}
	ab := newSimDir(cfg)
	ba := newSimDir(cfg)
	return &SimEnd{r: ba, w: ab, clock: clockA}, &SimEnd{r: ab, w: ba, clock: clockB}
}

// SimEnd is one end of a simulated link (see SimLink). It is a Link.
type SimEnd struct {
	r, w  *simDir
	clock *livemig.VirtualClock
}

// Clock returns the virtual clock this end advances.
func (e *SimEnd) Clock() *livemig.VirtualClock { return e.clock }

// Read implements io.Reader; see SimLink for its effect on the clock.
func (e *SimEnd) Read(p []byte) (int, error) { return e.r.read(p, e.clock) }

// Write implements io.Writer; see SimLink for its effect on the clock. It
// returns when all of p is in flight or the link is closed.
func (e *SimEnd) Write(p []byte) (int, error) { return e.w.write(p, e.clock) }

// CloseWrite shuts this end's write direction: the peer reads what is in
// flight, then io.EOF. This end may still Read.
func (e *SimEnd) CloseWrite() error {
	e.w.shutWrite()
	return nil
}

// Close closes both directions of this end. It is idempotent.
func (e *SimEnd) Close() error {
	e.w.shutWrite()
	e.r.closeRead()
	return nil
}

// Stats returns the bytes written and read at this end so far.
func (e *SimEnd) Stats() SimStats {
	e.w.mu.Lock()
	sent := e.w.sent
	e.w.mu.Unlock()
	e.r.mu.Lock()
	recvd := e.r.recvd
	e.r.mu.Unlock()
	return SimStats{Sent: sent, Received: recvd}
}

// simChunk is one Write in flight: how many of its bytes are still unread,
// and their virtual arrival time.
type simChunk struct {
	left   int
	arrive time.Time
}

// simDir is one direction of a simulated link: a ring of bytes (grown up to
// cfg.Buffer) and the queue of writes they belong to.
type simDir struct {
	cfg SimConfig
	wmu sync.Mutex // serializes writers, so a Write's bytes stay together

	mu       sync.Mutex
	canRead  sync.Cond
	canWrite sync.Cond
	ring
	chunks  []simChunk
	ch      int // head of chunks
	busy    time.Time
	wshut   bool
	rclosed bool
	rwait   int
	wwait   int
	sent    int64
	recvd   int64
}

func newSimDir(cfg SimConfig) *simDir {
	d := &simDir{cfg: cfg}
	d.canRead.L = &d.mu
	d.canWrite.L = &d.mu
	return d
}

// txTime is the virtual time n bytes take to transmit.
func (d *simDir) txTime(n int) time.Duration {
	if d.cfg.Bandwidth <= 0 {
		return 0
	}
	ns := math.Round(float64(n) * 8 * 1e9 / d.cfg.Bandwidth)
	if ns > math.MaxInt64/2 {
		ns = math.MaxInt64 / 2
	}
	return time.Duration(ns)
}

// grow makes room for at least need more bytes if the ring may still grow.
func (d *simDir) grow(need int) {
	size := len(d.buf)
	if size >= d.cfg.Buffer {
		return
	}
	want := d.n + need
	if size < simMinRing {
		size = simMinRing
	}
	for size < want {
		size *= 2
	}
	if size > d.cfg.Buffer {
		size = d.cfg.Buffer
	}
	nb := make([]byte, size)
	c := copy(nb, d.buf[d.r:min(len(d.buf), d.r+d.n)])
	copy(nb[c:], d.buf[:d.n-c])
	d.buf = nb
	d.r = 0
}

func (d *simDir) write(p []byte, clock *livemig.VirtualClock) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	d.mu.Lock()
	if err := d.writeErr(); err != nil {
		d.mu.Unlock()
		return 0, err
	}
	for len(d.chunks)-d.ch >= simMaxChunks {
		d.wwait++
		d.canWrite.Wait()
		d.wwait--
		if err := d.writeErr(); err != nil {
			d.mu.Unlock()
			return 0, err
		}
	}
	start := clock.Now()
	if d.busy.After(start) {
		start = d.busy
	}
	fin := start.Add(d.txTime(len(p)))
	d.busy = fin
	if d.ch > 0 && len(d.chunks) == cap(d.chunks) {
		k := copy(d.chunks, d.chunks[d.ch:])
		d.chunks = d.chunks[:k]
		d.ch = 0
	}
	d.chunks = append(d.chunks, simChunk{left: len(p), arrive: fin.Add(d.cfg.Latency)})
	total := 0
	for total < len(p) {
		if d.n == len(d.buf) {
			d.grow(len(p) - total)
		}
		for d.n == len(d.buf) {
			d.wwait++
			d.canWrite.Wait()
			d.wwait--
			if err := d.writeErr(); err != nil {
				d.sent += int64(total)
				d.mu.Unlock()
				clock.AdvanceTo(fin)
				return total, err
			}
		}
		total += d.put(p[total:])
		if d.rwait > 0 {
			d.canRead.Broadcast()
		}
	}
	d.sent += int64(total)
	d.mu.Unlock()
	clock.AdvanceTo(fin)
	return total, nil
}

// writeErr says why a write cannot proceed; d.mu is held.
func (d *simDir) writeErr() error {
	if d.wshut {
		return errSimWriteShut
	}
	if d.rclosed {
		return errSimPeerClosed
	}
	return nil
}

func (d *simDir) read(p []byte, clock *livemig.VirtualClock) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	d.mu.Lock()
	for {
		if d.rclosed {
			d.mu.Unlock()
			return 0, errSimClosed
		}
		if d.n > 0 {
			break
		}
		if d.wshut {
			d.mu.Unlock()
			return 0, io.EOF
		}
		d.rwait++
		d.canRead.Wait()
		d.rwait--
	}
	c := &d.chunks[d.ch]
	want := min(len(p), c.left, d.n)
	total := d.take(p[:want])
	arrive := c.arrive
	c.left -= total
	if c.left == 0 {
		d.ch++
		if d.ch == len(d.chunks) {
			d.chunks = d.chunks[:0]
			d.ch = 0
		}
	}
	d.recvd += int64(total)
	if d.wwait > 0 {
		d.canWrite.Broadcast()
	}
	d.mu.Unlock()
	clock.AdvanceTo(arrive)
	return total, nil
}

func (d *simDir) shutWrite() {
	d.mu.Lock()
	d.wshut = true
	d.canRead.Broadcast()
	d.canWrite.Broadcast()
	d.mu.Unlock()
}

func (d *simDir) closeRead() {
	d.mu.Lock()
	d.rclosed = true
	d.n = 0
	d.r = 0
	d.chunks = d.chunks[:0]
	d.ch = 0
	d.canRead.Broadcast()
	d.canWrite.Broadcast()
	d.mu.Unlock()
}

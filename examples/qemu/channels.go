package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"
)

// multifdMagic opens each multifd channel (QEMU's MultiFDInit_t).
const multifdMagic = 0x11223344

// classifyWait is how long the relay waits for an extra connection's first
// bytes to tell what it is: a multifd channel sends its magic at once, a
// post-copy preempt channel nothing until post-copy has begun.
const classifyWait = 500 * time.Millisecond

// firstWait bounds the wait for the first connection's first bytes: the
// main channel sends the stream's header at once.
const firstWait = 10 * time.Second

// errChannels is what the relay says of a migration that needs more than
// its one connection.
var errChannels = fmt.Errorf("the source QEMU opened a second migration channel, which the relay does not carry: %w", livemig.ErrNotSupported)

// channels accepts the source QEMU's connections on the relay's listener:
// the main channel (the stream, starting with QEVM), and any other, which
// only multifd (each channel opens with MultiFDInit_t's magic) or
// post-copy's preempt channel open. The relay carries the main channel
// only, so any other refuses the migration: refused then returns an error
// naming the capability and the main channel is closed, so that the source
// QEMU fails its migration (its guest runs on) and the relay stops before
// the destination has the stream's end.
type channels struct {
	ln       net.Listener
	main     chan net.Conn
	postcopy atomic.Bool // the stream carried POSTCOPY_ADVISE

	mu      sync.Mutex
	cond    *sync.Cond // on mu: pending went down
	cur     net.Conn   // the main channel, once accepted
	extra   []net.Conn
	closers []io.Closer // closed on a refusal: what the relay may block on
	pending int         // connections being classified
	err     error
	failed  chan struct{} // closed with err set
}

// acceptChannels starts accepting on ln. The caller ends it with close.
func acceptChannels(ln net.Listener) *channels {
	c := &channels{ln: ln, main: make(chan net.Conn, 1), failed: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.loop()
	return c
}

func (c *channels) loop() {
	first := true
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			c.mu.Lock()
			if c.cur == nil && c.pending == 0 {
				c.failLocked(fmt.Errorf("accepting the source QEMU: %w", err))
			}
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		c.pending++
		c.mu.Unlock()
		go c.classify(conn, first)
		first = false
	}
}

// classify reads a connection's first bytes: QEVM makes it the main channel
// (once), anything else refuses the migration.
func (c *channels) classify(conn net.Conn, first bool) {
	var head [4]byte
	wait := classifyWait
	if first {
		wait = firstWait
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	n, rerr := io.ReadFull(conn, head[:])
	_ = conn.SetReadDeadline(time.Time{})
	magic := binary.BigEndian.Uint32(head[:])
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending--
	c.cond.Broadcast()
	if c.err != nil {
		conn.Close()
		return
	}
	if n == 4 && magic == stream.Magic && c.cur == nil {
		c.cur = &peeked{Conn: conn, r: io.MultiReader(bytes.NewReader(head[:]), conn)}
		c.main <- c.cur
		return
	}
	var why error
	switch {
	case n == 4 && magic == multifdMagic:
		why = fmt.Errorf("%w: a multifd channel (capability multifd): turn multifd off at the source QEMU", errChannels)
	case n == 4 && magic == stream.Magic:
		why = fmt.Errorf("%w: a second main channel (a second migration to the relay's address)", errChannels)
	case c.postcopy.Load():
		why = fmt.Errorf("%w: post-copy's preempt channel (capability postcopy-preempt): turn postcopy-preempt off at the source QEMU", errChannels)
	default:
		why = fmt.Errorf("%w: a connection that sent % x (%v); a post-copy preempt channel (capability postcopy-preempt) or a multifd one (capability multifd)?", errChannels, head[:n], rerr)
	}
	c.extra = append(c.extra, conn)
	c.failLocked(why)
}

func (c *channels) failLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	close(c.failed)
	if c.cur != nil {
		c.cur.Close()
	}
	for _, x := range c.extra {
		x.Close()
	}
	for _, x := range c.closers {
		x.Close()
	}
}

// closeOnRefusal has a refusal close x too (at once if one came already):
// the connection to the destination, which the relay may be blocked
// writing to while its QEMU waits for the channels that will never come.
func (c *channels) closeOnRefusal(x io.Closer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		x.Close()
		return
	}
	c.closers = append(c.closers, x)
}

// accept returns the main channel, or the error that refused the migration
// before it came.
func (c *channels) accept() (net.Conn, error) {
	select {
	case conn := <-c.main:
		return conn, nil
	case <-c.failed:
		c.mu.Lock()
		defer c.mu.Unlock()
		return nil, c.err
	}
}

// note looks at a record of the main channel on its way: POSTCOPY_ADVISE
// says an extra channel would be post-copy's preempt channel; MULTIFD_FLUSH
// (QEMU 8.0+) says multifd is on. Before a record that commits the
// destination (EOF, which ends the device state, and the PACKAGED
// sub-stream that holds post-copy's POSTCOPY_RUN), it waits for the extra
// connections being classified and returns the refusal if there is one.
func (c *channels) note(rec *stream.Record) error {
	switch {
	case rec.Kind == stream.KindCommand && rec.Command == stream.CmdPostcopyAdvise:
		c.postcopy.Store(true)
	case rec.Kind == stream.KindMultifdFlush:
		c.mu.Lock()
		c.failLocked(fmt.Errorf("%w: a MULTIFD_FLUSH record at stream offset %d: the source QEMU uses multifd (capability multifd): turn multifd off at the source QEMU", errChannels, rec.Offset))
		c.mu.Unlock()
	case rec.Kind == stream.KindEOF && !rec.Packaged,
		rec.Kind == stream.KindCommand && (rec.Command == stream.CmdPackaged || rec.Command == stream.CmdPostcopyRun):
		return c.settle()
	}
	return c.refused()
}

// settle waits until every connection accepted so far is classified (at
// most classifyWait after its accept) and returns refused's result: a relay
// that failed for another reason (the destination QEMU hung up when it met
// a command only a capability it lacks explains) says why.
func (c *channels) settle() error {
	c.mu.Lock()
	for c.pending > 0 {
		c.cond.Wait()
	}
	c.mu.Unlock()
	return c.refused()
}

// refused returns the error that refused the migration, nil if none has.
func (c *channels) refused() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// close stops accepting (closing the listener) and closes the extra
// connections.
func (c *channels) close() {
	c.ln.Close()
	c.mu.Lock()
	for _, x := range c.extra {
		x.Close()
	}
	c.mu.Unlock()
}

// peeked is a connection whose first bytes were read to classify it.
type peeked struct {
	net.Conn
	r io.Reader
}

func (p *peeked) Read(b []byte) (int, error) { return p.r.Read(b) }

// CloseWrite shuts the write side of the underlying TCP connection.
func (p *peeked) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

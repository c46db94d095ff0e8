// Package faultproxy is a TCP proxy that injects faults into livemig
// connections at a chosen point of the protocol: close the connection, stall
// it, flip a bit of a frame, lose one direction, drop a frame — before or
// after the Nth frame of a kind, on one connection and one direction. The
// engines' fault-matrix tests put it between a source and a destination, and
// the command under cmd/faultproxy puts it between two real processes.
//
// The proxy reads livemig's wire format as package transport defines it: a
// hello of HelloSize bytes each way (magic "LVMG"), then frames of a
// HeaderSize-byte header (u32 payload length, u8 kind, u8 flags, u16 record
// count, u32 CRC32C of those 8 bytes), the payload, and a u32 CRC32C
// trailer. It checks no CRC: it forwards what it
// gets, only finding the frames' boundaries. A direction that does not start
// with the magic, or whose frame header is implausible (kind 0, a length over
// MaxFrame), is forwarded as plain bytes from there on, so the proxy also
// stands in front of any other byte stream (a TLS one, a QEMU one), where
// only AfterBytes triggers apply.
//
// # Usage
//
//	p, err := faultproxy.New(dst.Addr().String(), faultproxy.Rule{
//		Trigger: faultproxy.Trigger{Dir: faultproxy.SrcToDst, Kind: faultproxy.KindCommit},
//		Fault:   faultproxy.Stall,
//	})
//	...
//	defer p.Close()
//	// the source dials p.Addr() instead of the destination
//	select {
//	case <-p.Fired(): // the stall is in place
//	case <-time.After(10 * time.Second):
//		// never there: the migration did not reach a Commit, or the
//		// connection that took the rule died before its frame
//	}
//
// A test waits on Fired rather than sleeping, and reads Stats to check which
// phase the migration reached.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Trigger says where in which connection a rule fires: either at a frame
// (Kind, Arg, Nth, After, Since) or at a byte offset (AfterBytes).
type Trigger struct {
	// Conn is the connection watched, by the order the proxy accepted
	// them (one whose dial of the target failed is not counted): 0 is the
	// first. A post-copy migration opens
	// a second, urgent connection, and a reconnection after a fault comes
	// as a later one.
	// AnyConn (-1) watches every connection, and counts matching frames
	// across them all.
	Conn int
	// Dir is the direction whose frames or bytes are watched. Close and
	// Stall act on the whole connection whatever Dir is; the flips and Drop
	// on the matched frame, in Dir; HalfOpen stops Dir alone.
	Dir Dir
	// Kind is the frame kind matched; AnyKind (0) matches every frame (the
	// hello is not a frame).
	Kind Kind
	// Arg, if set, must hold for a matched frame's Arg: the u64 after the
	// u64 page at the start of a control frame's payload (a round number in
	// its low 32 bits for EndRound, an Ack code for Ack; see ArgIs). A Page
	// frame, or a frame shorter than 16 bytes of payload, never matches a
	// trigger with an Arg. It is called with the proxy's lock held.
	Arg func(arg uint64) bool
	// Nth picks the Nth matching frame, from 1; 0 means 1.
	Nth int
	// After fires once the matched frame has been forwarded whole, rather
	// than just before its first byte. It applies to Close, Stall and
	// HalfOpen only.
	After bool
	// Since, if not AnyKind, starts the count at a phase of the protocol:
	// frames are matched only after the first frame of kind Since in Dir
	// on a watched connection (that frame is not matched itself). With
	// Kind KindPage and Since KindCommit, Nth counts the pages pushed after
	// a hybrid migration's hand-over, not those of its pre-copy rounds.
	Since Kind

	// AfterBytes, if over 0, makes this a byte trigger instead: it fires
	// once AfterBytes bytes of Dir have been forwarded on the connection,
	// counted from its first byte (the hello included). Kind, Arg, Nth and
	// After must then be zero, and the fault cannot be FlipHeader or Drop.
	AfterBytes int64
}

// AnyConn is a Trigger.Conn that watches every connection.
const AnyConn = -1

// ArgIs returns a Trigger.Arg matching an Arg equal to v.
func ArgIs(v uint64) func(uint64) bool { return func(a uint64) bool { return a == v } }

// Rule is a trigger and the fault it injects. A rule fires once, on the
// first connection and frame it matches.
type Rule struct {
	Trigger
	Fault Fault
	// Bit is the bit FlipHeader and FlipPayload flip (see them); 0, the
	// lowest bit of the field's first byte, by default.
	Bit int
}

func (r Rule) check() error {
	bad := func(why string) error { return fmt.Errorf("faultproxy: rule %v: %s", r.Fault, why) }
	switch {
	case r.Fault < Close || r.Fault > Drop:
		return fmt.Errorf("faultproxy: unknown fault %d", r.Fault)
	case r.Conn < AnyConn:
		return bad(fmt.Sprintf("connection %d", r.Conn))
	case r.Dir != SrcToDst && r.Dir != DstToSrc:
		return bad(fmt.Sprintf("direction %d", r.Dir))
	case r.Nth < 0:
		return bad(fmt.Sprintf("Nth %d", r.Nth))
	case r.AfterBytes < 0:
		return bad(fmt.Sprintf("AfterBytes %d", r.AfterBytes))
	case r.Bit < 0, r.Fault == FlipHeader && r.Bit > 31:
		return bad(fmt.Sprintf("bit %d", r.Bit))
	case r.After && (r.Fault == FlipHeader || r.Fault == FlipPayload || r.Fault == Drop):
		return bad("After applies to close, stall and half-open only")
	case r.AfterBytes > 0 && (r.Kind != AnyKind || r.Arg != nil || r.Nth != 0 || r.After || r.Since != AnyKind):
		return bad("AfterBytes excludes Kind, Arg, Nth, After and Since")
	case r.AfterBytes > 0 && (r.Fault == FlipHeader || r.Fault == Drop):
		return bad("needs a frame, not AfterBytes")
	}
	return nil
}

// Event is a fault that fired.
type Event struct {
	Rule  int   // the rule's index in the rules given to New
	Fault Fault // what it did
	Conn  int   // the connection it did it to
	Dir   Dir   // the rule's direction
	Kind  Kind  // the matched frame's kind; AnyKind for a byte trigger
	Nth   int   // the matched frame's number among those matching
	After bool  // the fault came after the frame rather than before it
	// Offset is the stream offset in Dir where the frame starts (or ends,
	// with After), or the byte trigger's AfterBytes.
	Offset int64
}

// String describes e in one line: "stall on conn 0 s2d at Commit frame 1"
// or "close on conn 1 d2s after 4096 bytes".
func (e Event) String() string {
	if e.Kind == AnyKind && e.Nth == 0 {
		return fmt.Sprintf("%v on conn %d %v after %d bytes", e.Fault, e.Conn, e.Dir, e.Offset)
	}
	at := "at"
	if e.After {
		at = "after"
	}
	return fmt.Sprintf("%v on conn %d %v %s %v frame %d (offset %d)", e.Fault, e.Conn, e.Dir, at, e.Kind, e.Nth, e.Offset)
}

// Stats are the proxy's counts so far.
type Stats struct {
	// Conns has one entry per proxied connection, in the order accepted.
	Conns []ConnStats
}

// ConnStats are one connection's counts.
type ConnStats struct {
	// Bytes are the bytes forwarded, by Dir.
	Bytes [2]int64
	// Frames counts the frames seen by Dir and Kind, whether forwarded or
	// not (a frame the proxy stalled before counts: it reached the proxy).
	Frames [2][256]int64
	// Raw says, by Dir, that the direction is forwarded as plain bytes:
	// it was not livemig's format, or stopped looking like it.
	Raw [2]bool
}

// Frames sums the frames of kind k seen in direction d over all
// connections.
func (s Stats) Frames(d Dir, k Kind) int64 {
	var n int64
	for _, c := range s.Conns {
		n += c.Frames[d][k]
	}
	return n
}

// Bytes sums the bytes forwarded in direction d over all connections.
func (s Stats) Bytes(d Dir) int64 {
	var n int64
	for _, c := range s.Conns {
		n += c.Bytes[d]
	}
	return n
}

// Proxy forwards each connection it accepts to its target, injecting its
// rules' faults. Its methods may be called from any goroutine.
type Proxy struct {
	ln     net.Listener
	target string
	dial   dialFunc
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed by Close
	fired  chan struct{} // closed when every rule has fired
	wg     sync.WaitGroup

	mu      sync.Mutex
	rules   []*rule
	conns   []*conn
	events  []Event
	unfired int
	healed  bool
	closed  bool
}

type rule struct {
	Rule
	idx     int
	matched int  // frames matched so far
	since   bool // the first frame of kind Since has passed
	claimed bool // a connection has taken it: it fires there or nowhere
}

// New is Listen on 127.0.0.1, port chosen by the system.
func New(target string, rules ...Rule) (*Proxy, error) {
	return Listen("127.0.0.1:0", target, rules...)
}

// dialTimeout bounds the proxy's dial of the target for one accepted
// connection.
const dialTimeout = 10 * time.Second

// dialFunc dials the target; a test replaces net.Dialer's.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Listen starts a proxy listening on addr whose connections go to target,
// with rules injecting faults. Each accepted connection dials the target in
// its own goroutine, within 10 seconds, so that a target that does not
// answer does not stop the accepting; a connection whose dial fails is
// closed and is given no number. Connections are numbered in the order
// accepted: one whose dial is slow holds back the forwarding of those
// accepted after it until its dial ends.
func Listen(addr, target string, rules ...Rule) (*Proxy, error) {
	for _, r := range rules {
		if err := r.check(); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	var d net.Dialer
	return start(ln, target, d.DialContext, rules), nil
}

// start serves ln with checked rules.
func start(ln net.Listener, target string, dial dialFunc, rules []Rule) *Proxy {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln: ln, target: target, dial: dial, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), fired: make(chan struct{}),
		unfired: len(rules),
	}
	for i, r := range rules {
		p.rules = append(p.rules, &rule{Rule: r, idx: i})
	}
	if len(rules) == 0 {
		close(p.fired)
	}
	p.wg.Add(1)
	go p.serve()
	return p
}

// Addr is the address the proxy listens on, for the source to dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Fired is closed once every rule has fired (at once if there are none).
// Events says what fired. A rule may never fire: its frame never comes, the
// connection that took it ends before the fault is due, or Heal disarms it;
// wait on Fired with a timeout.
func (p *Proxy) Fired() <-chan struct{} { return p.fired }

// Events returns the faults fired so far, in order.
func (p *Proxy) Events() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events...)
}

// Heal disarms every rule that has not fired, including one a connection
// has taken but not yet applied (an After rule whose frame is under way, a
// flip not yet reached): from now on connections are forwarded untouched,
// new ones (a reconnection) as well as the open ones, and Fired is closed
// only if every rule had fired. A fault already in place stays (a frame
// being dropped is dropped whole): a stalled or half-open connection stays
// dead to both peers until Close, as a path
// that went dead would, so that the peers' liveness timeouts find it and
// their reconnection goes through.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.healed = true
	p.mu.Unlock()
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	s := Stats{Conns: make([]ConnStats, len(conns))}
	for i, c := range conns {
		cs := &s.Conns[i]
		for d := range 2 {
			cs.Bytes[d] = c.bytes[d].Load()
			cs.Raw[d] = c.raw[d].Load()
			for k := range cs.Frames[d] {
				cs.Frames[d][k] = c.frames[d][k].Load()
			}
		}
	}
	return s
}

// Close stops listening, closes every connection, stalled ones included,
// and returns once all of the proxy's goroutines have ended. It may be
// called more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	close(p.done)
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	for _, c := range conns {
		c.kill()
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	var backoff time.Duration
	// prev is closed once the connection accepted last is numbered or
	// has failed: connections are numbered in the order accepted.
	prev := make(chan struct{})
	close(prev)
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Another error, e.g. out of file descriptors: wait a little
			// and accept again, as net/http's Server does, until Close.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
				continue
			case <-p.done:
				t.Stop()
				return
			}
		}
		backoff = 0
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			return
		}
		p.wg.Add(1)
		p.mu.Unlock()
		numbered := make(chan struct{})
		go p.connect(client, prev, numbered)
		prev = numbered
	}
}

// connect dials the target for client, numbers the connection once those
// accepted before it are (prev closed), closes numbered, and forwards the
// connection until it ends.
func (p *Proxy) connect(client net.Conn, prev <-chan struct{}, numbered chan<- struct{}) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	server, err := p.dial(ctx, "tcp", p.target)
	cancel()
	var c *conn
	select {
	case <-prev:
		if err == nil {
			c = p.add(client, server)
		}
	case <-p.done:
	}
	close(numbered)
	if c == nil {
		client.Close()
		if err == nil {
			server.Close()
		}
		return
	}
	c.run()
}

// add numbers a new connection, unless the proxy is closed.
func (p *Proxy) add(client, server net.Conn) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	c := &conn{p: p, idx: len(p.conns), sock: [2]net.Conn{SrcToDst: client, DstToSrc: server}}
	p.conns = append(p.conns, c)
	return c
}

func (p *Proxy) fire(e Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, e)
	p.unfired--
	if p.unfired == 0 {
		close(p.fired)
	}
}

// errStop ends a pump whose connection a fault or Close took over.
var errStop = errors.New("faultproxy: stopped")

package faultproxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// conn is one proxied connection: sock[SrcToDst] is the client's socket,
// read by the SrcToDst pump; sock[DstToSrc] the target's.
type conn struct {
	p    *Proxy
	idx  int
	sock [2]net.Conn

	// Under p.mu:
	stalled bool // a Stall stopped it, until Close
	dead    bool // closed by a fault or by Close

	killOnce sync.Once
	bytes    [2]atomic.Int64
	frames   [2][256]atomic.Int64
	raw      [2]atomic.Bool
}

func (c *conn) run() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.pump(DstToSrc)
	}()
	c.pump(SrcToDst)
	wg.Wait()
	c.sock[0].Close()
	c.sock[1].Close()
}

// kill closes both sockets at once.
func (c *conn) kill() {
	c.p.mu.Lock()
	c.dead = true
	c.p.mu.Unlock()
	c.killOnce.Do(func() {
		c.sock[0].Close()
		c.sock[1].Close()
	})
}

// waitStall returns nil unless the connection is stalled; then it waits
// for Close and returns errStop.
func (c *conn) waitStall() error {
	c.p.mu.Lock()
	stalled := c.stalled
	c.p.mu.Unlock()
	if !stalled {
		return nil
	}
	<-c.p.done
	return errStop
}

func (c *conn) pump(d Dir) {
	pm := &pump{c: c, dir: d, src: c.sock[d], dst: c.sock[1-d], buf: make([]byte, 32<<10)}
	pm.headWant = HeaderSize
	c.p.mu.Lock()
	for _, r := range c.p.rules {
		if r.AfterBytes > 0 && r.watches(c.idx, d) {
			pm.acts = append(pm.acts, action{at: r.AfterBytes, what: actFault, r: r,
				ev: Event{Rule: r.idx, Fault: r.Fault, Conn: c.idx, Dir: d, Offset: r.AfterBytes}})
			if r.Fault == FlipPayload {
				pm.acts[len(pm.acts)-1].what = actFlip
				pm.acts[len(pm.acts)-1].mask = 1 << (r.Bit % 8)
			}
		}
	}
	c.p.mu.Unlock()

	for {
		n, err := pm.src.Read(pm.buf)
		if n > 0 {
			if e := pm.feed(pm.buf[:n]); e != nil {
				if !errors.Is(e, errStop) {
					c.kill() // the other peer is gone
				}
				return
			}
		}
		if err == nil {
			continue
		}
		// A stalled path passes on no end either, nor a reset.
		if c.waitStall() != nil {
			return
		}
		if err == io.EOF {
			// An orderly end: pass on what was held back, then the FIN.
			if pm.st == stHead && pm.headN > 0 {
				if pm.emit(pm.head[:pm.headN]) != nil {
					c.kill()
					return
				}
			}
			if cw, ok := pm.dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
		}
		c.kill()
		return
	}
}

func (r *rule) watches(conn int, d Dir) bool {
	return (r.Conn == AnyConn || r.Conn == conn) && r.Dir == d
}

type state int

const (
	stHello state = iota // in the hello, checking its magic
	stHead               // holding a frame's head back until a decision
	stBody               // forwarding the rest of a frame
	stRaw                // not livemig's format: plain bytes
)

type actKind int

const (
	actFault actKind = iota // Close, Stall, HalfOpen at offset at
	actFlip                 // xor the byte at offset at with mask
	actDrop                 // leave out bytes [at, end)
)

// action is a fault due at a stream offset of a pump's direction.
type action struct {
	at, end int64
	what    actKind
	mask    byte
	r       *rule
	claimed bool // a frame rule is claimed when its frame is matched
	fired   bool // a Drop under way
	ev      Event
}

// pump forwards one direction, finding frames and applying actions.
type pump struct {
	c        *conn
	dir      Dir
	src, dst net.Conn
	buf      []byte

	off      int64 // stream bytes forwarded or dropped so far
	pos      int64 // stream bytes parsed so far (off plus the held head)
	st       state
	head     [HeaderSize + controlHead]byte
	headN    int   // bytes in head
	headWant int   // bytes head needs before a decision
	length   int64 // payload length of the current frame
	remain   int64 // bytes of the current frame left to forward after the head
	acts     []action
}

func (pm *pump) toRaw() {
	pm.st = stRaw
	pm.c.raw[pm.dir].Store(true)
}

// feed parses b, the next bytes read, and forwards them.
func (pm *pump) feed(b []byte) error {
	for len(b) > 0 {
		switch pm.st {
		case stRaw:
			pm.pos += int64(len(b))
			return pm.emit(b)
		case stHello:
			k := int(min(int64(len(b)), HelloSize-pm.pos))
			for i := 0; i < k && pm.pos+int64(i) < int64(len(helloMagic)); i++ {
				if b[i] != helloMagic[pm.pos+int64(i)] {
					pm.toRaw()
					break
				}
			}
			if pm.st == stRaw {
				continue
			}
			pm.pos += int64(k)
			if err := pm.emit(b[:k]); err != nil {
				return err
			}
			b = b[k:]
			if pm.pos == HelloSize {
				pm.st = stHead
			}
		case stHead:
			k := copy(pm.head[pm.headN:pm.headWant], b)
			pm.headN += k
			pm.pos += int64(k)
			b = b[k:]
			if pm.headN < pm.headWant {
				continue
			}
			if pm.headWant == HeaderSize {
				length := binary.LittleEndian.Uint32(pm.head[0:])
				if length > MaxFrame || pm.head[4] == 0 {
					pm.toRaw()
					if err := pm.emit(pm.head[:pm.headN]); err != nil {
						return err
					}
					continue
				}
				pm.length = int64(length)
				pm.headWant = HeaderSize + int(min(pm.length, controlHead))
				if pm.headN < pm.headWant {
					continue
				}
			}
			pm.decide()
			pm.remain = pm.length + TrailerSize - int64(pm.headN-HeaderSize)
			pm.st = stBody
			if err := pm.emit(pm.head[:pm.headN]); err != nil {
				return err
			}
			pm.headN, pm.headWant = 0, HeaderSize
		case stBody:
			k := int(min(int64(len(b)), pm.remain))
			pm.pos += int64(k)
			pm.remain -= int64(k)
			if err := pm.emit(b[:k]); err != nil {
				return err
			}
			b = b[k:]
			if pm.remain == 0 {
				pm.st = stHead
			}
		}
	}
	return nil
}

// decide counts the frame whose head is held and matches it against the
// rules, turning the faults it triggers into actions.
func (pm *pump) decide() {
	c, p := pm.c, pm.c.p
	kind := Kind(pm.head[4])
	start := pm.pos - int64(pm.headN)
	end := start + HeaderSize + pm.length + TrailerSize
	hasArg := kind != KindPage && pm.length >= controlHead
	arg := binary.LittleEndian.Uint64(pm.head[HeaderSize+8:])

	p.mu.Lock()
	defer p.mu.Unlock()
	// Counted under the lock: once Stats shows the frame, a Heal comes
	// after its rules were claimed.
	c.frames[pm.dir][kind].Add(1)
	for _, r := range p.rules {
		if r.claimed || p.healed || r.AfterBytes > 0 || !r.watches(c.idx, pm.dir) {
			continue
		}
		if r.Since != AnyKind && !r.since {
			r.since = kind == r.Since
			continue
		}
		if r.Kind != AnyKind && r.Kind != kind ||
			r.Arg != nil && (!hasArg || !r.Arg(arg)) {
			continue
		}
		r.matched++
		if r.matched < max(r.Nth, 1) {
			continue
		}
		r.claimed = true
		a := action{at: start, r: r, claimed: true,
			ev: Event{Rule: r.idx, Fault: r.Fault, Conn: c.idx, Dir: pm.dir, Kind: kind, Nth: r.matched, After: r.After, Offset: start}}
		switch r.Fault {
		case Close, Stall, HalfOpen:
			if r.After {
				a.at, a.ev.Offset = end, end
			}
		case FlipHeader:
			a.what, a.at, a.mask = actFlip, start+int64(r.Bit/8), 1<<(r.Bit%8)
		case FlipPayload:
			bit := int64(r.Bit) % (8 * TrailerSize)
			if pm.length > 0 {
				bit = int64(r.Bit) % (8 * pm.length)
			}
			a.what, a.at, a.mask = actFlip, start+HeaderSize+bit/8, 1<<(bit%8)
		case Drop:
			a.what, a.end = actDrop, end
		}
		pm.acts = append(pm.acts, a)
	}
}

// next returns the index of the action due first within the n bytes from
// pm.off, or -1. A fault is due at the end of them too; a flip or a drop
// needs its byte.
func (pm *pump) next(n int) int {
	best := -1
	for i, a := range pm.acts {
		if a.at > pm.off+int64(n) || a.at == pm.off+int64(n) && a.what != actFault {
			continue
		}
		if best < 0 || a.at < pm.acts[best].at {
			best = i
		}
	}
	return best
}

// emit forwards b, the stream bytes from pm.off, applying the actions due
// in them. It may change b.
func (pm *pump) emit(b []byte) error {
	for {
		i := pm.next(len(b))
		if i < 0 {
			return pm.write(b)
		}
		a := &pm.acts[i]
		k := max(a.at-pm.off, 0)
		if err := pm.write(b[:k]); err != nil {
			return err
		}
		b = b[k:]
		if !a.fired && !pm.arm(a) {
			pm.remove(i)
			continue
		}
		switch a.what {
		case actFlip:
			b[0] ^= a.mask
			ev := a.ev
			pm.remove(i)
			pm.c.p.fire(ev)
		case actDrop:
			if !a.fired {
				a.fired = true
				pm.c.p.fire(a.ev)
			}
			n := min(int64(len(b)), a.end-pm.off)
			pm.off += n
			b = b[n:]
			a.at = pm.off
			if pm.off == a.end {
				pm.remove(i)
			}
		case actFault:
			ev := a.ev
			pm.remove(i)
			if err := pm.fault(ev); err != nil {
				return err
			}
		}
	}
}

// arm says whether action a, due now, is to fire, and claims its rule if
// it is not yet claimed. It is not to fire once Heal was called, claimed or
// not (a frame rule is claimed when its frame's head is matched, before its
// fault is due), nor when another connection claimed its byte rule first.
func (pm *pump) arm(a *action) bool {
	p := pm.c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.healed {
		return false
	}
	if !a.claimed {
		if a.r.claimed {
			return false
		}
		a.r.claimed, a.claimed = true, true
	}
	return true
}

func (pm *pump) remove(i int) {
	pm.acts = append(pm.acts[:i], pm.acts[i+1:]...)
}

// fault applies a Close, Stall or HalfOpen.
func (pm *pump) fault(ev Event) error {
	c, p := pm.c, pm.c.p
	switch ev.Fault {
	case Close:
		c.kill()
		p.fire(ev)
		return errStop
	case Stall:
		p.mu.Lock()
		c.stalled = true
		p.mu.Unlock()
		p.fire(ev)
		return c.waitStall()
	default: // HalfOpen
		p.fire(ev)
		<-p.done
		return errStop
	}
}

// write forwards b, unless the connection is stalled: then it waits for
// Close.
func (pm *pump) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if err := pm.c.waitStall(); err != nil {
		return err
	}
	n, err := pm.dst.Write(b)
	pm.off += int64(len(b))
	pm.c.bytes[pm.dir].Add(int64(n))
	if err != nil {
		pm.c.p.mu.Lock()
		dead := pm.c.dead
		pm.c.p.mu.Unlock()
		if dead {
			return errStop
		}
	}
	return err
}

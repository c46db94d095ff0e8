package transport

import (
	"fmt"
	"time"
)

// Liveness: a Conn whose Config.Liveness is on runs two goroutines beside its
// caller's. The watcher wakes every eighth of the bound and checks two
// facts the I/O paths keep in atomics: whether a Recv waiting on the link has
// seen a byte arrive lately (rprog), and whether the write under way
// (writing) is the same one as long ago as the bound. Either past the bound
// is a stall: the watcher records it and closes the link, which unblocks the
// Read or Write; the I/O path then returns the recorded error. When the Conn
// has written no frame since the watcher's previous wake, the watcher asks
// the beater to write a heartbeat: a separate goroutine, so that a heartbeat
// blocked on a dead link never stops the watcher from noticing.

// heartbeatSize is a heartbeat frame's length on the wire.
const heartbeatSize = frameHeaderSize + controlHeaderSize + frameTrailerSize

// startLiveness starts the watcher and the beater when d > 0.
func (c *conn) startLiveness(d time.Duration) {
	if d <= 0 {
		return
	}
	c.stop = make(chan struct{})
	c.beat = make(chan struct{}, 1)
	c.watchers.Add(2)
	go c.watch(d)
	go c.beatLoop()
}

// write writes one whole frame, b (in wbuf), to the link, one writer at a
// time, and keeps the progress the watcher looks at (nothing more when
// liveness is off). It returns the buffer for the next frame: b, or, on a
// frameLink, which takes b, a spare buffer of at least wcap bytes.
func (c *conn) write(b []byte) ([]byte, error) {
	if c.stop == nil {
		return c.put(b)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbusy.Store(true)
	next, err := c.put(b)
	c.wbusy.Store(false)
	c.wdone.Add(1)
	return next, err
}

// put is write's I/O.
func (c *conn) put(b []byte) ([]byte, error) {
	if c.fl == nil {
		n, err := c.link.Write(b)
		c.written.Add(uint64(n))
		return b, err
	}
	next, err := c.fl.handOff(b) // b is the link's now, whatever err
	if err == nil {
		c.written.Add(uint64(len(b)))
	}
	if cap(next) < c.wcap {
		next = make([]byte, 0, c.wcap)
	}
	return next, err
}

// stalled returns the stall the watcher found, or nil.
func (c *conn) stalled() error {
	if p := c.stallErr.Load(); p != nil {
		return *p
	}
	return nil
}

// progressReader is the conn as an io.Reader of its link that counts the
// reads that return bytes, for the watcher.
type progressReader conn

func (r *progressReader) Read(p []byte) (int, error) {
	n, err := r.link.Read(p)
	if n > 0 {
		r.rprog.Add(1)
	}
	if err != nil {
		r.rend.Store(true)
	}
	return n, err
}

// reader returns the link as a progress-counting io.Reader (a pointer
// conversion: nothing is allocated per read).
func (c *conn) reader() *progressReader { return (*progressReader)(c) }

// watch is the watcher goroutine: every live/8 it reads the conn's
// progress counters and lets a stallCheck decide.
func (c *conn) watch(live time.Duration) {
	defer c.watchers.Done()
	t := time.NewTicker(live / watchTicks)
	defer t.Stop()
	l := newStallCheck(live, time.Now(), c.observe())
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			beat, err := l.tick(now, c.observe())
			if err != nil {
				c.stall(err)
				return
			}
			if beat {
				select {
				case c.beat <- struct{}{}:
				default:
				}
			}
		}
	}
}

// observe samples the conn's progress for the watcher.
func (c *conn) observe() progress {
	return progress{reads: c.rprog.Load(), reading: c.reading.Load(), ended: c.rend.Load(), writes: c.wdone.Load(), writing: c.wbusy.Load()}
}

// progress is what the watcher sees of a conn at one instant.
type progress struct {
	reads   uint64 // reads of the link that returned bytes, so far
	reading bool   // a Recv waits for bytes
	ended   bool   // a read of the link failed: the peer's end (EOF) or a broken link
	writes  uint64 // frame writes done, so far
	writing bool   // a frame write is under way
}

// watchTicks is how many times per liveness bound the watcher wakes: a
// stall is found at most an eighth of the bound late.
const watchTicks = 8

// stallCheck decides, from the progress sampled every live/8, whether a
// direction has stalled and when a heartbeat should go: the watcher's
// decisions, pure (fed the time and the samples), so that they are tested
// without a clock.
type stallCheck struct {
	live         time.Duration
	last         progress
	readSince    time.Time // the last time a waiting Recv saw progress
	lastProgress time.Time // the last time any byte came in, Recv waiting or not
	writeSince   time.Time // the last time no write was under way, or one ended
}

func newStallCheck(live time.Duration, now time.Time, p progress) *stallCheck {
	return &stallCheck{live: live, last: p, readSince: now, lastProgress: now, writeSince: now}
}

// tick takes the progress p at now. It returns an error wrapping ErrStalled
// when a waiting Recv has seen no byte for live, or a frame write has made
// no headway for live while no byte came in either (a write blocked while
// bytes still come in is a peer that does not read this direction now,
// not a dead link: its own Recv, if it waits, finds the stall). Once a
// read of the link has failed (the peer closed its end, or the link
// broke), bytes that came in before prove nothing: a write with no headway
// for live is a stall then, however recently they came. (A half-open link
// whose peer found the silence first and closed would otherwise hold this
// side's blocked write for up to a second bound.) beat says
// nothing was written since the last tick: a heartbeat keeps the direction
// alive, so on a quiet direction one goes out every other tick, at most
// a quarter of the bound apart.
func (l *stallCheck) tick(now time.Time, p progress) (beat bool, err error) {
	if p.reads != l.last.reads {
		l.lastProgress = now
	}
	if p.reads != l.last.reads || !p.reading {
		l.readSince = now
	} else if quiet := now.Sub(l.readSince); quiet >= l.live {
		return false, fmt.Errorf("no byte from the peer for %v (liveness %v): %w", quiet.Round(time.Millisecond), l.live, ErrStalled)
	}
	switch {
	case p.writes != l.last.writes || !p.writing:
		beat = p.writes == l.last.writes && !p.writing
		l.writeSince = now
	case now.Sub(l.writeSince) >= l.live && (p.ended || now.Sub(l.lastProgress) >= l.live):
		return false, fmt.Errorf("a frame write made no headway for %v (liveness %v): %w",
			now.Sub(l.writeSince).Round(time.Millisecond), l.live, ErrStalled)
	}
	l.last = p
	return beat, nil
}

// stall records err and closes the link.
func (c *conn) stall(err error) {
	c.stallErr.Store(&err)
	c.log.Debug("transport: link stalled", "err", err)
	_ = c.link.Close()
}

// beatLoop is the beater goroutine: it writes a heartbeat frame each time
// the watcher asks, unless a frame write is under way (which is as good).
func (c *conn) beatLoop() {
	defer c.watchers.Done()
	hb := make([]byte, frameHeaderSize, heartbeatSize)
	putFrameHeader(hb, controlHeaderSize, KindHeartbeat, 0, 0)
	hb = sealFrame(append(hb, make([]byte, controlHeaderSize)...))
	for {
		select {
		case <-c.stop:
			return
		case <-c.beat:
		}
		if !c.wmu.TryLock() {
			continue
		}
		c.wbusy.Store(true)
		n, _ := c.link.Write(hb) // a failure shows at the next Send or Recv
		c.written.Add(uint64(n))
		c.wbusy.Store(false)
		c.wdone.Add(1)
		c.wmu.Unlock()
	}
}

package transport

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
)

const testLive = 200 * time.Millisecond

// within fails t unless d is at least the liveness bound and at most a
// second past it.
func within(t *testing.T, what string, d time.Duration) {
	t.Helper()
	if d < testLive || d > testLive+time.Second {
		t.Errorf("%s after %v, want between %v and %v", what, d, testLive, testLive+time.Second)
	}
}

func TestLivenessSilentPeer(t *testing.T) {
	a, b := Pipe(0)
	defer a.Close() // a raw link that never writes: a silent peer
	c := NewConn(b, Config{Liveness: testLive})
	defer c.Close()
	start := time.Now()
	var m Msg
	err := c.Recv(context.Background(), &m)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Recv from a silent peer: %v, want ErrStalled", err)
	}
	within(t, "stall detected", time.Since(start))
	if err := c.Send(context.Background(), Msg{Kind: KindDone}); err == nil {
		t.Error("Send after a stall succeeded; the link should be closed")
	}
}

func TestLivenessStuckWrite(t *testing.T) {
	a, b := Pipe(4096)
	defer a.Close() // never reads: the write blocks once the pipe is full
	c := NewConn(b, Config{Liveness: testLive, PageSize: 4096})
	defer c.Close()
	start := time.Now()
	page := make([]byte, 4096)
	var err error
	for n := uint64(0); err == nil; n++ {
		err = c.Send(context.Background(), Msg{Kind: KindPage, Page: n % 16, Data: page})
		if err == nil && n%8 == 7 {
			err = c.Flush(context.Background())
		}
	}
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Send to a peer that never reads: %v, want ErrStalled", err)
	}
	within(t, "stuck write detected", time.Since(start))
}

// TestLivenessHeartbeats: two Conns that say nothing for several liveness
// bounds stay up, because each sends heartbeats, and Recv does not return
// them.
func TestLivenessHeartbeats(t *testing.T) {
	a, b := Pipe(0)
	ca := NewConn(a, Config{Liveness: testLive})
	cb := NewConn(b, Config{Liveness: testLive})
	errc := make(chan error, 2)
	for _, c := range []Conn{ca, cb} {
		go func() {
			var m Msg
			errc <- c.Recv(context.Background(), &m) // nothing comes but heartbeats
		}()
	}
	select {
	case err := <-errc:
		t.Errorf("a Recv on a quiet, healthy link ended with %v", err)
	case <-time.After(5 * testLive):
	}
	ca.Close()
	cb.Close()
	for range 2 {
		if err := <-errc; errors.Is(err, ErrStalled) {
			t.Errorf("Recv: %v, want no stall", err)
		}
	}
}

// TestLivenessAfterQuiet: a message sent after a long quiet spell arrives
// intact, heartbeats having gone before it.
func TestLivenessAfterQuiet(t *testing.T) {
	a, b := Pipe(0)
	ca := NewConn(a, Config{Liveness: testLive})
	cb := NewConn(b, Config{Liveness: testLive})
	defer ca.Close()
	defer cb.Close()
	got := make(chan Msg, 1)
	errc := make(chan error, 1)
	go func() {
		var m Msg
		err := cb.Recv(context.Background(), &m)
		errc <- err
		got <- m
	}()
	// Wait out several heartbeat periods before sending.
	<-time.After(3 * testLive)
	if err := ca.Send(context.Background(), Msg{Kind: KindEndRound, Arg: 7}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if m := <-got; m.Kind != KindEndRound || m.Arg != 7 {
		t.Errorf("got %v arg %d, want EndRound 7", m.Kind, m.Arg)
	}
}

func TestLivenessHandshake(t *testing.T) {
	a, b := Pipe(0)
	defer a.Close() // connects and says nothing
	start := time.Now()
	_, _, err := Open(context.Background(), b, Hello{PageCount: 10}, Config{Liveness: testLive})
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Open with a silent peer: %v, want ErrStalled", err)
	}
	within(t, "silent handshake refused", time.Since(start))
}

func TestLivenessOffOnSimLink(t *testing.T) {
	ca, cb := livemig.NewVirtualClock(), livemig.NewVirtualClock()
	a, b := SimLink(SimConfig{}, ca, cb)
	c := NewConn(RateLimit(a, RateConfig{BytesPerSec: 1e9}), Config{}).(*conn)
	defer c.Close()
	defer b.Close()
	if c.live != 0 || c.stop != nil {
		t.Errorf("liveness %v on a virtual-time link, want off", c.live)
	}
	if Send := (Msg{Kind: KindHeartbeat}); c.Send(context.Background(), Send) == nil {
		t.Error("Send accepted a heartbeat from the caller")
	}
}

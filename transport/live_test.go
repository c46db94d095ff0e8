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
	if err := c.Send(context.Background(), Msg{Kind: kindDone}); err == nil {
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
		err = c.Send(context.Background(), Msg{Kind: kindPage, Page: n % 16, Data: page})
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
	if err := ca.Send(context.Background(), Msg{Kind: kindEndRound, Arg: 7}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if m := <-got; m.Kind != kindEndRound || m.Arg != 7 {
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
	if c.stop != nil {
		t.Error("liveness on over a virtual-time link, want off")
	}
	if c.Send(context.Background(), Msg{Kind: KindHeartbeat}) == nil {
		t.Error("Send accepted a heartbeat from the caller")
	}
}

// A RateLink measured on a virtual clock over an in-memory pipe runs in
// virtual time too: no heartbeats, which would make its clock run.
func TestLivenessOffOnVirtualRate(t *testing.T) {
	a, b := Pipe(0)
	defer b.Close()
	c := NewConn(RateLimit(a, RateConfig{BytesPerSec: 1e6, Clock: livemig.NewVirtualClock()}), Config{}).(*conn)
	defer c.Close()
	if c.stop != nil {
		t.Error("liveness on over a RateLink in virtual time, want off")
	}
}

// The two sides agree on one bound in the handshake: the longer, or none
// if either has it off, so a side with a short bound does not cut a healthy
// peer that beats less often.
func TestLivenessAgreed(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b time.Duration
		want time.Duration // 0: off
	}{
		{"longer wins", testLive, 8 * testLive, 8 * testLive},
		{"one side off", testLive, -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			la, lb := Pipe(0)
			type res struct {
				c   Conn
				err error
			}
			ch := make(chan res, 1)
			go func() {
				c, _, err := Open(context.Background(), lb, Hello{PageCount: 10}, Config{Liveness: tc.b})
				ch <- res{c, err}
			}()
			ca, _, err := Open(context.Background(), la, Hello{PageCount: 10}, Config{Liveness: tc.a})
			if err != nil {
				t.Fatal(err)
			}
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer ca.Close()
			defer r.c.Close()
			// Both quiet for longer than the shorter bound: neither may
			// cut the other.
			errc := make(chan error, 2)
			for _, c := range []Conn{ca, r.c} {
				go func() {
					var m Msg
					errc <- c.Recv(context.Background(), &m)
				}()
			}
			select {
			case err := <-errc:
				t.Fatalf("a Recv on a healthy link ended with %v", err)
			case <-time.After(3 * testLive):
			}
			for _, c := range []Conn{ca, r.c} {
				if on := c.(*conn).stop != nil; on != (tc.want > 0) {
					t.Errorf("liveness on %v, want %v", on, tc.want > 0)
				}
			}
		})
	}
}

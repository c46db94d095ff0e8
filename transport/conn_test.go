package transport_test

import (
	"net"
	"testing"
	"time"

	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/transport/transporttest"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (a, b net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		a.Close()
		tb.Fatal(r.err)
	}
	return a, r.c
}

func TestLinkSuiteNetPipe(t *testing.T) {
	transporttest.RunLinkSuite(t, func(t *testing.T) (a, b transport.Link) {
		return net.Pipe()
	})
}

func TestLinkSuiteTCP(t *testing.T) {
	transporttest.RunLinkSuite(t, func(t *testing.T) (a, b transport.Link) {
		return tcpPair(t)
	})
}

func TestConnSuiteNetPipe(t *testing.T) {
	transporttest.RunConnSuite(t, func(t *testing.T) (a, b transport.Conn) {
		la, lb := net.Pipe()
		return transport.NewConn(la, transport.Config{}), transport.NewConn(lb, transport.Config{})
	})
}

func TestConnSuitePipe(t *testing.T) {
	for name, size := range map[string]int{"Default": 0, "Small": 5000} {
		t.Run(name, func(t *testing.T) {
			transporttest.RunConnSuite(t, func(t *testing.T) (a, b transport.Conn) {
				la, lb := transport.Pipe(size)
				return transport.NewConn(la, transport.Config{}), transport.NewConn(lb, transport.Config{})
			})
		})
	}
}

// LivenessOf says the bound a Conn watches its peer with, and nothing for a
// Conn without one.
func TestLivenessOf(t *testing.T) {
	a, b := transport.Pipe(1 << 16)
	on := transport.NewConn(a, transport.Config{Liveness: 3 * time.Second})
	off := transport.NewConn(b, transport.Config{Liveness: -1})
	defer on.Close()
	defer off.Close()
	if d, ok := transport.LivenessOf(on); !ok || d != 3*time.Second {
		t.Errorf("liveness on: %v %v", d, ok)
	}
	if _, ok := transport.LivenessOf(off); ok {
		t.Error("liveness off, yet a bound")
	}
	if _, ok := transport.LivenessOf(struct{ transport.Conn }{on}); ok {
		t.Error("a Conn of another kind has a bound")
	}
}

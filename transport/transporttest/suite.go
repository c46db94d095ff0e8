// Package transporttest is a conformance suite for transport links and
// connections: one body of tests that any Link or Conn implementation runs
// with one call.
//
// RunLinkSuite checks a Link through transport.NewConn and transport.Open:
// the handshake and its refusals, round trips of every message kind of the
// migration protocol (package wire; one of each transport.Class), a large
// batch, the return path, Close and context cancellation, a link cut mid-
// stream, corrupt frames and hostile lengths. RunConnSuite checks a Conn pair
// built some other way (a multi-stream Conn) with the subset that needs no
// access to the link.
//
// Every subtest checks with go.uber.org/goleak that it leaves no goroutine
// behind, so the suite must not run in parallel with other tests of the same
// binary. Randomness is seeded; no test sleeps to wait for something.
package transporttest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// PageSize is the page size the suite uses: Conns given to RunConnSuite must
// be built for it.
const PageSize = livemig.DefaultPageSize

// waitLimit bounds how long the suite waits for a goroutine's result before
// it fails the test instead of hanging.
const waitLimit = 60 * time.Second

// pair is a connected Conn pair for one subtest. reading, if not nil,
// receives a value when b's link is first read from, so a test knows that a
// Recv on b is blocked in the link.
type pair struct {
	a, b    transport.Conn
	reading <-chan struct{}
}

// RunLinkSuite runs the suite over Conns made by transport.NewConn (and
// transport.Open for the handshake tests) on links from newLinks. newLinks
// must return the two connected ends of a fresh link each time it is called;
// the suite closes them. The links must follow transport.Link's contract:
// one reader and one writer at once, Close unblocking both, and the peer's
// Read returning io.EOF (or an error wrapping livemig.ErrClosed) after the
// buffered bytes once one end is closed.
func RunLinkSuite(t *testing.T, newLinks func(t *testing.T) (a, b transport.Link)) {
	links := func(t *testing.T) (a, b transport.Link) {
		a, b = newLinks(t)
		t.Cleanup(func() {
			a.Close()
			b.Close()
		})
		return a, b
	}
	mk := func(t *testing.T) pair {
		la, lb := links(t)
		sig := &signalLink{Link: lb, reading: make(chan struct{}, 1)}
		p := pair{
			a:       transport.NewConn(la, transport.Config{}),
			b:       transport.NewConn(sig, transport.Config{}),
			reading: sig.reading,
		}
		t.Cleanup(func() {
			p.a.Close()
			p.b.Close()
		})
		return p
	}
	runConnTests(t, mk, true)
	runLinkTests(t, links)
}

// RunConnSuite runs the part of the suite that needs no access to the link
// over Conn pairs from newConns: round trips of every kind, a large batch,
// the return path, Close and context cancellation. newConns must return a
// fresh, connected pair (a is the source, b the destination) built for
// PageSize each time it is called; the suite closes them.
//
// The suite checks the ordering Conn promises: page records in order for
// each page, control messages in the order sent, and a control message only
// after every message sent before it. (A multi-stream Conn lets
// ClassPriority messages, such as Request, Ack and Error, overtake page
// records of other streams; the suite sends none of them after pages, so it
// does not check that case.)
func RunConnSuite(t *testing.T, newConns func(t *testing.T) (a, b transport.Conn)) {
	mk := func(t *testing.T) pair {
		a, b := newConns(t)
		t.Cleanup(func() {
			a.Close()
			b.Close()
		})
		return pair{a: a, b: b}
	}
	runConnTests(t, mk, false)
}

// run runs f as a subtest that must leave no goroutine behind.
func run(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		opt := goleak.IgnoreCurrent()
		// Registered first, so it runs after the cleanups that close the
		// links and Conns.
		t.Cleanup(func() { goleak.VerifyNone(t, opt) })
		f(t)
	})
}

// await returns the next value from ch, failing the test if none comes
// within waitLimit.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(waitLimit)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("transporttest: %s: nothing after %v", what, waitLimit)
		panic("unreachable")
	}
}

// goErr runs f in a goroutine and returns a channel for its error.
func goErr(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

var bg = context.Background()

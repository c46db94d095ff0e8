package transport_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/transport/transporttest"
	"github.com/livemig/livemig/wire"
)

// TestLinkSuite runs the conformance suite over every link, and over a
// 7-byte pipe and a simulated link with a 4 KiB buffer, where every write
// blocks.
func TestLinkSuite(t *testing.T) {
	for _, name := range []string{"Pipe", "PipeSmall", "SimLink", "RateLimitPipe", "TCP", "TLS", "PSK", "TLSPSK"} {
		t.Run(name, func(t *testing.T) {
			transporttest.RunLinkSuite(t, ltLinks()[name])
		})
	}
	t.Run("SimLinkDefault", func(t *testing.T) {
		transporttest.RunLinkSuite(t, func(t *testing.T) (transport.Link, transport.Link) {
			return transport.SimLink(transport.SimConfig{Bandwidth: 10e9, Latency: time.Millisecond}, nil, nil)
		})
	})
	t.Run("SimLinkTiny", func(t *testing.T) {
		transporttest.RunLinkSuite(t, func(t *testing.T) (transport.Link, transport.Link) {
			return transport.SimLink(transport.SimConfig{Bandwidth: 10e9, Buffer: 4096}, nil, nil)
		})
	})
}

// ltPipeMulti returns two multi-stream Conns over n pipes of size bytes,
// and the source's raw links.
func ltPipeMulti(n, size int) (a, b transport.Conn, raw []transport.Link) {
	as := make([]transport.Conn, n)
	bs := make([]transport.Conn, n)
	for i := range n {
		la, lb := transport.Pipe(size)
		raw = append(raw, la)
		as[i] = transport.NewConn(la, transport.Config{})
		bs[i] = transport.NewConn(lb, transport.Config{})
	}
	return transport.NewMulti(as), transport.NewMulti(bs), raw
}

// ltNetMulti opens a 4-stream session over loopback with DialMulti and
// AcceptConn.
func ltNetMulti(t testing.TB, lc transport.ListenConfig, dc transport.DialConfig) (a, b transport.Conn) {
	t.Helper()
	ln := ltListen(t, lc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	acc := acceptAsync(ctx, ln, hello, 1)
	a, _, err := transport.DialMulti(ctx, ln.Addr().String(), 4, dc, hello, transport.Config{})
	r := <-acc
	if err != nil || r.err != nil {
		t.Fatalf("DialMulti: %v; AcceptConn: %v", err, r.err)
	}
	if r.h.Streams != 4 || r.h.Stream != 0 {
		t.Fatalf("AcceptConn returned hello of stream %d of %d", r.h.Stream, r.h.Streams)
	}
	return a, r.c
}

func TestConnSuiteMulti(t *testing.T) {
	t.Run("Pipe4", func(t *testing.T) {
		transporttest.RunConnSuite(t, func(t *testing.T) (transport.Conn, transport.Conn) {
			a, b, _ := ltPipeMulti(4, 0)
			return a, b
		})
	})
	t.Run("Pipe3Small", func(t *testing.T) {
		transporttest.RunConnSuite(t, func(t *testing.T) (transport.Conn, transport.Conn) {
			a, b, _ := ltPipeMulti(3, 5000)
			return a, b
		})
	})
	t.Run("TCP4", func(t *testing.T) {
		transporttest.RunConnSuite(t, func(t *testing.T) (transport.Conn, transport.Conn) {
			return ltNetMulti(t, transport.ListenConfig{}, transport.DialConfig{})
		})
	})
	t.Run("TLS4", func(t *testing.T) {
		pki := ltNewPKI(t)
		transporttest.RunConnSuite(t, func(t *testing.T) (transport.Conn, transport.Conn) {
			return ltNetMulti(t, transport.ListenConfig{TLS: pki.serverTLS()}, transport.DialConfig{TLS: pki.clientTLS(pki.client)})
		})
	})
	t.Run("TLSPSK4", func(t *testing.T) {
		pki := ltNewPKI(t)
		transporttest.RunConnSuite(t, func(t *testing.T) (transport.Conn, transport.Conn) {
			return ltNetMulti(t, transport.ListenConfig{TLS: pki.serverTLS(), PSK: ltKey(1)},
				transport.DialConfig{TLS: pki.clientTLS(pki.client), PSK: ltKey(1)})
		})
	})
}

// ltNewestWins sends every page of a small guest in each of several rounds,
// in a seeded shuffled order, with an EndRound barrier after each round, and
// checks at the destination that each page's versions rise and that every
// page has its round's version when the round's EndRound arrives.
func ltNewestWins(t *testing.T, a, b transport.Conn) { ltNewestWinsBy(t, a, b, false) }

// ltNewestWinsBy is ltNewestWins; with handle, the pages are applied by a
// PageHandler on b's streams' goroutines (b must be a ParallelReceiver),
// and a round's EndRound must also come before any page of the next round
// is applied, and more than one stream must have applied pages.
func ltNewestWinsBy(t *testing.T, a, b transport.Conn, handle bool) {
	const pages, rounds = 300, 25
	ctx := context.Background()
	sent := make(chan error, 1)
	go func() {
		r := rand.New(rand.NewPCG(7, 7))
		order := make([]int, pages)
		for i := range order {
			order[i] = i
		}
		data := make([]byte, 1500)
		for round := 1; round <= rounds; round++ {
			r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			// Every page twice in a row, then a third of them once more:
			// the newer copy always last.
			for k, p := range append(order, order[:pages/3]...) {
				for c := range 2 {
					binary.LittleEndian.PutUint64(data, uint64(p))
					binary.LittleEndian.PutUint64(data[8:], uint64(round*4+k/pages*2+c))
					if err := a.Send(ctx, transport.Msg{Kind: wire.KindPage, Enc: transport.EncXBZRLE, Page: uint64(p), Data: data}); err != nil {
						sent <- err
						return
					}
				}
			}
			if err := a.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: uint64(round)}); err != nil {
				sent <- err
				return
			}
		}
		sent <- a.Send(ctx, transport.Msg{Kind: wire.KindDone})
	}()
	version := make([]uint64, pages)
	apply := func(m *transport.Msg) error {
		if p := binary.LittleEndian.Uint64(m.Data); p != m.Page {
			return fmt.Errorf("page %d carries data of page %d", m.Page, p)
		}
		v := binary.LittleEndian.Uint64(m.Data[8:])
		if v <= version[m.Page] {
			return fmt.Errorf("page %d: version %d landed after version %d", m.Page, v, version[m.Page])
		}
		version[m.Page] = v
		return nil
	}
	var streams atomic.Uint64 // a bit per stream that applied a page
	if handle {
		pr, ok := b.(transport.ParallelReceiver)
		if !ok {
			t.Fatalf("%T is not a ParallelReceiver", b)
		}
		if err := pr.HandlePages(func(stream int, m *transport.Msg) error {
			streams.Or(1 << stream)
			return apply(m)
		}); err != nil {
			t.Fatal(err)
		}
	}
	rounds0 := 0
	for {
		var m transport.Msg
		if err := b.Recv(ctx, &m); err != nil {
			t.Fatal(err)
		}
		switch m.Kind {
		case wire.KindPage:
			if handle {
				t.Fatalf("Recv returned page %d: the handler should have had it", m.Page)
			}
			if err := apply(&m); err != nil {
				t.Fatal(err)
			}
		case wire.KindEndRound:
			rounds0++
			if m.Arg != uint64(rounds0) {
				t.Fatalf("EndRound %d, want %d", m.Arg, rounds0)
			}
			for p, v := range version {
				if v/4 != m.Arg {
					t.Fatalf("EndRound %d returned while page %d is at version %d", m.Arg, p, v)
				}
			}
		case wire.KindDone:
			if rounds0 != rounds {
				t.Fatalf("Done after %d rounds", rounds0)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if handle && bits.OnesCount64(streams.Load()) < 2 {
				t.Fatalf("pages applied on streams %b: want several", streams.Load())
			}
			return
		default:
			t.Fatalf("unexpected %v", m.Kind)
		}
	}
}

func TestMultiNewestWins(t *testing.T) {
	t.Run("Pipe4", func(t *testing.T) {
		a, b, _ := ltPipeMulti(4, 0)
		defer a.Close()
		defer b.Close()
		ltNewestWins(t, a, b)
	})
	t.Run("Pipe5Tiny", func(t *testing.T) {
		a, b, _ := ltPipeMulti(5, 100)
		defer a.Close()
		defer b.Close()
		ltNewestWins(t, a, b)
	})
	t.Run("TCP4", func(t *testing.T) {
		a, b := ltNetMulti(t, transport.ListenConfig{}, transport.DialConfig{})
		defer a.Close()
		defer b.Close()
		ltNewestWins(t, a, b)
	})
}

// The streams' goroutines apply the pages (HandlePages), in parallel, and
// still the newest copy of each page wins and each barrier comes after the
// pages sent before it and before those sent after it.
func TestMultiHandlePages(t *testing.T) {
	t.Run("Pipe4", func(t *testing.T) {
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
		a, b, _ := ltPipeMulti(4, 0)
		defer a.Close()
		defer b.Close()
		ltNewestWinsBy(t, a, b, true)
	})
	t.Run("Pipe5Tiny", func(t *testing.T) {
		a, b, _ := ltPipeMulti(5, 100)
		defer a.Close()
		defer b.Close()
		ltNewestWinsBy(t, a, b, true)
	})
	t.Run("TCP3", func(t *testing.T) {
		a, b := ltNetMulti(t, transport.ListenConfig{}, transport.DialConfig{})
		defer a.Close()
		defer b.Close()
		ltNewestWinsBy(t, a, b, true)
	})
}

// A handler's error fails the Conn with that error; HandlePages after the
// first Recv, twice or with nil is refused.
func TestMultiHandlePagesErrors(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	a, b, _ := ltPipeMulti(3, 0)
	defer a.Close()
	defer b.Close()
	pr := b.(transport.ParallelReceiver)
	if n := pr.Streams(); n != 3 {
		t.Fatalf("Streams() = %d, want 3", n)
	}
	if err := pr.HandlePages(nil); !errors.Is(err, transport.ErrInvalid) {
		t.Fatalf("HandlePages(nil): %v, want ErrInvalid", err)
	}
	errBad := errors.New("page 200 is bad")
	if err := pr.HandlePages(func(_ int, m *transport.Msg) error {
		if m.Page == 200 {
			return errBad
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := pr.HandlePages(func(int, *transport.Msg) error { return nil }); !errors.Is(err, transport.ErrInvalid) {
		t.Fatalf("HandlePages twice: %v, want ErrInvalid", err)
	}
	go func() {
		for p := range 400 {
			if a.Send(ctx, transport.Msg{Kind: wire.KindPage, Enc: transport.EncZero, Page: uint64(p)}) != nil {
				return
			}
		}
		_ = a.Send(ctx, transport.Msg{Kind: wire.KindDone})
	}()
	var m transport.Msg
	err := b.Recv(ctx, &m)
	if !errors.Is(err, errBad) {
		t.Fatalf("Recv: %v (%v), want the handler's error", err, m.Kind)
	}
	if err := b.Recv(ctx, &m); !errors.Is(err, errBad) {
		t.Fatalf("Recv again: %v, want the handler's error", err)
	}

	c, d, _ := ltPipeMulti(2, 0)
	defer c.Close()
	defer d.Close()
	go func() { _ = c.Send(ctx, transport.Msg{Kind: wire.KindDone}) }()
	if err := d.Recv(ctx, &m); err != nil || m.Kind != wire.KindDone {
		t.Fatalf("Recv: %v %v", err, m.Kind)
	}
	if err := d.(transport.ParallelReceiver).HandlePages(func(int, *transport.Msg) error { return nil }); !errors.Is(err, transport.ErrInvalid) {
		t.Fatalf("HandlePages after Recv: %v, want ErrInvalid", err)
	}
}

func TestMultiStreamCorruptFailsConn(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b, raw := ltPipeMulti(4, 0)
	defer b.Close()
	defer a.Close()
	ctx := context.Background()
	for p := range 8 {
		if err := a.Send(ctx, transport.Msg{Kind: wire.KindPage, Enc: transport.EncZero, Page: uint64(p)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Garbage on stream 2, behind its two page records.
	if _, err := raw[2].Write(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 9 {
		var m transport.Msg
		if err = b.Recv(ctx, &m); err != nil {
			break
		}
	}
	if !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("Recv after garbage on one stream: %v, want ErrCorrupt", err)
	}
	var m transport.Msg
	if err2 := b.Recv(ctx, &m); !errors.Is(err2, livemig.ErrCorrupt) {
		t.Fatalf("Recv after the failure: %v, want the same error", err2)
	}
	// The failure closed every stream: the source's sends fail too.
	for p := range 1000 {
		if err = a.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: uint64(p)}); err != nil {
			break
		}
	}
	if err == nil {
		t.Fatal("the source kept sending to a failed destination")
	}
}

func TestMultiStreamEndsInsideBarrier(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b, raw := ltPipeMulti(3, 0)
	defer b.Close()
	defer a.Close()
	raw[1].Close() // stream 1 ends cleanly under the source
	ctx := context.Background()
	// The barrier reaches streams 0 and 2, not 1.
	_ = a.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: 1})
	var m transport.Msg
	if err := b.Recv(ctx, &m); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Recv of a barrier a stream cannot complete: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestMultiCleanEOF(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b, _ := ltPipeMulti(4, 0)
	defer b.Close()
	ctx := context.Background()
	for p := range 10 {
		if err := a.Send(ctx, transport.Msg{Kind: wire.KindPage, Enc: transport.EncZero, Page: uint64(p)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Send(ctx, transport.Msg{Kind: wire.KindError, Data: []byte("bye")}); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	a.Close()
	got := 0
	for {
		var m transport.Msg
		err := b.Recv(ctx, &m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		got++
	}
	if got != 11 {
		t.Fatalf("received %d messages before io.EOF, want 11", got)
	}
}

// ltOpenStream dials ln and opens stream of a 2-stream session whose id
// starts with session.
func ltOpenStream(ctx context.Context, ln *transport.Listener, stream uint16, session byte) (transport.Conn, error) {
	l, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{})
	if err != nil {
		return nil, err
	}
	h := transport.Hello{PageSize: transporttest.PageSize}
	h.Streams, h.Stream, h.Session[0] = 2, stream, session
	c, _, err := transport.Open(ctx, l, h, transport.Config{})
	return c, err
}

// A connection that repeats a stream of the session being gathered is
// refused; the session completes with the real one.
func TestAcceptConnRefusesRepeatedStream(t *testing.T) {
	ln := ltListen(t, transport.ListenConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	acc := acceptAsync(ctx, ln, hello, 1)
	// Stream 1 of session X arrives first, then an intruder claiming to be
	// stream 1 of X too, then the real stream 0.
	s1, err := ltOpenStream(ctx, ln, 1, 'X')
	if err != nil {
		t.Fatal(err)
	}
	if intruder, err := ltOpenStream(ctx, ln, 1, 'X'); err == nil {
		intruder.Close()
		t.Fatal("a repeated stream 1 was answered")
	}
	s0, err := ltOpenStream(ctx, ln, 0, 'X')
	if err != nil {
		t.Fatal(err)
	}
	r := <-acc
	if r.err != nil {
		t.Fatal(r.err)
	}
	a := transport.NewMulti([]transport.Conn{s0, s1})
	defer a.Close()
	defer r.c.Close()
	ltNewestWins(t, a, r.c)
}

// Two sessions whose streams arrive interleaved (X1, Y1, Y0, X0) both
// complete, each with its own streams, under two AcceptConn calls.
func TestAcceptConnInterleavedSessions(t *testing.T) {
	ln := ltListen(t, transport.ListenConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	acc := acceptAsync(ctx, ln, hello, 2)
	src := map[byte][]transport.Conn{'X': make([]transport.Conn, 2), 'Y': make([]transport.Conn, 2)}
	for _, s := range []struct {
		session byte
		stream  uint16
	}{{'X', 1}, {'Y', 1}, {'Y', 0}, {'X', 0}} {
		c, err := ltOpenStream(ctx, ln, s.stream, s.session)
		if err != nil {
			t.Fatalf("stream %d of session %c: %v", s.stream, s.session, err)
		}
		src[s.session][s.stream] = c
	}
	for range 2 {
		r := <-acc
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.h.Stream != 0 || r.h.Streams != 2 {
			t.Fatalf("AcceptConn returned hello of stream %d of %d", r.h.Stream, r.h.Streams)
		}
		a := transport.NewMulti(src[r.h.Session[0]])
		ltNewestWins(t, a, r.c)
		a.Close()
		r.c.Close()
	}
}

// A Discard (and a RecvBitmap) is a barrier that keeps its bitmap: it
// arrives after every page record sent before it on any stream, so that a
// stale copy can never land after the discard that names it.
func TestMultiBitmapBarriers(t *testing.T) {
	a, b, _ := ltPipeMulti(4, 0)
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const pages = 100
	words := []uint64{^uint64(0), 1<<(pages-64) - 1}
	sent := make(chan error, 1)
	go func() {
		defer cancel() // a failed send ends the Recv below
		data := make([]byte, 64)
		for p := range uint64(pages) {
			if err := a.Send(ctx, transport.Msg{Kind: wire.KindPage, Enc: transport.EncXBZRLE, Page: p, Data: data}); err != nil {
				sent <- err
				return
			}
		}
		for _, k := range []transport.Kind{wire.KindDiscard, wire.KindRecvBitmap} {
			if err := a.Send(ctx, transport.Msg{Kind: k, Page: 0, Data: wire.AppendBitmap(nil, words)}); err != nil {
				sent <- err
				return
			}
		}
		sent <- a.Flush(ctx)
		<-ctx.Done() // the receiver is done (cancel is deferred by the test)
	}()
	got := 0
	for _, want := range []transport.Kind{wire.KindDiscard, wire.KindRecvBitmap} {
		for {
			var m transport.Msg
			if err := b.Recv(ctx, &m); err != nil {
				t.Fatal(err, <-sent)
			}
			if m.Kind == wire.KindPage {
				got++
				continue
			}
			if m.Kind != want || got != pages {
				t.Fatalf("%v after %d pages, want %v after %d", m.Kind, got, want, pages)
			}
			n, err := wire.CheckBitmap(m, pages)
			if err != nil || n != len(words) || wire.BitmapWord(m, 0) != words[0] || wire.BitmapWord(m, 1) != words[1] {
				t.Fatalf("%v: %d words (%v), %x %x", m.Kind, n, err, wire.BitmapWord(m, 0), wire.BitmapWord(m, 1))
			}
			break
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// A message Send refuses wraps ErrInvalid, sends nothing and leaves the
// Conn usable, on one stream as on several: a page past the guest, a
// request past it, a bitmap chunk that is not whole words, a state too
// large. (A multi-stream Conn used to fail the whole session on all but
// the first; a single one sent the bitmap, which the peer took for
// corruption.)
func TestSendRefusalsLeaveConnUsable(t *testing.T) {
	ctx := context.Background()
	const pages = 64
	open := func(n int) (transport.Conn, transport.Conn) {
		as, bs := make([]transport.Conn, n), make([]transport.Conn, n)
		for i := range n {
			la, lb := transport.Pipe(0)
			cfg := transport.Config{PageSize: 4096, PageCount: pages, MaxState: 1 << 20}
			as[i], bs[i] = transport.NewConn(la, cfg), transport.NewConn(lb, cfg)
		}
		return transport.NewMulti(as), transport.NewMulti(bs)
	}
	for _, streams := range []int{1, 3} {
		a, b := open(streams)
		for _, c := range []struct {
			name string
			m    transport.Msg
			also error
		}{
			{"page past the guest", transport.Msg{Kind: wire.KindPage, Enc: transport.EncZero, Page: pages}, livemig.ErrPageRange},
			{"kind not defined", transport.Msg{Kind: 200}, nil},
			{"heartbeat", transport.Msg{Kind: transport.KindHeartbeat}, nil},
			{"bitmap of 5 bytes", transport.Msg{Kind: wire.KindDiscard, Data: make([]byte, 5)}, nil},
			{"empty bitmap", transport.Msg{Kind: wire.KindRecvBitmap}, nil},
			{"state too large", transport.Msg{Kind: wire.KindState, Data: make([]byte, 2<<20)}, transport.ErrTooLarge},
		} {
			err := a.Send(ctx, c.m)
			if !errors.Is(err, transport.ErrInvalid) || (c.also != nil && !errors.Is(err, c.also)) {
				t.Fatalf("%d streams, %s: %v, want ErrInvalid (and %v)", streams, c.name, err, c.also)
			}
		}
		// The Conn goes on: a bitmap chunk and a page arrive.
		words := wire.AppendBitmap(nil, []uint64{1})
		go func() {
			_ = a.Send(ctx, transport.Msg{Kind: wire.KindDiscard, Data: words})
			_ = a.Send(ctx, transport.Msg{Kind: wire.KindPage, Enc: transport.EncZero, Page: 3})
			_ = a.Flush(ctx)
		}()
		for _, want := range []transport.Kind{wire.KindDiscard, wire.KindPage} {
			var m transport.Msg
			if err := b.Recv(ctx, &m); err != nil || m.Kind != want {
				t.Fatalf("%d streams: after the refusals got %v, %v; want %v", streams, m.Kind, err, want)
			}
			if want == wire.KindDiscard && (len(m.Data) != 8 || wire.BitmapWord(m, 0) != 1) {
				t.Fatalf("%d streams: discard carries %x", streams, m.Data)
			}
		}
		a.Close()
		b.Close()
	}
}

// accepted is what an AcceptConn run in the background returned.
type accepted struct {
	c   transport.Conn
	h   transport.Hello
	err error
}

// acceptAsync runs n AcceptConn calls on ln in the background; their
// results come on the channel it returns, which holds all n.
func acceptAsync(ctx context.Context, ln *transport.Listener, hello transport.Hello, n int) <-chan accepted {
	acc := make(chan accepted, n)
	for range n {
		go func() {
			c, h, err := ln.AcceptConn(ctx, hello, transport.Config{})
			acc <- accepted{c, h, err}
		}()
	}
	return acc
}

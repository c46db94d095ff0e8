package transport_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/transport/transporttest"
	"github.com/livemig/livemig/wire"
)

// Eight AcceptConn calls on one listener take eight sources that connect at
// once, with 1, 2 or 3 streams each, their streams interleaved: every
// source reaches exactly one destination, with its own pages only.
func TestAcceptConnEightConcurrent(t *testing.T) {
	for _, name := range []string{"TCP", "TLSPSK"} {
		t.Run(name, func(t *testing.T) {
			lc, dc := transport.ListenConfig{}, transport.DialConfig{}
			if name == "TLSPSK" {
				pki := ltNewPKI(t)
				lc = transport.ListenConfig{TLS: pki.serverTLS(), PSK: ltKey(4)}
				dc = transport.DialConfig{TLS: pki.clientTLS(pki.client), PSK: ltKey(4)}
			}
			ltEightMigrations(t, lc, dc)
		})
	}
}

func ltEightMigrations(t *testing.T, lc transport.ListenConfig, dc transport.DialConfig) {
	const n, pages = 8, 64
	ln := ltListen(t, lc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize, PageCount: pages}

	// Destinations: each receives one migration and reports whose it was.
	got := make(chan uint64, n)
	errs := make(chan error, 2*n)
	for range n {
		go func() {
			c, _, err := ln.AcceptConn(ctx, hello, transport.Config{})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			src, err := ltRecvMigration(ctx, c, pages)
			if err != nil {
				errs <- err
				return
			}
			got <- src
		}()
	}
	// Sources: source i sends every page stamped with i, then Done(i).
	for i := range n {
		go func() {
			c, _, err := transport.DialMulti(ctx, ln.Addr().String(), i%3+1, dc, hello, transport.Config{})
			if err != nil {
				errs <- fmt.Errorf("source %d: %w", i, err)
				return
			}
			defer c.Close()
			data := make([]byte, transporttest.PageSize)
			for p := range uint64(pages) {
				binary.LittleEndian.PutUint64(data, uint64(i))
				binary.LittleEndian.PutUint64(data[8:], p)
				if err := c.Send(ctx, transport.Msg{Kind: wire.KindPage, Page: p, Data: data}); err != nil {
					errs <- fmt.Errorf("source %d: %w", i, err)
					return
				}
			}
			if err := c.Send(ctx, transport.Msg{Kind: wire.KindDone, Arg: uint64(i)}); err != nil {
				errs <- fmt.Errorf("source %d: %w", i, err)
				return
			}
			// Wait for the destination's word before closing.
			var m transport.Msg
			if err := c.Recv(ctx, &m); err != nil || m.Kind != wire.KindAck {
				errs <- fmt.Errorf("source %d: no ack: %v %v", i, m.Kind, err)
			}
		}()
	}
	seen := make(map[uint64]bool)
	for len(seen) < n {
		select {
		case src := <-got:
			if seen[src] {
				t.Fatalf("source %d reached two destinations", src)
			}
			seen[src] = true
		case err := <-errs:
			t.Fatal(err)
		}
	}
}

// ltRecvMigration receives pages until Done, checks that every page came
// once and from the source Done names, acks, and returns that source.
func ltRecvMigration(ctx context.Context, c transport.Conn, pages int) (uint64, error) {
	from := make([]uint64, pages)
	have := make([]bool, pages)
	for {
		var m transport.Msg
		if err := c.Recv(ctx, &m); err != nil {
			return 0, err
		}
		switch m.Kind {
		case wire.KindPage:
			if m.Page >= uint64(pages) || have[m.Page] || binary.LittleEndian.Uint64(m.Data[8:]) != m.Page {
				return 0, fmt.Errorf("page %d: unexpected record", m.Page)
			}
			have[m.Page], from[m.Page] = true, binary.LittleEndian.Uint64(m.Data)
		case wire.KindDone:
			for p := range pages {
				if !have[p] || from[p] != m.Arg {
					return 0, fmt.Errorf("source %d: page %d missing or from source %d", m.Arg, p, from[p])
				}
			}
			if err := c.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReady}); err != nil {
				return 0, err
			}
			return m.Arg, c.Flush(ctx)
		default:
			return 0, fmt.Errorf("unexpected %v", m.Kind)
		}
	}
}

// ltStall connects a client that says nothing, and one that speaks HTTP,
// to addr; the caller closes them.
func ltStall(t *testing.T, addr string) (silent, http net.Conn) {
	t.Helper()
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	http, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := http.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	return silent, http
}

// A silent client and an HTTP client that connect first do not delay a real
// source: it is accepted long before the handshake timeout (one minute
// here), and the HTTP client is turned away at once.
func TestAcceptNotHeldBySilentClients(t *testing.T) {
	const handshake = time.Minute
	pki := ltNewPKI(t)
	hello := transport.Hello{PageSize: transporttest.PageSize}
	for _, tc := range []struct {
		name   string
		lc     transport.ListenConfig
		dc     transport.DialConfig
		accept bool // Accept instead of AcceptConn
	}{
		{name: "AcceptConn"},
		{name: "AcceptConnPSK", lc: transport.ListenConfig{PSK: ltKey(5)}, dc: transport.DialConfig{PSK: ltKey(5)}},
		{name: "AcceptConnTLS", lc: transport.ListenConfig{TLS: pki.serverTLS()}, dc: transport.DialConfig{TLS: pki.clientTLS(pki.client)}},
		{name: "AcceptTLSPSK", accept: true,
			lc: transport.ListenConfig{TLS: pki.serverTLS(), PSK: ltKey(5)},
			dc: transport.DialConfig{TLS: pki.clientTLS(pki.client), PSK: ltKey(5)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.lc.HandshakeTimeout = handshake
			ln := ltListen(t, tc.lc)
			// Well under the handshake timeout: a real source must not
			// wait for the stalled ones.
			ctx, cancel := context.WithTimeout(context.Background(), handshake/4)
			defer cancel()
			silent, http := ltStall(t, ln.Addr().String())
			defer silent.Close()
			defer http.Close()

			acc := make(chan error, 4)
			go func() {
				for {
					if tc.accept {
						l, err := ln.Accept(ctx)
						if err != nil {
							if ctx.Err() != nil {
								acc <- err
								return
							}
							continue // the HTTP client's refusal
						}
						var b [4]byte
						_, err = io.ReadFull(l, b[:])
						l.Close()
						acc <- err
						return
					}
					c, _, err := ln.AcceptConn(ctx, hello, transport.Config{})
					if err == nil {
						c.Close()
					}
					acc <- err
					return
				}
			}()
			start := time.Now()
			if tc.accept {
				l, err := transport.Dial(ctx, ln.Addr().String(), tc.dc)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				if _, err := l.Write([]byte("page")); err != nil {
					t.Fatal(err)
				}
			} else {
				c, _, err := transport.DialMulti(ctx, ln.Addr().String(), 2, tc.dc, hello, transport.Config{})
				if err != nil {
					t.Fatalf("the real source after %v: %v", time.Since(start), err)
				}
				defer c.Close()
			}
			if err := <-acc; err != nil {
				t.Fatalf("accepting the real source after %v: %v", time.Since(start), err)
			}
			// The HTTP client was disconnected, the silent one is still
			// pending (and is closed by Close).
			_ = http.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(http); ltTimeout(err) {
				t.Fatalf("the HTTP client is still connected: %v", err)
			}
			ln.Close()
			_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(silent); ltTimeout(err) {
				t.Fatalf("the silent client is still connected after Close: %v", err)
			}
		})
	}
}

// Close stops every goroutine the listener runs, ends the AcceptConn calls
// waiting or gathering a session, and closes the connections in progress.
func TestListenerCloseStopsGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln, err := transport.Listen(context.Background(), "127.0.0.1:0", transport.ListenConfig{PSK: ltKey(6), Logger: ltQuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	acc := make(chan error, 2)
	for range 2 {
		go func() {
			_, _, err := ln.AcceptConn(ctx, hello, transport.Config{})
			acc <- err
		}()
	}
	// One AcceptConn gathers a session whose second stream never comes.
	link, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{PSK: ltKey(6)})
	if err != nil {
		t.Fatal(err)
	}
	h := hello
	h.Streams, h.Stream = 2, 1
	half, _, err := transport.Open(ctx, link, h, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	// A client stays silent in its key exchange; another has passed it and
	// not sent its hello.
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(silent, make([]byte, 36)); err != nil {
		t.Fatalf("the silent client's challenge: %v", err)
	}
	mute, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{PSK: ltKey(6)})
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()

	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-acc; !errors.Is(err, livemig.ErrClosed) {
			t.Fatalf("AcceptConn on a closed listener: %v, want ErrClosed", err)
		}
	}
	// The pending connections were closed (the session's half by its
	// AcceptConn, the others by Close).
	var m transport.Msg
	if err := half.Recv(ctx, &m); err == nil {
		t.Fatal("the gathered stream is still open")
	}
	if _, err := mute.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection waiting for its hello is still open")
	}
	if b, err := io.ReadAll(silent); len(b) != 0 || ltTimeout(err) {
		t.Fatalf("the silent client after Close: %d more bytes, %v", len(b), err)
	}
	if _, err := ln.Accept(ctx); !errors.Is(err, livemig.ErrClosed) && !errors.Is(err, transport.ErrInvalid) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// Once the listener serves AcceptConn, Accept refuses to compete for its
// connections; an AcceptConn that ended before it began does not count.
func TestAcceptAfterAcceptConn(t *testing.T) {
	ln := ltListen(t, transport.ListenConfig{})
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := ln.AcceptConn(done, transport.Hello{}, transport.Config{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("AcceptConn with a cancelled ctx: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	acc := make(chan error, 1)
	go func() {
		c, _, err := ln.AcceptConn(ctx, hello, transport.Config{})
		if err == nil {
			c.Close()
		}
		acc <- err
	}()
	c, _, err := transport.DialMulti(ctx, ln.Addr().String(), 1, transport.DialConfig{}, hello, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-acc; err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(ctx); !errors.Is(err, transport.ErrInvalid) {
		t.Fatalf("Accept on a listener serving AcceptConn: %v, want ErrInvalid", err)
	}
}

// ltTimeout reports whether err is a net timeout: a read that a peer left
// hanging (a reset or an end is not).
func ltTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A destination that announces 0 pages takes each source's geometry: one
// listener serves guests of different sizes at once, each Conn bound to its
// own guest's page count.
func TestAcceptAnyGeometry(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	ln, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sizes := map[uint64]bool{16: true, 300: true, 4096: true}
	acc := acceptAsync(ctx, ln, transport.Hello{Features: transport.FeatDigest}, len(sizes))
	var srcs []transport.Conn
	for pages := range sizes {
		link, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{})
		if err != nil {
			t.Fatal(err)
		}
		c, _, err := transport.Open(ctx, link, transport.Hello{PageSize: 4096, PageCount: pages}, transport.Config{})
		if err != nil {
			t.Fatalf("source of %d pages: %v", pages, err)
		}
		srcs = append(srcs, c)
		// The last page goes; one past it is refused at the source.
		if err := c.Send(ctx, transport.Msg{Kind: wire.KindPage, Page: pages - 1, Enc: transport.EncZero}); err != nil {
			t.Fatal(err)
		}
		if err := c.Send(ctx, transport.Msg{Kind: wire.KindPage, Page: pages, Enc: transport.EncZero}); !errors.Is(err, transport.ErrInvalid) {
			t.Fatalf("page %d of %d: %v", pages, pages, err)
		}
		if err := c.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for range len(srcs) {
		a := <-acc
		if a.err != nil {
			t.Fatal(a.err)
		}
		if !sizes[a.h.PageCount] || a.h.PageSize != 4096 {
			t.Fatalf("accepted a source of %d pages of %d bytes", a.h.PageCount, a.h.PageSize)
		}
		delete(sizes, a.h.PageCount)
		var m transport.Msg
		if err := a.c.Recv(ctx, &m); err != nil || m.Page != a.h.PageCount-1 {
			t.Fatalf("destination of %d pages received page %d: %v", a.h.PageCount, m.Page, err)
		}
		a.c.Close()
	}
	if len(sizes) != 0 {
		t.Fatalf("sources of %v pages never accepted", sizes)
	}
	for _, c := range srcs {
		c.Close()
	}

}

package transport_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/transport/transporttest"
)

// ltKey returns a 32-byte key drawn from a seeded source.
func ltKey(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(r.Uint32())
	}
	return k
}

// ltLog is a logger whose text a test can read.
type ltLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *ltLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *ltLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *ltLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// ltAcceptOne runs one Accept in the background.
func ltAcceptOne(ctx context.Context, ln *transport.Listener) <-chan error {
	acc := make(chan error, 1)
	go func() {
		l, err := ln.Accept(ctx)
		if err == nil {
			l.Close()
		}
		acc <- err
	}()
	return acc
}

// ltNotCut fails t if err looks like a cut link rather than a refusal.
func ltNotCut(t *testing.T, err error) {
	t.Helper()
	var ne net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) {
		t.Fatalf("a refusal reported as a cut link: %v", err)
	}
}

// A dialer with another key is refused on both sides, with ErrAuth, and the
// listener goes on: a dialer with the right key is accepted next.
func TestPSKWrongKeyRefused(t *testing.T) {
	pki := ltNewPKI(t)
	for _, name := range []string{"TCP", "TLS"} {
		t.Run(name, func(t *testing.T) {
			var log ltLog
			lc := transport.ListenConfig{PSK: ltKey(1), Logger: log.logger()}
			dc := transport.DialConfig{}
			if name == "TLS" {
				lc.TLS, dc.TLS = pki.serverTLS(), pki.clientTLS(pki.client)
			}
			ln := ltListen(t, lc)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			acc := ltAcceptOne(ctx, ln)
			dc.PSK = ltKey(2)
			_, err := transport.Dial(ctx, ln.Addr().String(), dc)
			if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "refused our pre-shared key") {
				t.Fatalf("Dial with a wrong key: %v, want ErrAuth saying the key was refused", err)
			}
			ltNotCut(t, err)
			aerr := <-acc
			if !errors.Is(aerr, transport.ErrAuth) || !strings.Contains(aerr.Error(), "wrong pre-shared key") {
				t.Fatalf("Accept of a wrong key: %v, want ErrAuth", aerr)
			}
			if !strings.Contains(aerr.Error(), "127.0.0.1:") || !strings.Contains(log.String(), "wrong pre-shared key") {
				t.Fatalf("the refusal does not name the dialer: Accept %q, log %q", aerr, log.String())
			}

			// The listener goes on, and kept its own copy of the key.
			lc.PSK[0] ^= 1
			acc2 := make(chan error, 1)
			var got []byte
			go func() {
				l, err := ln.Accept(ctx)
				if err == nil {
					got = make([]byte, 4)
					_, err = io.ReadFull(l, got)
					l.Close()
				}
				acc2 <- err
			}()
			dc.PSK = ltKey(1)
			good, err := transport.Dial(ctx, ln.Addr().String(), dc)
			if err != nil {
				t.Fatalf("Dial with the right key after a refusal: %v", err)
			}
			defer good.Close()
			if _, err := good.Write([]byte("page")); err != nil {
				t.Fatal(err)
			}
			if err := <-acc2; err != nil || string(got) != "page" {
				t.Fatalf("Accept after a refusal: %q, %v", got, err)
			}
		})
	}
}

// A dialer without a key meets a listener that requires one: its first Read
// (its hello) fails with ErrAuth, and Accept refuses it with ErrAuth naming
// its address.
func TestPSKDialerWithoutKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	t.Run("Accept", func(t *testing.T) {
		ln := ltListen(t, transport.ListenConfig{PSK: ltKey(1)})
		acc := ltAcceptOne(ctx, ln)
		link, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{})
		if err != nil {
			t.Fatal(err)
		}
		local := link.(transport.NetConn).NetConn().LocalAddr().String()
		_, _, err = transport.Open(ctx, link, hello, transport.Config{})
		if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "requires a pre-shared key") {
			t.Fatalf("Open without a key: %v, want ErrAuth saying a key is required", err)
		}
		ltNotCut(t, err)
		if err := <-acc; !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), local) {
			t.Fatalf("Accept of a dialer without a key: %v, want ErrAuth naming %s", err, local)
		}
	})
	t.Run("AcceptConn", func(t *testing.T) {
		ln := ltListen(t, transport.ListenConfig{PSK: ltKey(1)})
		acc := acceptAsync(ctx, ln, hello, 1)
		_, _, err := transport.DialMulti(ctx, ln.Addr().String(), 2, transport.DialConfig{}, hello, transport.Config{})
		if !errors.Is(err, transport.ErrAuth) {
			t.Fatalf("DialMulti without a key: %v, want ErrAuth", err)
		}
		// AcceptConn was not disturbed: it takes the next, good source.
		c, _, err := transport.DialMulti(ctx, ln.Addr().String(), 2, transport.DialConfig{PSK: ltKey(1)}, hello, transport.Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := <-acc
		if r.err != nil {
			t.Fatalf("AcceptConn after a refused source: %v", r.err)
		}
		r.c.Close()
	})
}

// A dialer with a key meets a listener without one: Dial fails at once with
// ErrAuth, whether the listener serves AcceptConn (it answers the key offer
// with a no-key notice) or Accept followed by Open (the dialer sees a hello
// where a challenge should be).
func TestPSKListenerWithoutKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hello := transport.Hello{PageSize: transporttest.PageSize}
	dc := transport.DialConfig{PSK: ltKey(1)}
	t.Run("AcceptConn", func(t *testing.T) {
		ln := ltListen(t, transport.ListenConfig{})
		go func() {
			if c, _, err := ln.AcceptConn(ctx, hello, transport.Config{}); err == nil {
				c.Close()
			}
		}()
		_, err := transport.Dial(ctx, ln.Addr().String(), dc)
		if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "does not ask for a pre-shared key") {
			t.Fatalf("Dial with a key to a listener without one: %v, want ErrAuth", err)
		}
		ltNotCut(t, err)
	})
	t.Run("AcceptOpen", func(t *testing.T) {
		ln := ltListen(t, transport.ListenConfig{})
		go func() {
			if l, err := ln.Accept(ctx); err == nil {
				if c, _, err := transport.Open(ctx, l, hello, transport.Config{}); err == nil {
					c.Close()
				}
			}
		}()
		_, err := transport.Dial(ctx, ln.Addr().String(), dc)
		if !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), "does not ask for a pre-shared key") {
			t.Fatalf("Dial with a key to a listener without one: %v, want ErrAuth", err)
		}
	})
}

// ltFakeListener serves one connection with serve, on a raw TCP listener.
func ltFakeListener(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

// ltFakeMAC is the listener's proof a real listener with key would send.
func ltFakeMAC(key []byte, label string, a, b []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	m.Write(a)
	m.Write(b)
	return m.Sum(nil)
}

// On the dialer's side a refusal is ErrAuth and a cut or silent link is
// not; a listener that accepts without proving it holds the key, or sends
// something else than a challenge, is refused.
func TestPSKDialerErrors(t *testing.T) {
	key := ltKey(1)
	challenge := append([]byte("LVKC"), bytes.Repeat([]byte{7}, 32)...)
	cases := []struct {
		name  string
		serve func(c net.Conn)
		check func(err error) bool
	}{
		{"CutBeforeChallenge", func(c net.Conn) {
			_, _ = io.ReadFull(c, make([]byte, 36))
		}, func(err error) bool { return errors.Is(err, io.EOF) && !errors.Is(err, transport.ErrAuth) }},
		{"CutInChallenge", func(c net.Conn) {
			_, _ = io.ReadFull(c, make([]byte, 36))
			_, _ = c.Write(challenge[:10])
		}, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, transport.ErrAuth) }},
		{"CutBeforeVerdict", func(c net.Conn) {
			_, _ = c.Write(challenge)
			_, _ = io.ReadFull(c, make([]byte, 36+32))
		}, func(err error) bool { return errors.Is(err, io.EOF) && !errors.Is(err, transport.ErrAuth) }},
		{"Silent", func(c net.Conn) {
			_, _ = io.Copy(io.Discard, c)
		}, func(err error) bool {
			var ne net.Error
			return errors.As(err, &ne) && ne.Timeout() && !errors.Is(err, transport.ErrAuth)
		}},
		{"NotAChallenge", func(c net.Conn) {
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n......."))
			_, _ = io.Copy(io.Discard, c)
		}, func(err error) bool { return errors.Is(err, livemig.ErrCorrupt) }},
		{"Impostor", func(c net.Conn) {
			_, _ = c.Write(challenge)
			_, _ = io.ReadFull(c, make([]byte, 36+32))
			_, _ = c.Write(append([]byte{1}, make([]byte, 32)...)) // accepts, proves nothing
			_, _ = io.Copy(io.Discard, c)
		}, func(err error) bool {
			return errors.Is(err, transport.ErrAuth) && strings.Contains(err.Error(), "did not prove")
		}},
		{"OtherKey", func(c net.Conn) {
			// A listener that accepts anyone and proves another key.
			_, _ = c.Write(challenge)
			in := make([]byte, 36+32)
			_, _ = io.ReadFull(c, in)
			_, _ = c.Write(append([]byte{1}, ltFakeMAC(ltKey(2), "livemig psk v1 listener", in[4:36], challenge[4:])...))
			_, _ = io.Copy(io.Discard, c)
		}, func(err error) bool { return errors.Is(err, transport.ErrAuth) }},
		{"BadVerdict", func(c net.Conn) {
			_, _ = c.Write(challenge)
			_, _ = io.ReadFull(c, make([]byte, 36+32))
			_, _ = c.Write(append([]byte{9}, make([]byte, 32)...))
			_, _ = io.Copy(io.Discard, c)
		}, func(err error) bool { return errors.Is(err, livemig.ErrCorrupt) }},
		{"RightKey", func(c net.Conn) {
			// The fake speaks the protocol with the right key: Dial succeeds.
			_, _ = c.Write(challenge)
			in := make([]byte, 36+32)
			_, _ = io.ReadFull(c, in)
			_, _ = c.Write(append([]byte{1}, ltFakeMAC(key, "livemig psk v1 listener", in[4:36], challenge[4:])...))
			_, _ = io.Copy(io.Discard, c)
		}, func(err error) bool { return err == nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := ltFakeListener(t, tc.serve)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			l, err := transport.Dial(ctx, addr, transport.DialConfig{PSK: key, HandshakeTimeout: 200 * time.Millisecond})
			if l != nil {
				l.Close()
			}
			if !tc.check(err) {
				t.Fatalf("Dial: %v", err)
			}
		})
	}
}

// A client that connects to a listener with a key and says nothing is
// refused with ErrAuth once HandshakeTimeout has passed; a client that
// sends something else than a key offer is refused at once.
func TestPSKSilentOrForeignDialer(t *testing.T) {
	ln := ltListen(t, transport.ListenConfig{PSK: ltKey(1), HandshakeTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acc := ltAcceptOne(ctx, ln)
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	err = <-acc
	var ne net.Error
	if !errors.Is(err, transport.ErrAuth) || !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), silent.LocalAddr().String()) {
		t.Fatalf("Accept of a silent client: %v, want ErrAuth and a timeout naming %s", err, silent.LocalAddr())
	}
	// The silent client saw the challenge, then the connection end.
	got, _ := io.ReadAll(silent)
	if !bytes.HasPrefix(got, []byte("LVKC")) {
		t.Fatalf("the silent client received %q", got)
	}

	acc = ltAcceptOne(ctx, ln)
	foreign, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	if _, err := foreign.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-acc; !errors.Is(err, transport.ErrAuth) || !strings.Contains(err.Error(), `"GET "`) {
		t.Fatalf("Accept of an HTTP client: %v, want ErrAuth", err)
	}
	// It received the challenge and the refusal verdict.
	got, _ = io.ReadAll(foreign)
	if len(got) != 36+33 || got[36] != 0 {
		t.Fatalf("the HTTP client received %d bytes %q, want a challenge and a refusal", len(got), got)
	}
}

func TestPSKTooShort(t *testing.T) {
	ctx := context.Background()
	for _, key := range [][]byte{{}, make([]byte, transport.MinPSKLen-1)} {
		if _, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{PSK: key}); !errors.Is(err, transport.ErrInvalid) {
			t.Fatalf("Listen with a %d-byte key: %v, want ErrInvalid", len(key), err)
		}
		if _, err := transport.Dial(ctx, "127.0.0.1:1", transport.DialConfig{PSK: key}); !errors.Is(err, transport.ErrInvalid) {
			t.Fatalf("Dial with a %d-byte key: %v, want ErrInvalid", len(key), err)
		}
	}
}

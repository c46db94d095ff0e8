package transport_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// ltMaker returns the two ends of a fresh link.
type ltMaker func(t *testing.T) (a, b transport.Link)

// ltLinks lists every link this file's tests run over.
func ltLinks() map[string]ltMaker {
	return map[string]ltMaker{
		"Pipe": func(t *testing.T) (transport.Link, transport.Link) {
			return transport.Pipe(0)
		},
		"PipeSmall": func(t *testing.T) (transport.Link, transport.Link) {
			return transport.Pipe(7)
		},
		"SimLink": func(t *testing.T) (transport.Link, transport.Link) {
			return transport.SimLink(transport.SimConfig{Bandwidth: 1e9, Latency: time.Millisecond, Buffer: 1 << 20}, nil, nil)
		},
		"RateLimitPipe": func(t *testing.T) (transport.Link, transport.Link) {
			a, b := transport.Pipe(0)
			return transport.RateLimit(a, transport.RateConfig{BytesPerSec: 1 << 30}),
				transport.RateLimit(b, transport.RateConfig{BytesPerSec: 1 << 30})
		},
		"TCP": func(t *testing.T) (transport.Link, transport.Link) {
			return ltNetPair(t, transport.ListenConfig{}, transport.DialConfig{})
		},
		"TLS": func(t *testing.T) (transport.Link, transport.Link) {
			pki := ltNewPKI(t)
			return ltNetPair(t, transport.ListenConfig{TLS: pki.serverTLS()}, transport.DialConfig{TLS: pki.clientTLS(pki.client)})
		},
		"PSK": func(t *testing.T) (transport.Link, transport.Link) {
			return ltNetPair(t, transport.ListenConfig{PSK: ltKey(1)}, transport.DialConfig{PSK: ltKey(1)})
		},
		"TLSPSK": func(t *testing.T) (transport.Link, transport.Link) {
			pki := ltNewPKI(t)
			return ltNetPair(t, transport.ListenConfig{TLS: pki.serverTLS(), PSK: ltKey(1)},
				transport.DialConfig{TLS: pki.clientTLS(pki.client), PSK: ltKey(1)})
		},
	}
}

// ltPattern returns n seeded pseudo-random bytes.
func ltPattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// ltSend writes data in pieces of seeded random sizes, then closes the
// write side if it can (else nothing).
func ltSend(w io.Writer, data []byte, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 2))
	for len(data) > 0 {
		n := min(len(data), 1+r.IntN(70000))
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func TestLinksRoundTrip(t *testing.T) {
	for name, mk := range ltLinks() {
		t.Run(name, func(t *testing.T) {
			a, b := mk(t)
			defer a.Close()
			defer b.Close()
			const n = 3<<20 + 123
			ab, ba := ltPattern(1, n), ltPattern(2, n)
			var wg sync.WaitGroup
			errs := make([]error, 2)
			got := make([][]byte, 2)
			wg.Add(4)
			go func() { defer wg.Done(); errs[0] = ltSend(a, ab, 3) }()
			go func() { defer wg.Done(); errs[1] = ltSend(b, ba, 4) }()
			go func() {
				defer wg.Done()
				got[0] = make([]byte, n)
				_, _ = io.ReadFull(b, got[0])
			}()
			go func() {
				defer wg.Done()
				got[1] = make([]byte, n)
				_, _ = io.ReadFull(a, got[1])
			}()
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got[0], ab) {
				t.Fatal("a to b: bytes differ")
			}
			if !bytes.Equal(got[1], ba) {
				t.Fatal("b to a: bytes differ")
			}
		})
	}
}

func TestLinksClose(t *testing.T) {
	for name, mk := range ltLinks() {
		t.Run(name, func(t *testing.T) {
			a, b := mk(t)
			defer b.Close()
			msg := []byte("bye!") // fits the smallest buffer
			if _, err := a.Write(msg); err != nil {
				t.Fatal(err)
			}
			// A Read blocked on a is released by a.Close.
			readErr := make(chan error, 1)
			go func() {
				var p [1]byte
				_, err := a.Read(p[:])
				readErr <- err
			}()
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if err := <-readErr; err == nil {
				t.Fatal("Read on the closed end returned no error")
			}
			// b drains what a wrote, then sees io.EOF.
			got, err := io.ReadAll(b)
			if err != nil {
				t.Fatalf("ReadAll after peer close: %v", err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("drained %q, want %q", got, msg)
			}
			// The closed end reports ErrClosed.
			if _, err := a.Write(msg); !errors.Is(err, livemig.ErrClosed) {
				t.Fatalf("Write after Close: %v, want ErrClosed", err)
			}
			if _, err := a.Read(make([]byte, 1)); !errors.Is(err, livemig.ErrClosed) && err != io.EOF {
				t.Fatalf("Read after Close: %v, want ErrClosed or EOF", err)
			}
			if err := a.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

// TestLinksCloseUnblocksWrite fills a link until Write blocks, then closes
// the writer's end from another goroutine.
func TestLinksCloseUnblocksWrite(t *testing.T) {
	for _, name := range []string{"Pipe", "PipeSmall", "SimLink", "RateLimitPipe"} {
		t.Run(name, func(t *testing.T) {
			a, b := ltLinks()[name](t)
			defer b.Close()
			done := make(chan error, 1)
			go func() {
				_, err := a.Write(make([]byte, 8<<20)) // more than any buffer here
				done <- err
			}()
			// Once b sees a byte the Write has begun; it cannot finish while
			// nobody reads, and Close must release it.
			if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			a.Close()
			if err := <-done; !errors.Is(err, livemig.ErrClosed) {
				t.Fatalf("blocked Write after Close: %v, want ErrClosed", err)
			}
		})
	}
}

func TestLinksPeerCloseFailsWrite(t *testing.T) {
	for _, name := range []string{"Pipe", "SimLink", "RateLimitPipe"} {
		t.Run(name, func(t *testing.T) {
			a, b := ltLinks()[name](t)
			defer a.Close()
			b.Close()
			if _, err := a.Write([]byte("x")); !errors.Is(err, livemig.ErrClosed) {
				t.Fatalf("Write to a closed peer: %v, want ErrClosed", err)
			}
		})
	}
}

func TestLinksCloseWrite(t *testing.T) {
	for name, mk := range ltLinks() {
		t.Run(name, func(t *testing.T) {
			a, b := mk(t)
			defer a.Close()
			defer b.Close()
			cw, ok := a.(interface{ CloseWrite() error })
			if !ok {
				t.Fatalf("%T has no CloseWrite", a)
			}
			if _, err := a.Write([]byte("half")); err != nil {
				t.Fatal(err)
			}
			if err := cw.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(b)
			if err != nil || string(got) != "half" {
				t.Fatalf("ReadAll = %q, %v", got, err)
			}
			// The other direction still works.
			if _, err := b.Write([]byte("back")); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 4)
			if _, err := io.ReadFull(a, p); err != nil || string(p) != "back" {
				t.Fatalf("read back %q, %v", p, err)
			}
		})
	}
}

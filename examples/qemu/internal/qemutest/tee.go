//go:build linux

package qemutest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Tee is a TCP proxy for one migration: it accepts the source QEMU's
// connection, dials the destination, copies both ways (the stream one way,
// the return path the other) and records the stream.
type Tee struct {
	ln   net.Listener
	to   string
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
	err  error
}

// NewTee listens on a free loopback port for a source whose stream goes to
// the destination at to. It is closed at the test's end.
func NewTee(t testing.TB, to string) (*Tee, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	tee := &Tee{ln: ln, to: to, done: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go tee.run()
	return tee, nil
}

// Addr is the address the source migrates to.
func (t *Tee) Addr() string { return t.ln.Addr().String() }

func (t *Tee) run() {
	defer close(t.done)
	src, err := t.ln.Accept()
	t.ln.Close()
	if err != nil {
		t.err = err
		return
	}
	defer src.Close()
	dst, err := net.Dial("tcp", t.to)
	if err != nil {
		t.err = err
		return
	}
	defer dst.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the return path
		defer wg.Done()
		_, _ = io.Copy(src, dst)
		_ = src.(*net.TCPConn).CloseWrite()
	}()
	_, err = io.Copy(io.MultiWriter(dst, lockedBuffer{t}), src)
	_ = dst.(*net.TCPConn).CloseWrite()
	wg.Wait()
	t.err = err
}

type lockedBuffer struct{ t *Tee }

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.t.mu.Lock()
	defer l.t.mu.Unlock()
	return l.t.buf.Write(p)
}

// Wait waits up to d until both sides have closed the connection and
// returns the stream the source sent.
func (t *Tee) Wait(d time.Duration) ([]byte, error) {
	select {
	case <-t.done:
	case <-time.After(d):
		return nil, fmt.Errorf("the migration connection is still open after %v", d)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf.Bytes()), t.err
}

// FreePort returns a loopback address with a port free at the time of the
// call.
func FreePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

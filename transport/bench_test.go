package transport

import (
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// benchTCPPair returns the two ends of a loopback TCP connection.
func benchTCPPair(b *testing.B) (x, y net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			b.Error(err)
		}
		ch <- c
	}()
	x, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	y = <-ch
	if y == nil {
		b.FailNow()
	}
	return x, y
}

func benchPage() []byte {
	p := make([]byte, 4096)
	rand.NewChaCha8([32]byte{1}).Read(p)
	return p
}

// sendRecvPages sends n raw 4 KiB page records from x to y through Conns and
// returns how long it took until the last one was received.
func sendRecvPages(b *testing.B, x, y Link, n int) time.Duration {
	src, dst := NewConn(x, Config{}), NewConn(y, Config{})
	defer src.Close()
	defer dst.Close()
	page := benchPage()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if err := src.Send(bg, Msg{Kind: KindPage, Page: uint64(i), Data: page}); err != nil {
				errc <- err
				return
			}
		}
		errc <- src.Flush(bg)
	}()
	var m Msg
	for i := range n {
		if err := dst.Recv(bg, &m); err != nil {
			b.Fatalf("Recv %d of %d: %v", i, n, err)
		}
		if m.Page != uint64(i) || len(m.Data) != len(page) {
			b.Fatalf("Recv %d: page %d, %d bytes", i, m.Page, len(m.Data))
		}
	}
	d := time.Since(start)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkConnPipe sends 4 KiB raw page records through a Conn over
// net.Pipe: the framing's own cost, with no kernel in the way.
func BenchmarkConnPipe(b *testing.B) {
	x, y := net.Pipe()
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	sendRecvPages(b, x, y, b.N)
}

// pageSource yields n bytes of copies of a page: what a sender reads from
// guest memory.
type pageSource struct {
	page []byte
	off  int
	left int64
}

func (s *pageSource) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && s.left > 0 {
		c := copy(p[n:min(len(p), n+int(s.left))], s.page[s.off:])
		n += c
		s.off = (s.off + c) % len(s.page)
		s.left -= int64(c)
	}
	return n, nil
}

// writerOnly and readerOnly hide io.ReaderFrom and io.WriterTo, so that
// io.CopyBuffer uses its buffer.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// rawCopy copies total bytes over x to y with io.CopyBuffer and a buffer as
// large as a batch at each end, and returns how long it took.
func rawCopy(b *testing.B, x, y net.Conn, total int64) time.Duration {
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(writerOnly{x}, &pageSource{page: benchPage(), left: total}, make([]byte, DefaultBatchBytes))
		errc <- err
	}()
	n, err := io.CopyBuffer(writerOnly{io.Discard}, readerOnly{io.LimitReader(y, total)}, make([]byte, DefaultBatchBytes))
	d := time.Since(start)
	if err != nil || n != total {
		b.Fatalf("raw copy: %d of %d bytes, %v", n, total, err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkConnTCP sends 4 KiB raw page records through a Conn over
// loopback TCP and, in the same run, copies as many bytes with a raw
// io.CopyBuffer over another loopback connection. It reports the framed
// throughput (MB/s), the raw one (raw-MB/s) and framed/raw (ratio).
func BenchmarkConnTCP(b *testing.B) {
	b.SetBytes(4096)
	b.ReportAllocs()
	b.StopTimer()
	total := int64(b.N) * 4096
	rx, ry := benchTCPPair(b)
	raw := rawCopy(b, rx, ry, total)
	rx.Close()
	ry.Close()
	x, y := benchTCPPair(b)
	b.StartTimer()
	framed := sendRecvPages(b, x, y, b.N)
	b.StopTimer()
	b.ReportMetric(float64(total)/raw.Seconds()/1e6, "raw-MB/s")
	b.ReportMetric(raw.Seconds()/framed.Seconds(), "ratio")
}

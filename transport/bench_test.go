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

// pageSender moves raw 4 KiB page records from one Conn to another.
type pageSender struct {
	src, dst Conn
	page     []byte
	next     uint64
}

func newPageSender(x, y Link) *pageSender {
	return &pageSender{src: NewConn(x, Config{}), dst: NewConn(y, Config{}), page: benchPage()}
}

func (p *pageSender) Close() {
	p.src.Close()
	p.dst.Close()
}

// send sends n page records and returns how long it took until the last
// one was received.
func (p *pageSender) send(b *testing.B, n int) time.Duration {
	first := p.next
	p.next += uint64(n)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		for i := range uint64(n) {
			if err := p.src.Send(bg, Msg{Kind: kindPage, Page: first + i, Data: p.page}); err != nil {
				errc <- err
				return
			}
		}
		errc <- p.src.Flush(bg)
	}()
	var m Msg
	for i := range uint64(n) {
		if err := p.dst.Recv(bg, &m); err != nil {
			b.Fatalf("Recv %d of %d: %v", i, n, err)
		}
		if m.Page != first+i || len(m.Data) != len(p.page) {
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
	p := newPageSender(net.Pipe())
	defer p.Close()
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	p.send(b, b.N)
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

// rawBuf is the buffer size of the tuned raw copy: that of a default batch
// frame of 4 KiB raw pages, so that both sides of the comparison make the
// same system calls. It is also the fastest size tried here (exactly
// 256 KiB was about 15 % slower on loopback).
const rawBuf = FrameOverhead + DefaultBatchBytes/(RecordOverhead+4096)*(RecordOverhead+4096)

// rawCopy copies total bytes over x to y and returns how long it took: with
// plain io.Copy if tuned is false (32 KiB writes, 8 KiB reads into
// io.Discard), with io.CopyBuffer and rawBuf-byte buffers at each end if it
// is true.
func rawCopy(b *testing.B, x, y net.Conn, total int64, tuned bool) time.Duration {
	start := time.Now()
	errc := make(chan error, 1)
	src := &pageSource{page: benchPage(), left: total}
	go func() {
		var err error
		if tuned {
			_, err = io.CopyBuffer(writerOnly{x}, src, make([]byte, rawBuf))
		} else {
			_, err = io.Copy(x, src)
		}
		errc <- err
	}()
	var n int64
	var err error
	if tuned {
		n, err = io.CopyBuffer(writerOnly{io.Discard}, readerOnly{io.LimitReader(y, total)}, make([]byte, rawBuf))
	} else {
		n, err = io.Copy(io.Discard, io.LimitReader(y, total))
	}
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
// loopback TCP and, in the same run, copies as many bytes over other
// loopback connections with plain io.Copy (the limit the ratio is against)
// and with a tuned io.CopyBuffer (frame-sized buffers: the strictest limit).
// The three alternate in rounds of at most 64 MiB, so that all see the same
// load on the machine. It reports the framed throughput (MB/s), the raw
// ones (raw-MB/s, tuned-MB/s), framed/raw (ratio) and framed/tuned
// (ratio-tuned).
func BenchmarkConnTCP(b *testing.B) {
	b.SetBytes(4096)
	b.ReportAllocs()
	b.StopTimer()
	rx, ry := benchTCPPair(b)
	defer rx.Close()
	defer ry.Close()
	tx, ty := benchTCPPair(b)
	defer tx.Close()
	defer ty.Close()
	p := newPageSender(benchTCPPair(b))
	defer p.Close()
	const round = 16 << 10 // pages: 64 MiB
	var raw, tuned, framed time.Duration
	for done, r := 0, 0; done < b.N; r++ {
		n := min(round, b.N-done)
		if r%2 == 0 {
			raw += rawCopy(b, rx, ry, int64(n)*4096, false)
			tuned += rawCopy(b, tx, ty, int64(n)*4096, true)
		}
		b.StartTimer()
		framed += p.send(b, n)
		b.StopTimer()
		if r%2 == 1 {
			tuned += rawCopy(b, tx, ty, int64(n)*4096, true)
			raw += rawCopy(b, rx, ry, int64(n)*4096, false)
		}
		done += n
	}
	total := float64(b.N) * 4096
	b.ReportMetric(total/raw.Seconds()/1e6, "raw-MB/s")
	b.ReportMetric(total/tuned.Seconds()/1e6, "tuned-MB/s")
	b.ReportMetric(raw.Seconds()/framed.Seconds(), "ratio")
	b.ReportMetric(tuned.Seconds()/framed.Seconds(), "ratio-tuned")
}

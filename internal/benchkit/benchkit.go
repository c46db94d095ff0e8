// Package benchkit holds what livemig's benchmarks share: running several
// contenders in turn so that a noisy machine disturbs them alike (Race), and
// a raw loopback TCP copy (RawTCPCopy, the limit of every transfer over
// TCP). It imports only the standard library, so that any package's tests
// can use it. It is for benchmarks and tests only.
package benchkit

import (
	"io"
	"net"
	"testing"
	"time"
)

// A Contender is one way of doing a benchmark's work: Batch does one
// batch of it (the same work for every contender of a race).
type Contender struct {
	Name  string
	Batch func()
}

// Race runs the contenders' batches in turn, a different one first each
// round, until every contender has done at least b.N ops (opsPerBatch
// ops a batch, bytesPerOp bytes an op), and returns each one's fastest
// batch: on a shared machine the fastest batch is the least disturbed, and
// batches run side by side see the same machine, so their ratios are the
// figures to trust. It reports each contender's GB/s over its fastest
// batch as "<name>-GB/s" and the first contender's speed over each other
// one's as "<first>/<name>"; the benchmark's own ns/op and MB/s are the
// first contender's (b.SetBytes(bytesPerOp)), from its fastest batch.
func Race(b *testing.B, opsPerBatch int, bytesPerOp int64, cs []Contender) []time.Duration {
	b.Helper()
	b.SetBytes(bytesPerOp)
	b.ReportAllocs()
	best := make([]time.Duration, len(cs))
	b.ResetTimer()
	for r := 0; r*opsPerBatch < b.N || r == 0; r++ {
		for k := range cs {
			j := (k + r) % len(cs)
			t0 := time.Now()
			cs[j].Batch()
			if d := time.Since(t0); best[j] == 0 || d < best[j] {
				best[j] = d
			}
		}
	}
	b.StopTimer()
	batchBytes := int64(opsPerBatch) * bytesPerOp
	for j, c := range cs {
		b.ReportMetric(GBps(batchBytes, best[j]), c.Name+"-GB/s")
		if j > 0 {
			b.ReportMetric(float64(best[j])/float64(best[0]), cs[0].Name+"/"+c.Name)
		}
	}
	b.ReportMetric(float64(best[0].Nanoseconds())/float64(opsPerBatch), "ns/op")
	if bytesPerOp > 0 {
		b.ReportMetric(GBps(batchBytes, best[0])*1000, "MB/s")
	}
	return best
}

// GBps is n bytes in d, in GB/s (10^9 bytes a second).
func GBps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / float64(d.Nanoseconds())
}

// TCPPair returns the two ends of a new loopback TCP connection.
func TCPPair(tb testing.TB) (x, y net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	x, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	if y = <-ch; y == nil {
		x.Close()
		tb.Fatal("accept failed")
	}
	return x, y
}

// RawTCPCopy sends n bytes over a fresh loopback TCP connection with
// io.Copy from a reader of zeros into io.Discard at the other end (32 KiB
// writes, the reads io.Copy chooses), and returns how long it took: the
// limit of a transfer of n bytes over loopback TCP.
func RawTCPCopy(tb testing.TB, n int64) time.Duration {
	tb.Helper()
	x, y := TCPPair(tb)
	defer x.Close()
	defer y.Close()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(x, io.LimitReader(zeros{}, n))
		x.Close()
		errc <- err
	}()
	got, err := io.Copy(io.Discard, y)
	d := time.Since(start)
	if werr := <-errc; werr != nil || err != nil || got != n {
		tb.Fatalf("raw copy: %d of %d bytes; write: %v, read: %v", got, n, werr, err)
	}
	return d
}

// zeros is an io.Reader of zero bytes that does not touch the buffer: the
// cost of filling it is not the link's.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { return len(p), nil }

package transport_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/transport/transporttest"
	"github.com/livemig/livemig/wire"
)

// ltBenchLink writes b.N pieces of size bytes on a while a goroutine reads
// them on b.
func ltBenchLink(b *testing.B, a, r transport.Link, size int) {
	src := ltPattern(9, size)
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, size)
		for range b.N {
			if _, err := io.ReadFull(r, buf); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := a.Write(src); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	a.Close()
	r.Close()
}

// BenchmarkMemcpy is the yardstick for BenchmarkPipe: one copy of the same
// bytes (the pipe makes two: in and out of its ring).
func BenchmarkMemcpy(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dK", size>>10), func(b *testing.B) {
			src, dst := ltPattern(9, size), make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for range b.N {
				copy(dst, src)
			}
		})
	}
}

func BenchmarkPipe(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dK", size>>10), func(b *testing.B) {
			x, y := transport.Pipe(0)
			ltBenchLink(b, x, y, size)
		})
	}
}

func BenchmarkTCPLoopback(b *testing.B) {
	x, y := ltNetPair(b, transport.ListenConfig{}, transport.DialConfig{})
	ltBenchLink(b, x, y, 64<<10)
}

// BenchmarkSimLink measures the real-time cost of a 256 KiB write through a
// simulated link (1 Gbit/s, 1 ms): the bytes are copied in and out like a
// pipe's, plus the virtual-time bookkeeping. virtual-ms/op is the virtual
// time each write takes, 2.097152 ms at 1 Gbit/s.
func BenchmarkSimLink(b *testing.B) {
	ca := livemig.NewVirtualClock()
	x, y := transport.SimLink(transport.SimConfig{Bandwidth: 1e9, Latency: time.Millisecond}, ca, nil)
	ltBenchLink(b, x, y, 256<<10)
	b.ReportMetric(float64(ca.Now().Sub(livemig.VirtualEpoch))/float64(time.Millisecond)/float64(b.N), "virtual-ms/op")
}

// ltBenchPages sends b.N raw 4 KiB page records from a to c (then a
// barrier) and receives them, reporting pages per second.
func ltBenchPages(b *testing.B, a, c transport.Conn) {
	ctx := context.Background()
	page := ltPattern(10, transporttest.PageSize)
	done := make(chan error, 1)
	go func() {
		var m transport.Msg
		for range b.N + 1 {
			if err := c.Recv(ctx, &m); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(len(page)))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if err := a.Send(ctx, transport.Msg{Kind: wire.KindPage, Page: uint64(i) % 262144, Data: page}); err != nil {
			b.Fatal(err)
		}
	}
	if err := a.Send(ctx, transport.Msg{Kind: wire.KindDone}); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pages/s")
	b.StopTimer()
	a.Close()
	c.Close()
}

func BenchmarkMultiPages(b *testing.B) {
	b.Run("Single_Pipe", func(b *testing.B) {
		x, y := transport.Pipe(0)
		ltBenchPages(b, transport.NewConn(x, transport.Config{}), transport.NewConn(y, transport.Config{}))
	})
	b.Run("Multi4_Pipe", func(b *testing.B) {
		a, c, _ := ltPipeMulti(4, 0)
		ltBenchPages(b, a, c)
	})
	b.Run("Multi4_TCP", func(b *testing.B) {
		a, c := ltNetMulti(b, transport.ListenConfig{}, transport.DialConfig{})
		ltBenchPages(b, a, c)
	})
}

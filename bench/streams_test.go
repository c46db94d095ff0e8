package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/benchkit"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// BenchmarkPrecopyStreams migrates the idle guest of
// BenchmarkPrecopyIdleGuest over 1, 2 and 4 in-memory pipes: one pipe is a
// Conn that takes batch frames; several make a multi-stream Conn
// (transport.NewMulti), whose destination applies the pages on the
// streams' goroutines (transport.ParallelReceiver) while the source sends
// record by record. cores is the process's CPU time over the wall-clock
// time: on a machine with more cores than streams, the streams' share.
func BenchmarkPrecopyStreams(b *testing.B) {
	size := *guestMiB << 20
	src, dst := idleGuest(b, size)
	ctx := context.Background()
	for _, c := range []struct {
		n      int
		serial bool
	}{{1, false}, {2, false}, {2, true}, {4, false}, {4, true}} {
		n := c.n
		name := fmt.Sprintf("streams=%d", n)
		if c.serial {
			name += "/apply-in-Recv"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			var cpu, wall time.Duration
			cpuOK := true
			for b.Loop() {
				b.StopTimer()
				as, bs, err := openStreams(ctx, n, src, dst)
				if err != nil {
					b.Fatal(err)
				}
				if c.serial {
					bs = plainConn{bs} // not a ParallelReceiver: Receive applies in its loop
				}
				b.StartTimer()
				c0, ok0 := benchkit.CPUTime()
				t0 := time.Now()
				rep, err := migrateConns(ctx, as, bs, src, dst)
				wall += time.Since(t0)
				c1, ok1 := benchkit.CPUTime()
				cpu += c1 - c0
				cpuOK = cpuOK && ok0 && ok1
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(rep.Downtime)/float64(time.Millisecond), "downtime-ms")
			}
			if cpuOK {
				b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
				b.ReportMetric(cpu.Seconds()*1e3/float64(b.N), "cpu-ms/op")
			}
		})
	}
}

// openStreams opens n pipes, each with the handshake, and returns the
// source's and the destination's Conn over them (NewMulti when n > 1).
func openStreams(ctx context.Context, n int, src, dst *region.Region) (a, b transport.Conn, err error) {
	as, bs := make([]transport.Conn, n), make([]transport.Conn, n)
	hello := func(r *region.Region, i int) transport.Hello {
		return transport.Hello{PageSize: pageSize, PageCount: r.PageCount(), Features: transport.FeatDigest, Streams: uint16(n), Stream: uint16(i)}
	}
	for i := range n {
		x, y := transport.Pipe(4 << 20)
		var wg sync.WaitGroup
		var berr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			bs[i], _, berr = transport.Open(ctx, y, hello(dst, i), transport.Config{})
		}()
		as[i], _, err = transport.Open(ctx, x, hello(src, i), transport.Config{})
		wg.Wait()
		if err == nil {
			err = berr
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return transport.NewMulti(as), transport.NewMulti(bs), nil
}

// migrateConns migrates src to dst with pre-copy over the Conns a and b, the
// destination on a goroutine of its own, and resumes the source after.
func migrateConns(ctx context.Context, a, b transport.Conn, src, dst *region.Region) (*livemig.Report, error) {
	var derr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, derr = precopy.Receive(ctx, b, precopy.Destination{Sink: dst, VM: dst, Pages: dst.PageCount(), PageSize: pageSize}, precopy.Config{})
	}()
	rep, err := precopy.Migrate(ctx, a, precopy.Source{Memory: src, Dirty: src, VM: src}, precopy.Config{})
	wg.Wait()
	_ = src.Resume(ctx)
	if err != nil || derr != nil {
		return rep, fmt.Errorf("source: %v, destination: %v", err, derr)
	}
	return rep, nil
}

// plainConn hides every method of a Conn but Conn's own.
type plainConn struct{ transport.Conn }

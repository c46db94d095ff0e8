package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/livemig/livemig"
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
				var rep *livemig.Report
				w, c, ok, err := timed(func() (err error) {
					rep, err = migrateConns(ctx, as, bs, src, dst)
					return err
				})
				wall, cpu, cpuOK = wall+w, cpu+c, cpuOK && ok
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

// openStreams opens n pipes, each with the handshake (openPair), and
// returns the source's and the destination's Conn over them (NewMulti when
// n > 1). On error every Conn opened is closed.
func openStreams(ctx context.Context, n int, src, dst *region.Region) (a, b transport.Conn, err error) {
	as, bs := make([]transport.Conn, 0, n), make([]transport.Conn, 0, n)
	for i := range n {
		x, y := transport.Pipe(4 << 20)
		ca, cb, err := openPair(ctx, x, y, src, dst, n, i)
		if err != nil {
			for k := range as {
				as[k].Close()
				bs[k].Close()
			}
			return nil, nil, err
		}
		as, bs = append(as, ca), append(bs, cb)
	}
	return transport.NewMulti(as), transport.NewMulti(bs), nil
}

// plainConn hides every method of a Conn but Conn's own.
type plainConn struct{ transport.Conn }

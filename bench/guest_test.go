package bench

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/benchkit"
	"github.com/livemig/livemig/internal/deltapath"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// pageSize is the page size of idleGuest's guests.
const pageSize = 4096

// idleGuest maps a guest of size bytes whose pages all hold data (one
// non-zero byte in each, so none goes as a zero page) and a destination
// region of the same size, both touched once so that page faults are not
// measured. Both are closed at the end of tb.
func idleGuest(tb testing.TB, size int) (src, dst *region.Region) {
	tb.Helper()
	pages := uint64(size / pageSize)
	var err error
	if src, err = region.New(pageSize, pages); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { src.Close() })
	if dst, err = region.New(pageSize, pages); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dst.Close() })
	bs, bd := src.Bytes(), dst.Bytes()
	for off := 0; off < len(bs); off += pageSize {
		bs[off+7] = byte(off>>12) | 1
		bd[off] = 1
	}
	src.SetState([]byte("idle guest state"))
	return src, dst
}

// migrate migrates src to dst with pre-copy (default Config) over the two
// ends of a link, as a user of precopy.Migrate and precopy.Receive would
// (openPair, then migrateConns), and returns the source's report. The
// source is resumed afterwards, so that src can be migrated again.
func migrate(ctx context.Context, x, y transport.Link, src, dst *region.Region) (*livemig.Report, error) {
	a, b, err := openPair(ctx, x, y, src, dst, 1, 0)
	if err != nil {
		return nil, err
	}
	return migrateConns(ctx, a, b, src, dst)
}

// openPair runs the handshake on both ends of a link at once, x the
// source's (src), y the destination's (dst), as stream i of n, and returns
// their Conns. On error both links are closed.
func openPair(ctx context.Context, x, y transport.Link, src, dst *region.Region, n, i int) (a, b transport.Conn, err error) {
	hello := func(r *region.Region) transport.Hello {
		return transport.Hello{PageSize: pageSize, PageCount: r.PageCount(), Features: transport.FeatDigest,
			Streams: uint16(n), Stream: uint16(i)}
	}
	var berr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, _, berr = transport.Open(ctx, y, hello(dst), transport.Config{})
	}()
	a, _, err = transport.Open(ctx, x, hello(src), transport.Config{})
	if err != nil {
		x.Close() // the destination's handshake fails too
	}
	<-done
	if err == nil && berr != nil {
		a.Close()
		err = berr
	}
	if err != nil {
		y.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// migrateConns migrates src to dst with pre-copy over the Conns a and b, the
// destination on a goroutine of its own, and resumes the source after.
func migrateConns(ctx context.Context, a, b transport.Conn, src, dst *region.Region) (*livemig.Report, error) {
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, derr = precopy.Receive(ctx, b, precopy.Destination{Sink: dst, VM: dst, Pages: dst.PageCount(), PageSize: pageSize}, precopy.Config{})
	}()
	rep, err := precopy.Migrate(ctx, a, precopy.Source{Memory: src, Dirty: src, VM: src}, precopy.Config{})
	<-done
	_ = src.Resume(ctx)
	if err != nil || derr != nil {
		return rep, fmt.Errorf("source: %v, destination: %v", err, derr)
	}
	return rep, nil
}

// timed runs f and returns its wall-clock time, the process's CPU time
// during it (benchkit.CPUTime; cpuOK false where it is not measured), and
// f's error.
func timed(f func() error) (wall, cpu time.Duration, cpuOK bool, err error) {
	c0, ok0 := benchkit.CPUTime()
	t0 := time.Now()
	err = f()
	wall = time.Since(t0)
	c1, ok1 := benchkit.CPUTime()
	return wall, c1 - c0, ok0 && ok1, err
}

// TestSuiteHelpers is the suite's quick self-check, run by go test without
// -bench: the idle guest migrates whole over the pipe and loopback TCP (and
// again, as the benchmark does) and over one and three pipes with the
// handshake (BenchmarkPrecopyStreams), the raw TCP copy moves its bytes, and
// every Encode path the suite switches to is the one in use.
func TestSuiteHelpers(t *testing.T) {
	const size = 4 << 20
	src, dst := idleGuest(t, size)
	for _, tcp := range []bool{false, true, true} {
		clear(dst.Bytes())
		var x, y transport.Link
		if tcp {
			x, y = testkit.LinkPair(t, true)
		} else {
			x, y = transport.Pipe(4 << 20)
		}
		rep, err := migrate(context.Background(), x, y, src, dst)
		if err != nil {
			t.Fatalf("tcp %v: %v", tcp, err)
		}
		if !bytes.Equal(src.Bytes(), dst.Bytes()) || !rep.Verified || rep.PagesSent < size/pageSize {
			t.Fatalf("tcp %v: destination differs or report %v", tcp, rep)
		}
	}
	for _, n := range []int{1, 3} { // BenchmarkPrecopyStreams's
		clear(dst.Bytes())
		a, b, err := openStreams(context.Background(), n, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := migrateConns(context.Background(), a, b, src, dst)
		if err != nil || !bytes.Equal(src.Bytes(), dst.Bytes()) || !rep.Verified {
			t.Fatalf("%d streams: %v, destination equal %v", n, err, bytes.Equal(src.Bytes(), dst.Bytes()))
		}
	}
	if d := benchkit.RawTCPCopy(t, 3<<20+5); d <= 0 {
		t.Fatalf("raw copy took %v", d)
	}
	defer deltapath.Set(deltapath.Current())
	for _, p := range deltapath.Paths() {
		if got := deltapath.Set(p); got != p || deltapath.Current() != p {
			t.Errorf("Set(%q) = %q, Current %q", p, got, deltapath.Current())
		}
	}
}

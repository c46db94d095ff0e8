package precopy_test

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// benchGuest is an idle guest of size bytes with no zero pages, and a
// destination region of the same size, both touched once so that page
// faults are not measured.
func benchGuest(b *testing.B, size int) (src, dst *region.Region) {
	b.Helper()
	pages := uint64(size / pageSize)
	src = newSource(b, pages)
	bs := src.Bytes()
	for off := 7 * pageSize; off < len(bs); off += 8 * pageSize {
		bs[off] = 1 // no zero pages: every page crosses the link
	}
	var err error
	dst, err = region.New(pageSize, pages)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dst.Close() })
	bd := dst.Bytes()
	for off := 0; off < len(bd); off += pageSize {
		bd[off] = 1
	}
	return src, dst
}

// migrateOnce migrates src to dst over the link pair and returns the
// report.
func migrateOnce(b *testing.B, a, l transport.Link, src, dst *region.Region) *livemig.Report {
	res := migrate(&testing.T{}, context.Background(), a, l, src, src, dst, dst, precopy.Config{}, context.Background())
	if res.err != nil || res.derr != nil {
		b.Fatalf("source: %v, destination: %v", res.err, res.derr)
	}
	return res.rep
}

const benchSize = 1 << 30

// BenchmarkIdleGuest migrates an idle 1 GiB guest. The pipe case reports
// GB/s next to a memcpy of the guest measured in the same run; the TCP case
// reports its throughput as a ratio to raw io.Copy of the same bytes over
// loopback TCP, measured in the same run.
func BenchmarkIdleGuest(b *testing.B) {
	src, dst := benchGuest(b, benchSize)
	b.Run("memcpy", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			copy(dst.Bytes(), src.Bytes())
		}
	})
	b.Run("pipe", func(b *testing.B) {
		b.SetBytes(benchSize)
		b.ReportAllocs()
		var rep *livemig.Report
		for b.Loop() {
			a, l := transport.Pipe(4 << 20)
			rep = migrateOnce(b, a, l, src, dst)
			_ = src.Resume(context.Background())
		}
		b.ReportMetric(float64(rep.Downtime)/float64(time.Millisecond), "downtime-ms")
		b.ReportMetric(float64(rep.BytesSent)/1e6, "MB-sent")
	})
	b.Run("tcp", func(b *testing.B) {
		b.SetBytes(benchSize)
		var raw, framed time.Duration
		var rep *livemig.Report
		for b.Loop() {
			b.StopTimer()
			t0 := time.Now()
			rawCopy(b, benchSize)
			raw += time.Since(t0)
			b.StartTimer()
			a, l := tcpPair(&testing.T{})
			t0 = time.Now()
			rep = migrateOnce(b, a, l, src, dst)
			framed += time.Since(t0)
			_ = src.Resume(context.Background())
		}
		b.ReportMetric(raw.Seconds()/framed.Seconds(), "ratio")
		b.ReportMetric(float64(benchSize)/raw.Seconds()*float64(b.N)/1e6, "raw-MB/s")
		b.ReportMetric(float64(rep.Downtime)/float64(time.Millisecond), "downtime-ms")
	})
}

// rawCopy sends n bytes over a fresh loopback TCP pair with io.Copy.
func rawCopy(b *testing.B, n int64) {
	a, l := tcpPair(&testing.T{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(io.Discard, l); err != nil {
			b.Error(err)
		}
		l.Close()
	}()
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := a.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	a.Close()
	wg.Wait()
}

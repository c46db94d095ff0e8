//go:build linux

package faultmem

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// benchChunk is how many pages a benchmark maps at a time (64 MiB): it maps
// a fresh region every benchChunk operations, outside the timer.
const benchChunk = 16384

func reportPages(b *testing.B) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "pages/s")
	}
}

// BenchmarkPlace: UFFDIO_COPY (Place) and UFFDIO_ZEROPAGE (PlaceZero) into
// missing pages that no one waits for.
func BenchmarkPlace(b *testing.B) {
	data := content(1)
	for _, bc := range []struct {
		name string
		op   func(r *Region, n uint64) (bool, error)
	}{
		{"copy", func(r *Region, n uint64) (bool, error) { return r.Place(n, data) }},
		{"zero", func(r *Region, n uint64) (bool, error) { return r.PlaceZero(n) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(ps)
			b.ReportAllocs()
			var r *Region
			n := uint64(benchChunk)
			for b.Loop() {
				if n == benchChunk {
					b.StopTimer()
					if r != nil {
						r.Close()
					}
					r, n = newBench(b, benchChunk, Config{}), 0
					b.StartTimer()
				}
				if placed, err := bc.op(r, n); err != nil || !placed {
					b.Fatalf("page %d: placed %v, %v", n, placed, err)
				}
				n++
			}
			b.StopTimer()
			r.Close()
			reportPages(b)
		})
	}
}

// BenchmarkDiscard: Discard (MADV_DONTNEED) of present pages, every
// seventh page of a chunk (stale pages of a hybrid migration are seldom
// neighbours): what the destination pays per stale page at a hybrid
// switchover, inside the downtime.
func BenchmarkDiscard(b *testing.B) {
	data := content(1)
	b.ReportAllocs()
	var r *Region
	n := uint64(benchChunk)
	for b.Loop() {
		if n >= benchChunk {
			b.StopTimer()
			if r != nil {
				r.Close()
			}
			r, n = newBench(b, benchChunk, Config{}), 0
			for p := uint64(0); p < benchChunk; p++ {
				if err := r.WritePage(p, data); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
		}
		if err := r.Discard(n); err != nil {
			b.Fatalf("page %d: %v", n, err)
		}
		n += 7
	}
	b.StopTimer()
	r.Close()
	reportPages(b)
}

// newBench is newOrSkip without the cleanup: benchmarks close regions as
// they go, to keep at most one chunk resident.
func newBench(b *testing.B, pages uint64, cfg Config) *Region {
	r, err := New(ps, pages, cfg)
	if err != nil {
		newOrSkip(b, 1, Config{}) // skips, or fails under LIVEMIG_REQUIRE_UFFD=1
		b.Fatal(err)
	}
	return r
}

// BenchmarkFaultService: guest goroutines touch missing pages; the handler
// places each on its fault (Place from OnFault). One op is one page faulted
// and served; µs/fault is the wall time per page, and the service time
// percentiles come from FaultStats.
func BenchmarkFaultService(b *testing.B) {
	for _, guests := range []int{1, 4} {
		b.Run(map[int]string{1: "guests=1", 4: "guests=4"}[guests], func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), guests+1)))
			data := content(1)
			b.SetBytes(ps)
			b.ReportAllocs()
			var p50s, p99s []time.Duration
			for done := 0; done < b.N; {
				k := min(b.N-done, benchChunk)
				b.StopTimer()
				var rp atomic.Pointer[Region] // see TestZeroPageOnFault
				r := newBench(b, uint64(k), Config{OnFault: func(n uint64) {
					if _, err := rp.Load().Place(n, data); err != nil {
						b.Error(err)
					}
				}})
				rp.Store(r)
				mem := r.Bytes()
				b.StartTimer()
				var wg sync.WaitGroup
				for g := range guests {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := g; i < k; i += guests {
							guestLoad(mem, i*ps)
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				_, p50, p99, _ := r.FaultStats()
				p50s, p99s = append(p50s, p50), append(p99s, p99)
				r.Close()
				b.StartTimer()
				done += k
			}
			b.StopTimer()
			reportPages(b)
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/fault")
			// The worst chunk's percentiles.
			b.ReportMetric(maxDur(p50s).Seconds()*1e6, "p50-µs")
			b.ReportMetric(maxDur(p99s).Seconds()*1e6, "p99-µs")
		})
	}
}

func maxDur(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// BenchmarkMemcpy: the same page copied with copy() into mapped memory,
// already touched (warm) or fresh (each page's first touch is an ordinary
// anonymous page fault, the kernel work UFFDIO_COPY also does).
func BenchmarkMemcpy(b *testing.B) {
	data := content(1)
	for _, fresh := range []bool{false, true} {
		b.Run(map[bool]string{false: "warm", true: "fresh"}[fresh], func(b *testing.B) {
			b.SetBytes(ps)
			b.ReportAllocs()
			mem, err := unix.Mmap(-1, 0, benchChunk*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { unix.Munmap(mem) }()
			if !fresh {
				for i := 0; i < len(mem); i += ps {
					mem[i] = 1
				}
			}
			n := 0
			for b.Loop() {
				if n == benchChunk {
					n = 0
					if fresh {
						b.StopTimer()
						if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
				}
				copy(mem[n*ps:(n+1)*ps], data)
				n++
			}
			b.StopTimer()
			reportPages(b)
		})
	}
}

package codec

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/internal/benchkit"
	"github.com/livemig/livemig/transport"
	"github.com/pierrec/lz4/v4"
)

// benchPages is the working set of the per-pattern benchmarks: 4 MiB of
// pages, cycled through, so that every benchmark of a pattern reads the
// same memory the same way.
const benchPages = 1024

// benchSet is a pattern's pages: old, and new = old changed by the pattern.
// The old pages are a third random, a third text-like (compressible), a
// third sparse.
type benchSet struct {
	old, new []byte
}

func (s *benchSet) page(buf []byte, i int) []byte { return buf[i*testPS : (i+1)*testPS] }

var (
	benchMu   sync.Mutex
	benchSets = map[string]*benchSet{}
)

func getBenchSet(pat pattern) *benchSet {
	benchMu.Lock()
	defer benchMu.Unlock()
	if s, ok := benchSets[pat.name]; ok {
		return s
	}
	rng := rand.New(rand.NewPCG(42, 42))
	s := &benchSet{old: make([]byte, benchPages*testPS)}
	for i := range benchPages {
		fillPage(rng, s.page(s.old, i), 1+i%3)
	}
	s.new = append([]byte(nil), s.old...)
	for i := range benchPages {
		pat.mutate(rng, s.page(s.new, i))
	}
	benchSets[pat.name] = s
	return s
}

// BenchmarkIsZero measures zero-page detection on a cache-resident zero
// page (the whole page is read): bytes.Equal against a static zero page,
// which IsZero uses, the unrolled eight-word OR loop, and the AVX-512 check
// where the CPU has it.
func BenchmarkIsZero(b *testing.B) {
	page := make([]byte, testPS)
	checks := []struct {
		name string
		fn   func([]byte) bool
	}{{"bytes.Equal", isZeroEqual}, {"or-loop", isZeroWords}}
	if hasAVX512 {
		checks = append(checks, struct {
			name string
			fn   func([]byte) bool
		}{"avx512", isZeroVec})
	}
	for _, m := range checks {
		b.Run(m.name, func(b *testing.B) {
			b.SetBytes(testPS)
			b.ReportAllocs()
			for b.Loop() {
				if !m.fn(page) {
					b.Fatal("not zero")
				}
			}
		})
	}
}

// BenchmarkIsZeroRatio runs the zero checks in turn, batch by batch
// (benchkit.Race), on working sets of 1 page (L1), 256 pages (1 MiB, L2)
// and 16384 pages (64 MiB: each batch reads the next 256 pages, which no
// batch read in the last 63, mostly from memory), of zero pages ("zero"),
// pages whose first byte is set ("data-first") and pages whose last byte
// is set ("data-last", a full scan that finds data), and zero pages
// copied into a page buffer before the check ("zero-copied", the worker's
// path for a Memory without views: ReadPage, then IsZero on the copy, in
// L1), and reports each
// one's GB/s from its fastest batch and the speed of bytes.Equal (which
// IsZero uses) over the others': same-run ratios, which a shared machine
// leaves steady.
func BenchmarkIsZeroRatio(b *testing.B) {
	type check struct {
		name string
		fn   func([]byte) bool
	}
	checks := []check{{"bytes.Equal", isZeroEqual}, {"or-loop", isZeroWords}}
	if hasAVX512 {
		checks = append(checks, check{"avx512", isZeroVec})
	} else {
		b.Log("no AVX-512 here (CPU or purego build): the AVX-512 check is not measured")
	}
	for _, pages := range []int{1, 256, 16384} {
		for _, kind := range []string{"zero", "data-first", "data-last", "zero-copied"} {
			buf := make([]byte, pages*testPS)
			for i := range buf {
				buf[i] = 1 // fault every page in: no reads of the kernel's zero page
			}
			clear(buf)
			want := kind == "zero" || kind == "zero-copied"
			for i := range pages {
				switch kind {
				case "data-first":
					buf[i*testPS] = 1
				case "data-last":
					buf[(i+1)*testPS-1] = 1
				}
			}
			b.Run(fmt.Sprintf("%s/pages=%d", kind, pages), func(b *testing.B) {
				const batch = 256
				slot := make([]byte, testPS)
				var cs []benchkit.Contender
				for j, c := range checks {
					next := j * batch // pages no other check read just before
					cs = append(cs, benchkit.Contender{Name: c.name, Batch: func() {
						for i := range batch {
							p := (next + i) % pages
							page := buf[p*testPS : (p+1)*testPS]
							if kind == "zero-copied" {
								// The worker's path for a Memory without
								// views: ReadPage into a slot, then the check.
								copy(slot, page)
								page = slot
							}
							if c.fn(page) != want {
								b.Fatalf("%s: wrong answer", c.name)
							}
						}
						next += len(checks) * batch
					}})
				}
				benchkit.Race(b, batch, testPS, cs)
			})
		}
	}
}

// BenchmarkMemcpy is the limit the pipeline is measured against: copying
// the same pages once.
func BenchmarkMemcpy(b *testing.B) {
	dst := make([]byte, testPS)
	for _, pat := range patterns {
		s := getBenchSet(pat)
		b.Run(pat.name, func(b *testing.B) {
			b.SetBytes(testPS)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				copy(dst, s.page(s.new, i))
				if i++; i == benchPages {
					i = 0
				}
			}
		})
	}
}

// BenchmarkXBZRLE encodes each new page against its old copy and decodes
// the delta, per pattern, for comparison with LZ4 in the same run.
func BenchmarkXBZRLE(b *testing.B) {
	for _, pat := range patterns {
		s := getBenchSet(pat)
		b.Run(pat.name+"/encode", func(b *testing.B) {
			dst := make([]byte, 0, 2*testPS+16)
			b.SetBytes(testPS)
			b.ReportAllocs()
			var out int
			i := 0
			for b.Loop() {
				d, err := delta.Encode(dst[:0], s.page(s.old, i), s.page(s.new, i), 0)
				if err == nil {
					out += len(d)
				} else {
					out += testPS
				}
				if i++; i == benchPages {
					i = 0
				}
			}
			b.ReportMetric(float64(b.N)*testPS/float64(max(out, 1)), "ratio")
		})
		deltas := make([][]byte, benchPages)
		for i := range deltas {
			deltas[i], _ = delta.Encode(nil, s.page(s.old, i), s.page(s.new, i), 0)
		}
		b.Run(pat.name+"/decode", func(b *testing.B) {
			page := make([]byte, testPS)
			b.SetBytes(testPS)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				copy(page, s.page(s.old, i))
				if err := delta.Decode(page, deltas[i]); err != nil {
					b.Fatal(err)
				}
				if i++; i == benchPages {
					i = 0
				}
			}
		})
	}
}

// BenchmarkLZ4 compresses each new page on its own (into a buffer of
// MaxLZ4 bytes: only a block that short is used) and decompresses the
// blocks, per pattern.
func BenchmarkLZ4(b *testing.B) {
	for _, pat := range patterns {
		s := getBenchSet(pat)
		b.Run(pat.name+"/compress", func(b *testing.B) {
			var c lz4.Compressor
			dst := make([]byte, MaxLZ4(testPS))
			b.SetBytes(testPS)
			b.ReportAllocs()
			var out int
			i := 0
			for b.Loop() {
				if k := lz4Compress(&c, dst, s.page(s.new, i)); k > 0 {
					out += k
				} else {
					out += testPS
				}
				if i++; i == benchPages {
					i = 0
				}
			}
			b.ReportMetric(float64(b.N)*testPS/float64(max(out, 1)), "ratio")
		})
		var c lz4.Compressor
		blocks := make([][]byte, benchPages)
		for i := range blocks {
			buf := make([]byte, lz4.CompressBlockBound(testPS))
			blocks[i] = buf[:lz4Compress(&c, buf, s.page(s.new, i))]
		}
		b.Run(pat.name+"/decompress", func(b *testing.B) {
			page := make([]byte, testPS)
			b.SetBytes(testPS)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if n, err := lz4Decompress(page, blocks[i]); err != nil || n != testPS {
					b.Fatal(n, err)
				}
				if i++; i == benchPages {
					i = 0
				}
			}
		})
	}
}

// pipelineGuest is BenchmarkPipeline's guest: 64 MiB, its page n being the
// benchmark set's page n % benchPages, so that a round is as long as a
// real guest's first rounds (a round's end waits for every worker: rounds
// of 1024 pages, 1-3 ms, measured that wait more than the workers).
const pipelineGuest = 16 * benchPages

// flipMem is a guest of pipelineGuest pages whose pages are either all old
// or all new.
type flipMem struct {
	s   *benchSet
	cur []byte
}

func (m *flipMem) PageSize() int     { return testPS }
func (m *flipMem) PageCount() uint64 { return pipelineGuest }
func (m *flipMem) ReadPage(n uint64, dst []byte) error {
	i := int(n % benchPages)
	copy(dst, m.cur[i*testPS:(i+1)*testPS])
	return nil
}

// BenchmarkPipeline runs the pages of a 64 MiB guest (pipelineGuest)
// through Submit and Barrier with XBZRLE and LZ4 on and a send that
// discards, round after round, each round switching every page between
// its old and new version: from round 2 on every page
// hits the cache and goes as a delta, LZ4 block or raw by the pattern, or
// sends nothing when unchanged. One op is one page; ratio is page bytes
// over wire bytes (13 bytes of record header per record included).
func BenchmarkPipeline(b *testing.B) {
	ctx := context.Background()
	for _, pat := range patterns {
		s := getBenchSet(pat)
		for _, workers := range []int{1, 2} {
			b.Run(pat.name+"/w"+string(rune('0'+workers)), func(b *testing.B) {
				m := &flipMem{s: s, cur: s.old}
				cfg := Config{XBZRLE: true, LZ4: true, Workers: workers, NoAdapt: true,
					Cache: delta.CacheConfig{Bytes: 2 * pipelineGuest * testPS}}
				pl, err := NewPipeline(cfg, m, nil, func(transport.Msg) error { return nil })
				if err != nil {
					b.Fatal(err)
				}
				defer pl.Close()
				round := 1
				runRound := func(pages int) {
					pl.StartRound(round, false)
					for n := range uint64(pages) {
						if err := pl.Submit(ctx, n); err != nil {
							b.Fatal(err)
						}
					}
					if err := pl.Barrier(ctx); err != nil {
						b.Fatal(err)
					}
					round++
					if &m.cur[0] == &s.old[0] {
						m.cur = s.new
					} else {
						m.cur = s.old
					}
				}
				runRound(pipelineGuest) // round 1: no cache
				runRound(pipelineGuest) // round 2: fills the cache
				var wire uint64
				b.SetBytes(testPS)
				b.ReportAllocs()
				runtime.GC() // the sets' and caches' garbage: not during the timing
				b.ResetTimer()
				c0, ok0 := benchkit.CPUTime()
				t0 := time.Now()
				left := b.N
				for left > 0 {
					k := min(left, pipelineGuest)
					runRound(k)
					_, _, w := pl.RoundStats()
					wire += w
					left -= k
				}
				b.StopTimer()
				// cores: the process's CPU time over the wall-clock time
				// of the rounds timed; 2 when both workers are busy.
				if c1, ok1 := benchkit.CPUTime(); ok0 && ok1 {
					b.ReportMetric((c1-c0).Seconds()/time.Since(t0).Seconds(), "cores")
				}
				// Unchanged pages send nothing: the ratio is then infinite.
				b.ReportMetric(float64(wire)/float64(b.N), "wireB/page")
				if wire > 0 {
					b.ReportMetric(float64(b.N)*testPS/float64(wire), "ratio")
				}
			})
		}
	}
}

// BenchmarkCalibrate runs Calibrate and prints the model it measured, as
// Go source, and its main costs as metrics (ns per 4 KiB page). Run it a
// few times and take the median: go test -run '^$' -bench Calibrate
// -count 5 ./codec.
func BenchmarkCalibrate(b *testing.B) {
	var m CostModel
	for b.Loop() {
		var err error
		if m, err = Calibrate(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(m.ZeroScan, "zero-scan-ns")
	b.ReportMetric(m.Digest, "digest-ns")
	b.ReportMetric(m.XBZRLEHit, "xbzrle-hit-ns")
	b.ReportMetric(m.LZ4Compress, "lz4-ns")
	b.ReportMetric(m.LZ4Decompress, "unlz4-ns")
	b.Log(m.String())
}

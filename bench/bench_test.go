package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/internal/benchkit"
	"github.com/livemig/livemig/internal/crc32c"
	"github.com/livemig/livemig/internal/deltapath"
	"github.com/livemig/livemig/internal/pagepat"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
)

var guestMiB = flag.Int("guest-mib", 1024, "size of BenchmarkPrecopyIdleGuest's guest and of BenchmarkMemcpy's large copy, in MiB")

// sink keeps results the compiler could otherwise drop.
var sink int

func randomBytes(n int, seed uint64) []byte {
	p := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(p)
	return p
}

// BenchmarkMemcpy copies a 4 KiB page (from and to the L1 cache) and a
// whole guest (-guest-mib, 1 GiB by default, memory to memory).
func BenchmarkMemcpy(b *testing.B) {
	b.Run("page", func(b *testing.B) {
		src, dst := randomBytes(4096, 1), make([]byte, 4096)
		b.SetBytes(4096)
		b.ReportAllocs()
		for b.Loop() {
			copy(dst, src)
		}
	})
	size := *guestMiB << 20
	b.Run(fmt.Sprintf("%dMiB", *guestMiB), func(b *testing.B) {
		src, dst := randomBytes(size, 2), make([]byte, size)
		copy(dst, src) // fault the pages in
		b.SetBytes(int64(size))
		b.ReportAllocs()
		for b.Loop() {
			copy(dst, src)
		}
	})
}

// BenchmarkCRC32C computes the CRC32C (Castagnoli) of a page and of a
// 256 KiB batch frame, as every transport frame carries, with the code the
// engine uses (internal/crc32c: AVX-512 VPCLMULQDQ where the CPU has it),
// beside hash/crc32's (the CRC32 instruction) and memcpy of the same
// bytes; all in cache.
func BenchmarkCRC32C(b *testing.B) {
	tab := crc32.MakeTable(crc32.Castagnoli)
	for _, size := range []int{4 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			src, dst := randomBytes(size, 3), make([]byte, size)
			ops := max(1, (1<<20)/size) // 1 MiB a batch
			benchkit.Race(b, ops, int64(size), []benchkit.Contender{
				{Name: "crc32c", Batch: func() {
					for range ops {
						sink += int(crc32c.Checksum(src))
					}
				}},
				{Name: "hash-crc32", Batch: func() {
					for range ops {
						sink += int(crc32.Checksum(src, tab))
					}
				}},
				{Name: "memcpy", Batch: func() {
					for range ops {
						copy(dst, src)
					}
				}},
			})
		})
	}
}

// BenchmarkLoopbackTCP copies 64 MiB with io.Copy over a fresh loopback
// TCP connection (the limit of every transfer over TCP), beside memcpy of
// 64 MiB (memory to memory).
func BenchmarkLoopbackTCP(b *testing.B) {
	const size = 64 << 20
	src, dst := randomBytes(size, 4), make([]byte, size)
	copy(dst, src)
	benchkit.Race(b, 1, size, []benchkit.Contender{
		{Name: "tcp-io.Copy", Batch: func() { benchkit.RawTCPCopy(b, size) }},
		{Name: "memcpy", Batch: func() { copy(dst, src) }},
	})
}

// BenchmarkXBZRLE encodes 16 seeded pairs of 4 KiB pages per pattern (the
// nine of issue 15) with delta.Encode on every path this CPU has, fastest
// first, beside memcmp and memcpy of the same pages. delta-B/page is the
// delta's mean size (0 where the page is unchanged or the delta overflows
// a page), the same on every path.
func BenchmarkXBZRLE(b *testing.B) {
	paths := slices.Clone(deltapath.Paths())
	slices.Reverse(paths)
	if paths[0] != "avx512" {
		b.Logf("no AVX-512 path here (CPU or purego build): paths %v", paths)
	}
	defer deltapath.Set(deltapath.Current())
	const pairs, reps = 16, 16 // 256 pages a batch
	for _, pat := range pagepat.All {
		b.Run(pat.Name, func(b *testing.B) {
			olds, news := pagepat.Pairs(pat, 4096, pairs, 100)
			buf := make([]byte, 0, 4096)
			page := make([]byte, 4096)
			var cs []benchkit.Contender
			for _, p := range paths {
				cs = append(cs, benchkit.Contender{Name: "xbzrle-" + p, Batch: func() {
					deltapath.Set(p)
					for range reps {
						for k := range pairs {
							out, _ := delta.Encode(buf, olds[k], news[k], 0)
							sink += len(out)
						}
					}
				}})
			}
			cs = append(cs,
				benchkit.Contender{Name: "memcmp", Batch: func() {
					for range reps {
						for k := range pairs {
							sink += bytes.Compare(olds[k], news[k])
						}
					}
				}},
				benchkit.Contender{Name: "memcpy", Batch: func() {
					for range reps {
						for k := range pairs {
							copy(page, news[k])
						}
					}
				}})
			benchkit.Race(b, pairs*reps, 4096, cs)
			total := 0
			for k := range pairs {
				out, _ := delta.Encode(buf, olds[k], news[k], 0)
				total += len(out)
			}
			b.ReportMetric(float64(total)/pairs, "delta-B/page")
		})
	}
}

// BenchmarkPrecopyIdleGuest migrates an idle guest (-guest-mib, 1 GiB by
// default, every page holding data) with pre-copy's default Config, over
// the in-memory pipe beside a memcpy of the guest, and over loopback TCP
// beside raw io.Copy of as many bytes over another loopback connection;
// each op does both of its pair, in alternating order. ns/op and MB/s are
// the migration's; pipe/memcpy and tcp/io.Copy its speed over the limit's.
// cpu-ms/op is the process's CPU time (user and system, both sides of the
// migration, getrusage) during the migration alone, and cores that over
// its wall-clock time: on a machine of C cores a migration at C cores is
// CPU-bound, below it waits on something else.
func BenchmarkPrecopyIdleGuest(b *testing.B) {
	size := *guestMiB << 20
	src, dst := idleGuest(b, size)
	ctx := context.Background()
	run := func(b *testing.B, tcp bool) {
		b.SetBytes(int64(size))
		b.ReportAllocs()
		var mig, limit, cpu time.Duration
		cpuOK := true
		var rep *livemig.Report
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			measureLimit := func() {
				t0 := time.Now()
				if tcp {
					benchkit.RawTCPCopy(b, int64(size))
				} else {
					copy(dst.Bytes(), src.Bytes())
				}
				limit += time.Since(t0)
			}
			if i%2 == 0 {
				measureLimit()
			}
			var x, y transport.Link
			if tcp {
				x, y = testkit.LinkPair(b, true)
			} else {
				x, y = transport.Pipe(4 << 20)
			}
			b.StartTimer()
			var r *livemig.Report
			w, c, ok, err := timed(func() (err error) {
				r, err = migrate(ctx, x, y, src, dst)
				return err
			})
			b.StopTimer()
			mig, cpu, cpuOK = mig+w, cpu+c, cpuOK && ok
			if err != nil {
				b.Fatal(err)
			}
			rep = r
			if i%2 == 1 {
				measureLimit()
			}
			b.StartTimer()
		}
		name := "pipe/memcpy"
		if tcp {
			name = "tcp/io.Copy"
		}
		b.ReportMetric(limit.Seconds()/mig.Seconds(), name)
		b.ReportMetric(float64(size)*float64(b.N)/limit.Seconds()/1e9, "limit-GB/s")
		b.ReportMetric(float64(rep.Downtime)/float64(time.Millisecond), "downtime-ms")
		b.ReportMetric(float64(rep.BytesSent)/1e6, "MB-sent")
		if cpuOK {
			b.ReportMetric(cpu.Seconds()*1e3/float64(b.N), "cpu-ms/op")
			b.ReportMetric(cpu.Seconds()/mig.Seconds(), "cores")
		}
	}
	b.Run("pipe", func(b *testing.B) { run(b, false) })
	b.Run("tcp", func(b *testing.B) { run(b, true) })
}

// Package bench is livemig's benchmark suite: the figures a user measures on
// their own hardware, in one place, each printed beside its limit measured in
// the same run.
//
//	go test -run '^$' -bench . ./bench/
//	go test -run '^$' -bench . ./bench/ -guest-mib 256   # a smaller guest
//
// What it measures, and against what (GB/s are 10^9 bytes a second):
//
//   - BenchmarkMemcpy: copy of a 4 KiB page (in cache) and of a 1 GiB
//     guest: the limits the others are read against.
//   - BenchmarkCRC32C: the Castagnoli CRC every transport frame carries, on
//     a 4 KiB page and a 256 KiB batch frame, beside memcpy of the same
//     bytes (crc32c/memcpy: the CRC's speed over memcpy's).
//   - BenchmarkLoopbackTCP: raw io.Copy of 64 MiB over loopback TCP, beside
//     memcpy of 64 MiB.
//   - BenchmarkXBZRLE/<pattern>: QEMU-format XBZRLE encoding (delta.Encode)
//     of 4 KiB pages changed by each of the nine patterns of issue 15, on
//     every path this CPU has (avx512, avx2, go), beside memcmp
//     (bytes.Compare, which stops at the first difference) and memcpy of the
//     same pages.
//   - BenchmarkPrecopyIdleGuest: pre-copy of an idle guest (1 GiB unless
//     -guest-mib says otherwise) through precopy.Migrate and
//     precopy.Receive, over the in-memory pipe beside a memcpy of the guest,
//     and over loopback TCP beside raw io.Copy of as many bytes; with the
//     migration's CPU time (cpu-ms/op, both sides, getrusage where there
//     is one) and the cores it kept busy (cores): the figures to compare
//     on a shared machine, where the wall clock is the other work's too.
//
// Where contenders share a benchmark, they run in turn, batch by batch, a
// different one first each round, and each is credited with its fastest
// batch: the machine's noise falls on all of them alike, so the ratios
// between them (metrics named a/b) are the figures to compare across
// machines. ns/op and MB/s are the first contender's. The suite's
// helpers live in internal/benchkit; the nine patterns in
// internal/pagepat. QEMU's own encoders are measured by
// scripts/qemu-xbzrle-bench.sh, which fetches QEMU's source at run time.
//
// Without -bench, go test runs only the suite's quick self-check.
package bench

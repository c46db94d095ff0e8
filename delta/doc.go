// Package delta implements XBZRLE, the delta encoding QEMU uses to resend a
// page that the source sent before and the guest dirtied since (Svärd et
// al., "Evaluation of delta compression techniques for efficient live
// migration of large virtual machines", VEE 2011), byte-compatible with
// QEMU's migration/xbzrle.c, and the page cache the source keeps of the pages
// it sent.
//
// # Format
//
// A delta is a sequence of (zrun, nzrun) pairs: zrun is the ULEB128 count of
// bytes that did not change, nzrun the ULEB128 count n ≥ 1 of bytes that did,
// followed by those n bytes of the new page. Only the first zrun may be 0; the
// unchanged run at the end of the page is omitted; lengths take at most two
// ULEB128 bytes (≤ 0x3FFF). [Encode] writes the canonical form, alternating
// maximal unchanged and changed runs, which is exactly what QEMU's encoders
// write, and reports [ErrUnchanged] and [ErrOverflow] exactly where QEMU's
// scalar encoder returns 0 and -1 for a destination buffer of the same size.
// [Decode] accepts exactly the deltas QEMU's decoder accepts and, unlike it,
// leaves the page untouched when it rejects one.
//
// # Page cache
//
// [Cache] is the source's store of the last version it sent of each page.
// [DirectMapped] is QEMU's policy (slot = page mod slots, a page refreshed in
// the last two dirty syncs is never evicted); [SetAssoc] is a set-associative
// cache that evicts by recency and frequency of hits, keeping the pages that
// are dirtied again and again. [Encoder] ties a cache to Encode the way QEMU's save_xbzrle_page does
// and counts hits, misses, overflows and bytes saved.
//
// # Usage
//
//	enc := delta.NewEncoder(cache, 0) // limit 0: one page
//	buf := make([]byte, 0, 4096)
//	out, res := enc.Encode(buf[:0], pageNo, syncGen, page)
//	switch res {
//	case delta.ResultDelta:     // send out as an XBZRLE page
//	case delta.ResultUnchanged: // send nothing
//	default:                    // ResultMiss, ResultOverflow: send page raw
//	}
//
// and at the destination, on the page's previous content:
//
//	if err := delta.Decode(page, out); err != nil { ... } // page unchanged
//
// # Speed
//
// Encode scans eight bytes at a time in pure Go; on amd64 it uses AVX2 for
// long runs when the CPU has it, and where the CPU has AVX-512F and BW the
// whole encoder runs in AVX-512 assembly (both detected at run time). The
// environment variable LIVEMIG_DELTA_PATH=go, avx2 or avx512, read at init,
// picks a slower path (or the best one the CPU has below the one asked
// for). Build with the purego tag to use only the Go code. Every path
// writes the same bytes, QEMU's scalar encoder's. On a Zen 5 machine the
// AVX-512 path encodes 1.7 to 4.1 times as fast as QEMU's own AVX-512
// encoder on the nine patterns of docs/BENCHMARKS.md, measured side by side
// by scripts/qemu-xbzrle-bench.sh; package bench measures every path on a
// user's machine.
package delta

//go:build qemuxbzrle && cgo && linux && amd64

// Command qemuxbzrle measures livemig's XBZRLE encoder (package delta)
// against QEMU's own encoders, the scalar xbzrle_encode_buffer and the
// AVX-512BW xbzrle_encode_buffer_avx512 of QEMU's migration/xbzrle.c, in
// one process on the same pages, and checks that livemig writes exactly
// QEMU's bytes.
//
// QEMU's code is not in livemig's repository: scripts/qemu-xbzrle-bench.sh
// fetches QEMU's source, puts migration/xbzrle.c and the few QEMU helpers
// it calls into a directory of its own and builds this command with the
// qemuxbzrle tag and that directory on the C include path. The stand-in
// headers under include/ are livemig's.
//
// Per pattern (the nine of internal/pagepat), -pairs seeded 4 KiB page
// pairs live in one page-aligned C allocation that both sides read. Each
// of -runs runs times the encoders in turn, -rounds times, each turn one
// batch over every pair (repeated so that a batch lasts at least 50 µs),
// the encoder going first changing every round; a run's figure for an
// encoder is its fastest batch, the least disturbed on a shared machine.
// The table gives the median of the runs: GB/s of page input and the
// ratio of livemig's speed to each of QEMU's, both medians of the per-run
// same-run ratios. QEMU's encoders run through a function pointer, as
// QEMU calls them, with dlen = the page size, as QEMU's ram.c does, and
// livemig's with limit 0 (one page).
//
// Byte-exactness: first on -random seeded pages of 8 to 4096 bytes (a
// multiple of 8, which QEMU's scalar encoder asserts) made of unchanged and
// changed runs of every length, then on every pair of the patterns,
// livemig's Encode must give the result
// and bytes of QEMU's scalar encoder at the page-size limit and at limits
// around the delta's length (where the overflow checks decide), and its
// delta must decode to the new page through QEMU's xbzrle_decode_buffer.
// QEMU's AVX-512 encoder may write other bytes (it splits runs at 64-byte
// blocks differently); the table counts the pairs where its output is the
// scalar encoder's, and every one of its deltas must decode to the new
// page through livemig's Decode. The command exits with status 1 if any
// check fails.
//
// livemig's path is the best this CPU has unless LIVEMIG_DELTA_PATH says
// otherwise; the script runs the command once per path.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/include
#define CONFIG_AVX512BW_OPT 1
#include "xbzrle.c"
#include "qemu_uleb.c"

static int qemu_has_avx512bw(void)
{
    return (cpuinfo_init() & CPUINFO_AVX512BW) != 0;
}

typedef int (*qemu_encoder)(uint8_t *, uint8_t *, int, uint8_t *, int);

static qemu_encoder qemu_pick(int avx512)
{
    return avx512 ? xbzrle_encode_buffer_avx512 : xbzrle_encode_buffer_int;
}

static int qemu_encode(int avx512, uint8_t *old_buf, uint8_t *new_buf,
                       int n, uint8_t *dst, int dlen)
{
    return qemu_pick(avx512)(old_buf, new_buf, n, dst, dlen);
}

// qemu_encode_batch encodes npairs consecutive pairs of n-byte pages, reps
// times, into dst, as QEMU's save_xbzrle_page does page after page.
static long qemu_encode_batch(int avx512, uint8_t *olds, uint8_t *news,
                              int npairs, int n, int reps, uint8_t *dst,
                              int dlen)
{
    qemu_encoder f = qemu_pick(avx512);
    long sum = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < npairs; i++) {
            sum += f(olds + (size_t)i * n, news + (size_t)i * n, n, dst,
                     dlen);
        }
    }
    return sum;
}

static int qemu_decode(uint8_t *src, int slen, uint8_t *dst, int dlen)
{
    return xbzrle_decode_buffer(src, slen, dst, dlen);
}
*/
import "C"

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/internal/pagepat"
	"golang.org/x/sys/cpu"
)

var (
	npairs   = flag.Int("pairs", 64, "page pairs per pattern")
	runs     = flag.Int("runs", 5, "runs per pattern; the table gives their median")
	rounds   = flag.Int("rounds", 30, "batches of each encoder per run; a run takes each one's fastest")
	pageSize = flag.Int("pagesize", 4096, "page size in bytes")
	qemuVer  = flag.String("qemu", "unknown", "the QEMU source's version, for the report")
	cflags   = flag.String("cflags", "-O2", "the C flags QEMU's code was built with, for the report")
	random   = flag.Int("random", 3000, "seeded random pages (sizes multiples of 8 up to -pagesize, runs of every length) checked for byte-exactness before the table")
	only     = flag.String("patterns", "", "comma-separated pattern names (default: all nine)")
)

// sink keeps results the compiler could otherwise drop.
var sink int

func main() {
	flag.Parse()
	ps, np := *pageSize, *npairs
	failures := 0
	fail := func(format string, args ...any) {
		if failures++; failures <= 20 {
			fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
		}
	}

	// Both pages of every pair and QEMU's buffers in C memory, page-aligned
	// (QEMU's scalar encoder asserts long alignment; guest pages are
	// page-aligned).
	area := C.aligned_alloc(4096, C.size_t(2*np*ps+2*(2*ps+4096)))
	if area == nil {
		fmt.Fprintln(os.Stderr, "out of memory")
		os.Exit(2)
	}
	defer C.free(area)
	mem := unsafe.Slice((*byte)(area), 2*np*ps+2*(2*ps+4096))
	olds, news := mem[:np*ps], mem[np*ps:2*np*ps]
	qdst := mem[2*np*ps : 2*np*ps+2*ps+4096]
	qpage := mem[2*np*ps+2*ps+4096:]
	cptr := func(b []byte) *C.uint8_t { return (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(b))) }
	page := func(buf []byte, i int) []byte { return buf[i*ps : (i+1)*ps : (i+1)*ps] }
	lbuf := make([]byte, 0, 2*ps+16)
	q512 := C.qemu_has_avx512bw() != 0

	path := os.Getenv("LIVEMIG_DELTA_PATH")
	fmt.Printf("# livemig XBZRLE encode vs QEMU %s (migration/xbzrle.c)\n\n", *qemuVer)
	fmt.Printf("- CPU: %s, %d logical CPUs; AVX2 %v, AVX-512F/BW %v/%v\n", cpuModel(), runtime.NumCPU(),
		cpu.X86.HasAVX2, cpu.X86.HasAVX512F, cpu.X86.HasAVX512BW)
	fmt.Printf("- livemig: %s, LIVEMIG_DELTA_PATH=%q (path used: %s)\n", runtime.Version(), path, livemigPath(path))
	if q512 {
		fmt.Printf("- QEMU: scalar and AVX-512BW encoders, compiled by cgo's C compiler with %s\n", *cflags)
	} else {
		fmt.Printf("- QEMU: scalar encoder only (compiled with %s): this CPU has no AVX-512BW, so QEMU's AVX-512 encoder is NOT measured\n", *cflags)
	}
	fmt.Printf("- %d pairs of %d-byte pages per pattern, %d runs (median), %d rounds per run (fastest batch)\n\n",
		np, ps, *runs, *rounds)

	// checkExact compares livemig with QEMU's scalar encoder on o→n (in C
	// memory) at the limits where the room checks decide, and checks that
	// QEMU's decoder takes livemig's deltas; it returns false on a
	// mismatch, and adds the delta's length at the page-size limit to
	// *total.
	checkExact := func(what string, o, n []byte, total *int) bool {
		ok := true
		ln := len(n)
		full, ferr := delta.Encode(lbuf[:0], o, n, 2*ln)
		lims := []int{ln, 2, 3}
		if ferr == nil {
			for l := len(full) - 2; l <= len(full)+2; l++ {
				if l >= 2 && l <= 2*ln {
					lims = append(lims, l)
				}
			}
		}
		for _, lim := range lims {
			out, err := delta.Encode(lbuf[:0], o, n, lim)
			lret := retOf(out, err)
			qret := int(C.qemu_encode(0, cptr(o), cptr(n), C.int(ln), cptr(qdst), C.int(lim)))
			if lret != qret || (qret > 0 && !bytes.Equal(out, qdst[:qret])) {
				ok = false
				fail("%s limit %d: livemig %d %s; QEMU scalar %d %s", what, lim, lret, hexHead(out), qret, hexHead(qdst[:max(qret, 0)]))
			}
			if lret > 0 {
				copy(qpage, o)
				d := int(C.qemu_decode(cptr(out), C.int(len(out)), cptr(qpage), C.int(ln)))
				if d < 0 || !bytes.Equal(qpage[:ln], n) {
					ok = false
					fail("%s limit %d: QEMU's decoder gives %d / a different page for livemig's delta", what, lim, d)
				}
			}
			if lim == ln && lret > 0 && total != nil {
				*total += lret
			}
		}
		if q512 {
			aret := int(C.qemu_encode(1, cptr(o), cptr(n), C.int(ln), cptr(qdst), C.int(ln)))
			if aret > 0 {
				pg := append([]byte(nil), o...)
				if err := delta.Decode(pg, qdst[:aret]); err != nil || !bytes.Equal(pg, n) {
					ok = false
					fail("%s: livemig's Decode of QEMU AVX-512's delta: %v", what, err)
				}
			}
		}
		return ok
	}

	// Random runs: sizes that are multiples of 8 (QEMU's scalar encoder
	// asserts it), unchanged and changed runs of lengths drawn around a
	// mean from 1 to 500 bytes.
	rng := rand.New(rand.NewPCG(15, 6))
	rexact, rsame := 0, 0
	for iter := range *random {
		ln := 8 * (1 + rng.IntN(ps/8))
		o, n := page(olds, 0)[:ln], page(news, 0)[:ln]
		for i := range o {
			o[i] = byte(rng.Uint32())
		}
		copy(n, o)
		meanZ, meanNZ := 1+rng.IntN(500), 1+rng.IntN(200)
		changed := rng.IntN(2) == 0
		for i := 0; i < ln; {
			mean := meanZ
			if changed {
				mean = meanNZ
			}
			l := 1 + int(rng.ExpFloat64()*float64(mean))
			if changed {
				for k := i; k < min(ln, i+l); k++ {
					pagepat.Flip(rng, n, k)
				}
			}
			i += l
			changed = !changed
		}
		if checkExact(fmt.Sprintf("random page %d (%d bytes)", iter, ln), o, n, nil) {
			rexact++
		}
		if q512 {
			sret := int(C.qemu_encode(0, cptr(o), cptr(n), C.int(ln), cptr(qdst), C.int(ln)))
			sout := append([]byte(nil), qdst[:max(sret, 0)]...)
			aret := int(C.qemu_encode(1, cptr(o), cptr(n), C.int(ln), cptr(qdst), C.int(ln)))
			if aret == sret && bytes.Equal(sout, qdst[:max(aret, 0)]) {
				rsame++
			}
		}
	}
	fmt.Printf("Byte-exactness on %d seeded random pages of 8 to %d bytes (runs of every length, limits around each delta's length): livemig = QEMU scalar on %d/%d",
		*random, ps, rexact, *random)
	if q512 {
		fmt.Printf("; QEMU AVX-512 = QEMU scalar on %d/%d (at the page-size limit; all of its deltas decode right)", rsame, *random)
	}
	fmt.Print(".\n\n")

	names := []string{"livemig", "qemu-scalar"}
	if q512 {
		names = append(names, "qemu-avx512")
	}
	fmt.Println("| pattern | livemig GB/s | QEMU scalar GB/s | QEMU AVX-512 GB/s | livemig / QEMU scalar | livemig / QEMU AVX-512 | livemig = QEMU scalar bytes | QEMU AVX-512 = scalar bytes | delta B/page |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")

	for _, pat := range pagepat.All {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), pat.Name) {
			continue
		}
		for i := range np {
			pagepat.PairInto(page(olds, i), page(news, i), pat, 100+uint64(i))
		}

		// Byte-exactness.
		exact, sameAVX, deltaBytes := 0, 0, 0
		for i := range np {
			o, n := page(olds, i), page(news, i)
			if checkExact(fmt.Sprintf("%s pair %d", pat.Name, i), o, n, &deltaBytes) {
				exact++
			}
			if q512 {
				sret := int(C.qemu_encode(0, cptr(o), cptr(n), C.int(ps), cptr(qdst), C.int(ps)))
				sout := append([]byte(nil), qdst[:max(sret, 0)]...)
				aret := int(C.qemu_encode(1, cptr(o), cptr(n), C.int(ps), cptr(qdst), C.int(ps)))
				if aret == sret && bytes.Equal(sout, qdst[:max(aret, 0)]) {
					sameAVX++
				}
			}
		}

		// Speed.
		lpairs := make([][2][]byte, np)
		for i := range lpairs {
			lpairs[i] = [2][]byte{page(olds, i), page(news, i)}
		}
		batch := func(which string, reps int) {
			switch which {
			case "livemig":
				for range reps {
					for _, p := range lpairs {
						out, _ := delta.Encode(lbuf[:0], p[0], p[1], 0)
						sink += len(out)
					}
				}
			case "qemu-scalar", "qemu-avx512":
				a := C.int(0)
				if which == "qemu-avx512" {
					a = 1
				}
				sink += int(C.qemu_encode_batch(a, cptr(olds), cptr(news), C.int(np), C.int(ps), C.int(reps), cptr(qdst), C.int(ps)))
			}
		}
		// reps: enough that the fastest encoder's batch lasts 50 µs.
		reps := 1
		for {
			fastest := time.Duration(1 << 62)
			for _, nm := range names {
				t0 := time.Now()
				batch(nm, reps)
				fastest = min(fastest, time.Since(t0))
			}
			if fastest >= 50*time.Microsecond || reps >= 1<<16 {
				break
			}
			reps *= 2
		}
		gbps := make([][]float64, len(names))   // [encoder][run]
		ratios := make([][]float64, len(names)) // livemig / encoder, [encoder][run]
		for range *runs {
			best := make([]time.Duration, len(names))
			for r := range *rounds {
				for k := range names {
					j := (k + r) % len(names)
					t0 := time.Now()
					batch(names[j], reps)
					if d := time.Since(t0); best[j] == 0 || d < best[j] {
						best[j] = d
					}
				}
			}
			for j := range names {
				g := float64(reps*np*ps) / float64(best[j].Nanoseconds())
				gbps[j] = append(gbps[j], g)
				ratios[j] = append(ratios[j], float64(best[j])/float64(best[0]))
			}
		}
		cell := func(j int, f func(int) string) string {
			if j < len(names) {
				return f(j)
			}
			return "not run"
		}
		g := func(j int) string { return fmt.Sprintf("%.3g", median(gbps[j])) }
		rt := func(j int) string {
			return fmt.Sprintf("**%.2f** (%.2f–%.2f)", median(ratios[j]), slices.Min(ratios[j]), slices.Max(ratios[j]))
		}
		same := cell(2, func(int) string { return fmt.Sprintf("%d/%d", sameAVX, np) })
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %d/%d | %s | %.1f |\n", pat.Name, g(0), g(1), cell(2, g),
			rt(1), cell(2, rt), exact, np, same, float64(deltaBytes)/float64(np))
	}
	fmt.Println()
	fmt.Println("GB/s of page input; ratios are livemig's speed over QEMU's in the same run: median of the runs (min–max).")
	fmt.Println("Byte-exact: livemig's result and bytes equal QEMU's scalar encoder's at the page-size limit and at limits around the delta's length, and QEMU's decoder turns each livemig delta into the new page; every QEMU AVX-512 delta decodes right through livemig's Decode.")
	if failures > 0 {
		fmt.Printf("\nFAILED: %d checks (the first 20 are printed above)\n", failures)
		os.Exit(1)
	}
}

// hexHead is b in hex, its first 32 bytes only.
func hexHead(b []byte) string {
	if len(b) > 32 {
		return fmt.Sprintf("%x… (%d bytes)", b[:32], len(b))
	}
	return fmt.Sprintf("%x", b)
}

// retOf maps Encode's result to QEMU's return value.
func retOf(out []byte, err error) int {
	switch {
	case err == nil:
		return len(out)
	case errors.Is(err, delta.ErrUnchanged):
		return 0
	case errors.Is(err, delta.ErrOverflow):
		return -1
	}
	return -2
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// livemigPath repeats delta's choice (delta/path.go): the path asked for,
// or the best one below it that this CPU has.
func livemigPath(asked string) string {
	has512 := cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasBMI1 && cpu.X86.HasBMI2
	switch {
	case (asked == "" || asked == "avx512") && has512:
		return "avx512"
	case (asked == "" || asked == "avx512" || asked == "avx2") && cpu.X86.HasAVX2:
		return "avx2"
	}
	return "go"
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

package codec

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/verify"
	"github.com/pierrec/lz4/v4"
)

// calibPages is the working set of each calibration pass: 4 MiB of 4 KiB
// pages, more than a core's L2 cache, as guest memory is rarely in cache.
const calibPages = 1024

// calibPS is the page size Calibrate measures, the unit of a CostModel.
const calibPS = 4096

// calibPasses is how many passes over the working set each cost is the
// median of.
const calibPasses = 15

// Calibrate measures this machine's per-page costs on the calling goroutine
// (one core) and returns them as a CostModel with Workers and DecodeWorkers
// 0 (one core each: set them to the cores a migration may use). Paste the
// model's String into a program, or marshal it as JSON for examples/compare
// -cost. It takes about half a second, and returns ctx's error if ctx ends
// first.
//
// The pages are like the simulator's (package sim's defaults): a page with
// data is 64-byte lines, 40 % of them random and the rest one of four words
// repeated, which LZ4 compresses about 2× (LZ4Compress); incompressible
// pages are random bytes (LZ4Reject). XBZRLEHit and XBZRLEByte are the line
// through two deltas, three changed words (the simulator's few-word write)
// and one word in ten changed, and the same for XBZRLEApply and
// XBZRLEApplyByte at the destination. Each cost is the median of 15 passes
// over 4 MiB of pages, the passes of the costs interleaved. The figures vary by some 10-20 % from run to run on
// a shared machine: take the median of a few runs (go test -run '^$'
// -bench Calibrate -count 5 ./codec prints each run's model).
func Calibrate(ctx context.Context) (CostModel, error) {
	rng := rand.New(rand.NewPCG(2012, 11))
	const ps = calibPS
	data := make([]byte, calibPages*ps)   // the simulator's kind of page
	random := make([]byte, calibPages*ps) // incompressible
	few := make([]byte, calibPages*ps)    // data with three words changed
	tenth := make([]byte, calibPages*ps)  // data with a tenth of its words changed
	zeros := make([]byte, calibPages*ps)
	page := func(b []byte, i int) []byte { return b[i*ps : (i+1)*ps : (i+1)*ps] }
	for i := range calibPages {
		calibFill(rng, page(data, i))
		for j := range page(random, i) {
			page(random, i)[j] = byte(rng.Uint32())
		}
		copy(page(few, i), page(data, i))
		for range 3 {
			calibChangeWord(rng, page(few, i))
		}
		copy(page(tenth, i), page(data, i))
		for range ps / 8 / 10 {
			calibChangeWord(rng, page(tenth, i))
		}
	}

	buf := make([]byte, ps)
	scratch := make([]byte, 0, 2*ps+16)
	var sink bool
	// timed returns a pass's time per page: fn handles page i.
	timed := func(fn func(i int)) float64 {
		t0 := time.Now()
		for i := range calibPages {
			fn(i)
		}
		return float64(time.Since(t0)) / calibPages
	}
	cache, err := delta.NewDirectMapped(delta.CacheConfig{PageSize: ps, Bytes: calibPages * ps})
	if err != nil {
		return CostModel{}, fmt.Errorf("codec: calibrate: %w", err)
	}
	enc := delta.NewEncoder(cache, 0)
	dg := verify.New(calibPages, ps)
	var lc lz4.Compressor
	blocks := make([][]byte, calibPages)
	for i := range blocks {
		b := make([]byte, lz4.CompressBlockBound(ps))
		blocks[i] = b[:lz4Compress(&lc, b, page(data, i))]
	}
	// A delta's pass: the cache holds data (put back before each pass,
	// outside the time measured); the changed pages are encoded against it.
	// Every pass that puts pages takes a generation 3 past the last one's,
	// so that the pages it replaces are old enough to go.
	var gen uint64
	var deltaBytes [2]int
	encodeDeltas := func(k int, changed []byte) float64 {
		gen += 3
		for i := range calibPages {
			_ = cache.Put(uint64(i), gen, page(data, i))
		}
		deltaBytes[k] = 0
		return timed(func(i int) {
			out, _ := enc.Encode(scratch[:0], uint64(i), gen, page(changed, i), false)
			deltaBytes[k] += len(out)
		})
	}
	// Applying a delta: read the page back, decode the delta into it, write
	// it (the original, so that the next pass starts from the same page).
	var deltas [2][][]byte
	for k, changed := range [][]byte{few, tenth} {
		deltas[k] = make([][]byte, calibPages)
		for i := range calibPages {
			deltas[k][i], _ = delta.Encode(nil, page(data, i), page(changed, i), 0)
		}
	}
	dst := slices.Clone(data)
	applyDeltas := func(k int) float64 {
		return timed(func(i int) {
			copy(buf, page(dst, i))
			_ = delta.Decode(buf, deltas[k][i])
			copy(page(dst, i), page(data, i))
		})
	}
	deltaLen := func(k int) float64 {
		n := 0
		for _, d := range deltas[k] {
			n += len(d)
		}
		return float64(n) / calibPages
	}

	var m CostModel
	var encFew, encTenth, appFew, appTenth float64
	items := []struct {
		dst  *float64
		pass func(p int) float64
	}{
		// Source.
		{&m.ZeroScan, func(int) float64 { return timed(func(i int) { sink = sink != IsZero(page(zeros, i)) }) }},
		{&m.DataScan, func(int) float64 { return timed(func(i int) { sink = sink != IsZero(page(data, i)) }) }},
		{&m.Copy, func(int) float64 { return timed(func(i int) { copy(buf, page(data, i)) }) }},
		{&m.Digest, func(int) float64 { return timed(func(i int) { dg.Update(uint64(i), page(data, i)) }) }},
		// Each pass misses on every page: its keys are new, and map to the
		// slots of the previous pass's pages, which it replaces.
		{&m.XBZRLEMiss, func(p int) float64 {
			gen += 3
			return timed(func(i int) {
				_, r := enc.Encode(scratch[:0], uint64((p+1)*calibPages+i), gen, page(data, i), false)
				sink = sink != (r == delta.ResultMiss)
			})
		}},
		{&encFew, func(int) float64 { return encodeDeltas(0, few) }},
		{&encTenth, func(int) float64 { return encodeDeltas(1, tenth) }},
		{&m.LZ4Compress, func(int) float64 {
			return timed(func(i int) { sink = sink != (lz4Compress(&lc, scratch[:MaxLZ4(ps)], page(data, i)) > 0) })
		}},
		{&m.LZ4Reject, func(int) float64 {
			return timed(func(i int) { sink = sink != (lz4Compress(&lc, scratch[:MaxLZ4(ps)], page(random, i)) > 0) })
		}},
		// Destination.
		{&m.ZeroFill, func(int) float64 { return timed(func(i int) { clear(page(zeros, i)) }) }},
		{&m.LZ4Decompress, func(int) float64 {
			return timed(func(i int) {
				n, _ := lz4Decompress(buf, blocks[i])
				sink = sink != (n == ps)
			})
		}},
		{&appFew, func(int) float64 { return applyDeltas(0) }},
		{&appTenth, func(int) float64 { return applyDeltas(1) }},
	}
	// The passes of the items interleave, so that a burst of load from
	// elsewhere spreads over all of them instead of skewing one.
	times := make([][]float64, len(items))
	for p := range calibPasses {
		for k, it := range items {
			if err := ctx.Err(); err != nil {
				return CostModel{}, fmt.Errorf("codec: calibrate: %w", err)
			}
			times[k] = append(times[k], it.pass(p))
		}
	}
	for k, it := range items {
		slices.Sort(times[k])
		*it.dst = times[k][len(times[k])/2]
	}
	m.XBZRLEByte, m.XBZRLEHit = line(float64(deltaBytes[0])/calibPages, encFew, float64(deltaBytes[1])/calibPages, encTenth)
	m.XBZRLEApplyByte, m.XBZRLEApply = line(deltaLen(0), appFew, deltaLen(1), appTenth)
	_ = sink
	return m.rounded(), nil
}

// line returns the slope and intercept (at 0) of the line through (x0, y0)
// and (x1, y1), the slope never negative.
func line(x0, y0, x1, y1 float64) (slope, at0 float64) {
	if x1 > x0 {
		slope = max(0, (y1-y0)/(x1-x0))
	}
	return slope, max(0, y0-slope*x0)
}

// rounded returns m with its costs at 3 significant digits: the
// measurements are not more precise.
func (m CostModel) rounded() CostModel {
	for _, f := range []*float64{&m.ZeroScan, &m.DataScan, &m.Copy, &m.Digest, &m.XBZRLEMiss, &m.XBZRLEHit,
		&m.XBZRLEByte, &m.LZ4Compress, &m.LZ4Reject, &m.ZeroFill, &m.LZ4Decompress, &m.XBZRLEApply, &m.XBZRLEApplyByte} {
		*f = round3(*f)
	}
	return m
}

// round3 rounds x to 3 significant digits.
func round3(x float64) float64 {
	if x == 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return x
	}
	pow := math.Pow(10, 3-math.Ceil(math.Log10(math.Abs(x))))
	return math.Round(x*pow) / pow
}

// calibFill fills p like a page of the simulator's with data: a non-zero
// header word, then 64-byte lines, 40 % random and the rest one of four
// per-page words repeated.
func calibFill(rng *rand.Rand, p []byte) {
	var w [4]uint64
	for i := range w {
		w[i] = rng.Uint64()
	}
	for l := 0; l+64 <= len(p); l += 64 {
		random := rng.Float64() < 0.4
		v := w[rng.IntN(4)]
		for j := l; j < l+64; j += 8 {
			if random {
				v = rng.Uint64()
			}
			binary.LittleEndian.PutUint64(p[j:], v)
		}
	}
	binary.LittleEndian.PutUint64(p, rng.Uint64()|1)
}

// calibChangeWord gives a random 8-byte word of p a new value.
func calibChangeWord(rng *rand.Rand, p []byte) {
	j := 8 * rng.IntN(len(p)/8)
	binary.LittleEndian.PutUint64(p[j:], binary.LittleEndian.Uint64(p[j:])+1+rng.Uint64N(1<<40))
}

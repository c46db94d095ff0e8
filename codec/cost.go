package codec

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// CostModel is what encoding and decoding a page cost the CPU, for
// simulations: a Pipeline in virtual time (Config.Clock) charges it to the
// virtual clock, so that a codec slower than the link slows the round as it
// does for real, and feeds it to adaptation (see Adapt) in place of the
// wall-clock timings it takes in the real world. Other simulated engines
// call Encode and Decode per page to charge the same costs.
//
// Costs are in nanoseconds of one core per 4096-byte page (per byte of
// delta for the XBZRLEByte fields), and scale linearly with the page size:
// a 2 MiB page costs 512 times a 4 KiB page's. A negative cost counts as 0.
// The zero CostModel charges nothing, on one worker at each end: encoding
// is free, as it was in the simulator before the model. DefaultCost is
// measured on the project's machines; Calibrate measures the machine it
// runs on.
//
// The cost of a page is the sum of its steps, decided by what the page is
// and by what the encoder did with it (an Outcome), so that the same pages
// give the same costs on every run:
//
//   - source: a zero page costs ZeroScan; a page with data DataScan, Copy
//     (the page read into a buffer and out to the socket once), Digest (the
//     end-to-end digest), then its codecs' steps: an XBZRLE miss
//     XBZRLEMiss, a hit XBZRLEHit plus XBZRLEByte per byte of delta (an
//     unchanged page has none, an overflow counts a page's worth), LZ4
//     LZ4Compress when its block was sent and LZ4Reject when it was not
//     smaller than the page;
//   - destination: a zero page costs ZeroFill; a page with data Digest and
//     its decoding: Copy for a raw page, LZ4Decompress plus Copy for an LZ4
//     block, XBZRLEApply (reading the page back, applying, writing) plus
//     XBZRLEApplyByte per byte of delta for a delta; an unchanged page sends
//     nothing and costs the destination nothing.
//
// Workers and DecodeWorkers are how many cores encode at the source and
// decode at the destination (0 means 1: QEMU's migration thread encodes on
// one core). They divide the charge only: a simulation still encodes on
// one goroutine, so that its figures do not depend on the scheduler.
//
// A CostModel is a value: it is safe to share and to copy. The methods
// take a pointer and treat nil as DefaultCost().
type CostModel struct {
	// Source (encoding), ns per 4 KiB page.
	ZeroScan    float64 `json:"zero_scan_ns"`    // IsZero over a zero page: the whole page read
	DataScan    float64 `json:"data_scan_ns"`    // IsZero over a page with data: stops at the first non-zero bytes
	Copy        float64 `json:"copy_ns"`         // a page copied once (source: read; destination: written)
	Digest      float64 `json:"digest_ns"`       // verify.Digest.Update of a page, at either end
	XBZRLEMiss  float64 `json:"xbzrle_miss_ns"`  // a cache lookup that misses, and the page cached
	XBZRLEHit   float64 `json:"xbzrle_hit_ns"`   // a hit: the page compared with its cached copy, which is updated
	XBZRLEByte  float64 `json:"xbzrle_byte_ns"`  // per byte of delta written, on top of XBZRLEHit
	LZ4Compress float64 `json:"lz4_compress_ns"` // LZ4 on a page whose block is smaller (sent)
	LZ4Reject   float64 `json:"lz4_reject_ns"`   // LZ4 on a page whose block is not smaller (raw sent)

	// Destination (decoding), ns per 4 KiB page; Copy and Digest too.
	ZeroFill        float64 `json:"zero_fill_ns"`         // a page zeroed
	LZ4Decompress   float64 `json:"lz4_decompress_ns"`    // an LZ4 block decompressed
	XBZRLEApply     float64 `json:"xbzrle_apply_ns"`      // a page read back, a delta applied, the page written
	XBZRLEApplyByte float64 `json:"xbzrle_apply_byte_ns"` // per byte of delta, on top of XBZRLEApply

	// Workers encode at the source, DecodeWorkers decode at the
	// destination; 0 means 1.
	Workers       int `json:"workers,omitempty"`
	DecodeWorkers int `json:"decode_workers,omitempty"`
}

// defaultCost is DefaultCost's model.
//
// Measured with Calibrate (go test -run '^$' -bench Calibrate -count 5
// ./codec) on the project's machines: a shared 2-core AMD EPYC VM, go1.26,
// the median of 22 runs taken over an hour while other work ran beside
// them (each run's figures within some 20 % of these, LZ4 once 1.9×). One
// core compresses a page with data in about 4.7 µs all steps counted
// (0.9 GB/s), as fast as a 7 Gbit/s link carries it raw.
var defaultCost = CostModel{
	ZeroScan:        124,
	DataScan:        21,
	Copy:            99,
	Digest:          202,
	XBZRLEMiss:      144,
	XBZRLEHit:       254,
	XBZRLEByte:      1.8,
	LZ4Compress:     4360,
	LZ4Reject:       2150,
	ZeroFill:        192,
	LZ4Decompress:   978,
	XBZRLEApply:     380,
	XBZRLEApplyByte: 2.05,
}

// DefaultCost returns the cost model measured on the project's machines
// (see Calibrate), on one worker at each end: the model a nil *CostModel
// stands for.
func DefaultCost() CostModel { return defaultCost }

// XBZRLEStep is what the XBZRLE cache did with a page.
type XBZRLEStep uint8

// The steps of XBZRLE.
const (
	// XBZRLENone: XBZRLE did not look the page up (off, round 1, or a zero
	// page).
	XBZRLENone XBZRLEStep = iota
	// XBZRLEMiss: not cached (it is now, except in the final round); the
	// page went on to LZ4 or raw.
	XBZRLEMiss
	// XBZRLEDelta: a delta of Outcome.DeltaBytes was sent.
	XBZRLEDelta
	// XBZRLEUnchanged: the page equals its cached copy; nothing was sent.
	XBZRLEUnchanged
	// XBZRLEOverflow: the delta would not fit in a page; the page went on
	// to LZ4 or raw.
	XBZRLEOverflow
)

// LZ4Step is what LZ4 did with a page.
type LZ4Step uint8

// The steps of LZ4.
const (
	// LZ4None: LZ4 did not run (off, or a zero page or a delta was sent).
	LZ4None LZ4Step = iota
	// LZ4Sent: the block was smaller than the page and was sent.
	LZ4Sent
	// LZ4Rejected: the block was not smaller; the page went raw.
	LZ4Rejected
)

// Outcome is what the encoder did with one page: the path whose steps a
// CostModel charges. The zero Outcome is a page with data sent raw.
type Outcome struct {
	// Zero: the page is all zeros, sent as a zero page; nothing else ran.
	Zero bool
	// XBZRLE is the XBZRLE cache's answer, when it was asked.
	XBZRLE XBZRLEStep
	// DeltaBytes is the delta's length, with XBZRLEDelta.
	DeltaBytes int
	// LZ4 is what LZ4 did, when it ran.
	LZ4 LZ4Step
	// NoDigest: the page was not hashed into an end-to-end digest.
	NoDigest bool
}

// Encode returns what encoding a page of pageSize bytes with outcome o
// costs the source, on one core. A nil m is DefaultCost().
func (m *CostModel) Encode(o Outcome, pageSize int) time.Duration {
	return psToDuration(m.encodePs(o, pageSize))
}

// Decode returns what decoding and applying a page of pageSize bytes with
// outcome o costs the destination, on one core. A nil m is DefaultCost().
func (m *CostModel) Decode(o Outcome, pageSize int) time.Duration {
	return psToDuration(m.decodePs(o, pageSize))
}

// Stage returns the time a page with outcome o takes in each of the two CPU
// stages of a pipelined stream (see Config.Clock): its encode time divided
// by Workers and its decode time divided by DecodeWorkers. A stream of
// pages moves no faster than its slowest stage: the link, or one of these.
// A nil m is DefaultCost().
func (m *CostModel) Stage(o Outcome, pageSize int) (encode, decode time.Duration) {
	e, d := m.stagePs(o, pageSize)
	return psToDuration(e), psToDuration(d)
}

func (m *CostModel) model() *CostModel {
	if m == nil {
		return &defaultCost
	}
	return m
}

// stagePs is Stage in picoseconds.
func (m *CostModel) stagePs(o Outcome, pageSize int) (encode, decode int64) {
	m = m.model()
	return m.encodePs(o, pageSize) / int64(max(m.Workers, 1)), m.decodePs(o, pageSize) / int64(max(m.DecodeWorkers, 1))
}

// encodePs is Encode in picoseconds, which the pipeline adds up without
// rounding each page to a nanosecond.
func (m *CostModel) encodePs(o Outcome, pageSize int) int64 {
	m = m.model()
	scale := float64(pageSize) / 4096
	if o.Zero {
		return ps(pos(m.ZeroScan) * scale)
	}
	ns := (pos(m.DataScan) + pos(m.Copy)) * scale
	if !o.NoDigest {
		ns += pos(m.Digest) * scale
	}
	return ps(ns) + m.xbzrlePs(o, pageSize) + m.lz4Ps(o, pageSize)
}

// xbzrlePs is the cost of o's XBZRLE step at the source.
func (m *CostModel) xbzrlePs(o Outcome, pageSize int) int64 {
	scale := float64(pageSize) / 4096
	switch o.XBZRLE {
	case XBZRLEMiss:
		return ps(pos(m.XBZRLEMiss) * scale)
	case XBZRLEDelta:
		return ps(pos(m.XBZRLEHit)*scale + pos(m.XBZRLEByte)*float64(o.DeltaBytes))
	case XBZRLEUnchanged:
		return ps(pos(m.XBZRLEHit) * scale)
	case XBZRLEOverflow:
		return ps(pos(m.XBZRLEHit)*scale + pos(m.XBZRLEByte)*float64(pageSize))
	}
	return 0
}

// lz4Ps is the cost of o's LZ4 step at the source.
func (m *CostModel) lz4Ps(o Outcome, pageSize int) int64 {
	scale := float64(pageSize) / 4096
	switch o.LZ4 {
	case LZ4Sent:
		return ps(pos(m.LZ4Compress) * scale)
	case LZ4Rejected:
		return ps(pos(m.LZ4Reject) * scale)
	}
	return 0
}

// decodePs is Decode in picoseconds.
func (m *CostModel) decodePs(o Outcome, pageSize int) int64 {
	m = m.model()
	scale := float64(pageSize) / 4096
	if o.Zero {
		return ps(pos(m.ZeroFill) * scale)
	}
	var ns float64
	switch {
	case o.XBZRLE == XBZRLEUnchanged:
		return 0
	case o.XBZRLE == XBZRLEDelta:
		ns = pos(m.XBZRLEApply)*scale + pos(m.XBZRLEApplyByte)*float64(o.DeltaBytes)
	case o.LZ4 == LZ4Sent:
		ns = (pos(m.LZ4Decompress) + pos(m.Copy)) * scale
	default:
		ns = pos(m.Copy) * scale
	}
	if !o.NoDigest {
		ns += pos(m.Digest) * scale
	}
	return ps(ns)
}

// pos is x, or 0 when x is negative or NaN.
func pos(x float64) float64 {
	if x > 0 {
		return x
	}
	return 0
}

// ps converts nanoseconds to whole picoseconds; a negative or NaN cost is
// 0, a huge one an hour.
func ps(ns float64) int64 {
	if !(ns > 0) {
		return 0
	}
	return int64(math.Round(min(float64(ns)*1e3, float64(time.Hour)*1e3)))
}

func psToDuration(p int64) time.Duration { return time.Duration((p + 500) / 1000) }

// String returns the model as Go source on one line, a CostModel literal
// to paste into a program (Calibrate's output).
func (m CostModel) String() string {
	var b strings.Builder
	b.WriteString("codec.CostModel{")
	sep := ""
	f := func(name string, v float64) {
		fmt.Fprintf(&b, "%s%s: %s", sep, name, strconv.FormatFloat(v, 'g', -1, 64))
		sep = ", "
	}
	f("ZeroScan", m.ZeroScan)
	f("DataScan", m.DataScan)
	f("Copy", m.Copy)
	f("Digest", m.Digest)
	f("XBZRLEMiss", m.XBZRLEMiss)
	f("XBZRLEHit", m.XBZRLEHit)
	f("XBZRLEByte", m.XBZRLEByte)
	f("LZ4Compress", m.LZ4Compress)
	f("LZ4Reject", m.LZ4Reject)
	f("ZeroFill", m.ZeroFill)
	f("LZ4Decompress", m.LZ4Decompress)
	f("XBZRLEApply", m.XBZRLEApply)
	f("XBZRLEApplyByte", m.XBZRLEApplyByte)
	if m.Workers != 0 {
		fmt.Fprintf(&b, ", Workers: %d", m.Workers)
	}
	if m.DecodeWorkers != 0 {
		fmt.Fprintf(&b, ", DecodeWorkers: %d", m.DecodeWorkers)
	}
	b.WriteString("}")
	return b.String()
}

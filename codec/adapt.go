package codec

import (
	"fmt"
	"math"
)

// Codecs says which of the optional codecs are on. Zero-page detection is
// always on.
type Codecs struct {
	XBZRLE bool
	LZ4    bool
}

// String names the codecs on: "xbzrle+lz4", "xbzrle", "lz4" or "none".
func (c Codecs) String() string {
	switch {
	case c.XBZRLE && c.LZ4:
		return "xbzrle+lz4"
	case c.XBZRLE:
		return "xbzrle"
	case c.LZ4:
		return "lz4"
	}
	return "none"
}

// CodecFacts is what one codec cost and saved, per byte of page input (all
// the pages submitted in the window measured, zero pages included).
type CodecFacts struct {
	// Known is false when the codec has not run yet (XBZRLE does not run
	// in round 1); Adapt then leaves it as it is.
	Known bool
	// NsPerByte is the worker time spent in the codec, in nanoseconds per
	// byte of input: 1e9/NsPerByte is one worker's encode rate.
	NsPerByte float64
	// SavedPerByte is the wire bytes the codec saved per byte of input.
	SavedPerByte float64
}

// Facts are the measurements Adapt decides on.
type Facts struct {
	// Workers is how many workers encode in parallel.
	Workers int
	// LinkBytesPerSec is the link's capacity in wire bytes per second. 0,
	// a negative value, NaN or +Inf mean unknown: nothing changes.
	LinkBytesPerSec float64
	// BaseWire is the wire bytes per byte of input with no optional codec
	// (record headers and raw pages; zero pages cost only a header).
	BaseWire float64
	// BaseNsPerByte is the worker time every choice spends besides the
	// codecs (the zero check, copies, the digest), in nanoseconds per byte
	// of input. The real pipeline does not time it and leaves it 0; in
	// virtual time it comes from the cost model.
	BaseNsPerByte float64
	// XBZRLE and LZ4 are the codecs' figures; for a codec that was off in
	// the window measured, the last figures it had when on.
	XBZRLE, LZ4 CodecFacts
}

// Decision is what Adapt chose and why.
type Decision struct {
	Codecs
	// Throughput is the expected page input rate, in bytes per second,
	// with Codecs on.
	Throughput float64
	// Reason says why in words, for the log.
	Reason string
}

// Hysteresis is how much better, as a fraction, another choice of codecs
// must promise to be before Adapt switches to it: 0.1 means 10 % more page
// throughput. It keeps the choice from flapping between rounds.
const Hysteresis = 0.1

// Adapt decides which codecs to use next, from the facts measured while cur
// was on; allowed is what the configuration enables.
//
// A set of codecs moves pages at min(W·E, L·r) bytes of input per second,
// where W·E is the workers' combined encode rate (W × 1e9 / the
// BaseNsPerByte plus the NsPerByte of the codecs on), L the link's
// capacity and r the compression ratio (wire bytes without the codecs over
// wire bytes with them); without codecs the rate is L (times the zero
// pages' gain, common to every choice), or W × 1e9 / BaseNsPerByte if that
// is less. Compression pays only when min(W·E, L·r) > L: it is turned down
// when the link is faster than the encoders. The choices are tried in a fixed order
// of precedence — both on, XBZRLE alone, none (LZ4 alone only when XBZRLE is
// not allowed) — so LZ4, the costlier and, on pages sent before, the less
// effective, is turned off before XBZRLE. Adapt switches only when the best
// choice promises more than (1+Hysteresis) times cur's rate, and never
// flips a codec whose facts are not Known. Encoding that costs nothing
// (NsPerByte 0, as in a simulation without a cost model) never loses, so it
// is never turned off. Adapt sees the source's side only, as the real
// pipeline does: it cannot measure the destination's decoders.
//
// Adapt is a pure function: the Pipeline calls it from ObserveLink.
func Adapt(f Facts, cur, allowed Codecs) Decision {
	cur.XBZRLE = cur.XBZRLE && allowed.XBZRLE
	cur.LZ4 = cur.LZ4 && allowed.LZ4
	link := f.LinkBytesPerSec
	if !(link > 0) || math.IsInf(link, 1) || !(f.BaseWire > 0) {
		return Decision{Codecs: cur, Throughput: math.NaN(), Reason: "link speed unknown"}
	}
	var cands []Codecs
	switch {
	case allowed.XBZRLE && allowed.LZ4:
		cands = []Codecs{{true, true}, {true, false}, {false, false}}
	case allowed.XBZRLE:
		cands = []Codecs{{true, false}, {false, false}}
	case allowed.LZ4:
		cands = []Codecs{{false, true}, {false, false}}
	default:
		return Decision{Codecs: cur, Throughput: f.rate(cur), Reason: "no codec enabled"}
	}
	curRate := f.rate(cur)
	best, bestRate := cur, curRate
	for _, c := range cands {
		if (c.XBZRLE != cur.XBZRLE && !f.XBZRLE.Known) || (c.LZ4 != cur.LZ4 && !f.LZ4.Known) {
			continue
		}
		if r := f.rate(c); r > bestRate {
			best, bestRate = c, r
		}
	}
	if best == cur || bestRate <= curRate*(1+Hysteresis) {
		return Decision{Codecs: cur, Throughput: curRate,
			Reason: fmt.Sprintf("%s: %.3g B/s, no choice promises %.0f%% more", cur, curRate, 100*Hysteresis)}
	}
	return Decision{Codecs: best, Throughput: bestRate,
		Reason: fmt.Sprintf("%s: %.3g B/s beats %s: %.3g B/s (link %.3g B/s, %d workers)",
			best, bestRate, cur, curRate, link, f.Workers)}
}

// rate is the expected page input rate with codecs c on.
func (f *Facts) rate(c Codecs) float64 {
	wire, ns := f.BaseWire, max(f.BaseNsPerByte, 0)
	if c.XBZRLE {
		wire -= f.XBZRLE.SavedPerByte
		ns += f.XBZRLE.NsPerByte
	}
	if c.LZ4 {
		wire -= f.LZ4.SavedPerByte
		ns += f.LZ4.NsPerByte
	}
	wire = max(wire, f.BaseWire*1e-6) // savings never exceed what was sent
	r := f.LinkBytesPerSec / wire
	if ns > 0 {
		r = min(r, float64(max(f.Workers, 1))*1e9/ns)
	}
	return r
}

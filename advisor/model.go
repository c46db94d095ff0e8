package advisor

import (
	"math"
	"time"

	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// stage is what a batch of pages takes of the three stages of a pipelined
// stream, in seconds: the wire, the source's encoders, the destination's
// decoders. The batch takes as long as its slowest stage.
type stage struct{ wire, enc, dec float64 }

func (s stage) time() float64 { return max(s.wire, s.enc, s.dec) }

func (s *stage) plus(t stage) { s.wire += t.wire; s.enc += t.enc; s.dec += t.dec }

// env is what the models share: the profile, the link and the targets,
// with defaults filled in.
type env struct {
	p      Profile
	ps     float64
	pages  float64
	bw     float64 // bytes per second
	lat    float64 // seconds, one way
	cost   *codec.CostModel
	target Target
}

// pagesOf returns the stage times of count pages with outcome o, each
// bytes of record data (the record's header added here).
func (e *env) pagesOf(count, bytes float64, o codec.Outcome) stage {
	if count <= 0 {
		return stage{}
	}
	enc, dec := e.cost.Stage(o, int(e.ps))
	return stage{
		wire: count * (bytes + transport.RecordOverhead) / e.bw,
		enc:  count * enc.Seconds(),
		dec:  count * dec.Seconds(),
	}
}

// data returns the stage times and bytes of count pages with data sent
// whole, raw or as LZ4 blocks, after XBZRLE's step x (none, miss or
// overflow).
func (e *env) data(count float64, lz4 bool, x codec.XBZRLEStep) (stage, float64) {
	if !lz4 {
		return e.pagesOf(count, e.ps, codec.Outcome{XBZRLE: x}), count * (e.ps + transport.RecordOverhead)
	}
	b := min(e.p.LZ4Bytes, e.ps)
	if b <= 0 {
		b = e.ps
	}
	// Pages LZ4 cannot shrink go raw; the profile's mean counts them whole,
	// so charge every page a compression and the mean block.
	st := e.pagesOf(count, b, codec.Outcome{XBZRLE: x, LZ4: codec.LZ4Sent})
	return st, count * (b + transport.RecordOverhead)
}

// zeros returns the stage times and bytes of count zero pages.
func (e *env) zeros(count float64) (stage, float64) {
	return e.pagesOf(count, 0, codec.Outcome{Zero: true}), count * transport.RecordOverhead
}

// preCopyPlan is a pre-copy variant: its codecs and its non-convergence
// policy.
type preCopyPlan struct {
	xbzrle, lz4, throttle bool
}

// round returns what sending dirty pages in a round k >= 2 takes, and its
// bytes: hit is the share of them found in the XBZRLE cache.
func (e *env) round(dirty, hit float64, pl preCopyPlan, lz4 bool) (stage, float64) {
	var st stage
	var bytes float64
	if !pl.xbzrle {
		return e.data(dirty, lz4, codec.XBZRLENone)
	}
	hits, miss := dirty*hit, dirty*(1-hit)
	over := hits * e.p.DeltaOverflow
	same := hits * e.p.DeltaUnchanged
	deltas := hits - over - same
	s, b := e.data(miss, lz4, codec.XBZRLEMiss)
	st.plus(s)
	bytes += b
	s, b = e.data(over, lz4, codec.XBZRLEOverflow)
	st.plus(s)
	bytes += b
	db := max(e.p.DeltaBytes, 1)
	st.plus(e.pagesOf(deltas, db, codec.Outcome{XBZRLE: codec.XBZRLEDelta, DeltaBytes: int(db)}))
	bytes += deltas * (db + transport.RecordOverhead)
	st.plus(e.pagesOf(same, 0, codec.Outcome{XBZRLE: codec.XBZRLEUnchanged}))
	return st, bytes
}

// best returns the quicker of a round with and without LZ4 when both are
// allowed: the pipeline's adaptation turns LZ4 off where it slows a round.
func (e *env) best(f func(lz4 bool) (stage, float64), lz4 bool) (stage, float64) {
	s, b := f(false)
	if !lz4 {
		return s, b
	}
	s4, b4 := f(true)
	if s4.time() < s.time()*(1+codec.Hysteresis) {
		return s4, b4
	}
	return s, b
}

// preCopy predicts a pre-copy migration round by round, deciding each
// stop with package precopy's own Policy on the predicted facts.
func (e *env) preCopy(pl preCopyPlan) Prediction {
	cfg := precopy.Config{DowntimeTarget: e.target.Downtime, MaxRounds: e.target.MaxRounds}
	if pl.throttle {
		cfg.OnNonConvergence = precopy.Throttle
	}
	pol := precopy.NewPolicy(cfg)
	classes := e.p.Classes
	cachePages := float64(e.target.CacheBytes) / e.ps
	var pred Prediction
	var total, bytes float64
	speed := 1.0
	// Round 1: every page.
	z := e.p.ZeroShare * e.pages
	st, b := e.best(func(lz4 bool) (stage, float64) {
		s, b := e.data(e.pages-z, lz4, codec.XBZRLENone)
		sz, bz := e.zeros(z)
		s.plus(sz)
		return s, b + bz
	}, pl.lz4)
	roundT := st.time()
	sent := e.pages
	// seen is the guest's running time in rounds 1..k-1 (scaled by the
	// throttle): a page dirtied then was sent in rounds 2..k, and so cached
	// by XBZRLE (round 1 caches nothing), when round k+1 finds it dirty
	// again.
	var seen float64
	var prevT float64
	for k := 1; ; k++ {
		total += roundT
		bytes += b
		g := roundT * speed // the guest's running time in the round
		dirty := dirtied(classes, g)
		d := pol.Decide(precopy.RoundFacts{Round: k, SentBytes: uint64(b), SentPages: uint64(sent),
			Planned: uint64(sent), Duration: secs(roundT), DirtyPages: uint64(math.Ceil(dirty)), PageSize: int(e.ps)})
		if k > 1 {
			seen += prevT
		}
		prevT = g
		if d.Throttle > 0 {
			speed = 1 - d.Throttle
			pred.Throttle = d.Throttle
		}
		hit := 0.0
		if pl.xbzrle && k >= 2 {
			hit = hitShare(classes, g, seen, cachePages)
		}
		if d.Action != precopy.Continue {
			pred.Rounds = k + 1
			pred.Converged = d.Converged
			st, fb := e.best(func(lz4 bool) (stage, float64) { return e.round(dirty, hit, pl, lz4) }, pl.lz4)
			down := st.time() + e.stateTime() + e.switchover()
			pred.Downtime = secs(down)
			pred.Total = secs(total + down)
			pred.BytesSent = uint64(bytes + fb + float64(e.target.StateBytes))
			pred.Reason = d.Reason
			return pred
		}
		st, b = e.best(func(lz4 bool) (stage, float64) { return e.round(dirty, hit, pl, lz4) }, pl.lz4)
		roundT, sent = st.time(), dirty
	}
}

// stateTime is the device state's time on the wire.
func (e *env) stateTime() float64 {
	return float64(e.target.StateBytes) / e.bw
}

// switchover is the fixed cost of a hand-over beyond the bytes: four
// crossings of the link (the last bytes arriving, the destination's Ready,
// the source's Commit, the destination's Resumed back at the source, where
// the downtime ends).
func (e *env) switchover() float64 { return 4 * e.lat }

// postCopy predicts post-copy (after bulk pre-copy rounds when hybrid):
// the pause, the state, then the push of every page not yet at the
// destination while its vCPU faults on those it touches first.
func (e *env) postCopy(hybrid, lz4 bool) Prediction {
	var pred Prediction
	var before, bytes float64
	classes := e.p.Classes
	stale := func(RateClass) float64 { return 1 }
	z := e.p.ZeroShare * e.pages
	var push stage
	if hybrid {
		// The bulk round, raw, then the pages it left dirty.
		s, b := e.data(e.pages-z, false, codec.XBZRLENone)
		sz, bz := e.zeros(z)
		s.plus(sz)
		before, bytes = s.time(), b+bz
		t1 := before
		stale = func(c RateClass) float64 { return -math.Expm1(-c.Rate * t1) }
		left := dirtied(classes, t1)
		push, b = e.data(left, lz4, codec.XBZRLENone)
		bytes += b
		pred.Rounds = 2
	} else {
		s, b := e.data(e.pages-z, lz4, codec.XBZRLENone)
		sz, bz := e.zeros(z)
		s.plus(sz)
		push, bytes = s, b+bz
		pred.Rounds = 1
	}
	down := e.stateTime() + e.switchover()
	P := push.time()
	pageT := e.pagesOf(1, e.ps, codec.Outcome{}).time()
	perFault := 2*e.lat + 2*pageT
	faults, wait := faultWait(classes, stale, P, perFault)
	pred.Converged = true
	pred.Downtime = secs(down)
	pred.Total = secs(before + down + P + e.lat)
	pred.BytesSent = uint64(bytes + float64(e.target.StateBytes))
	pred.Faults = uint64(faults)
	pred.FaultWait = secs(wait)
	return pred
}

// prepageGain scales how much pre-paging saves with Locality.
const prepageGain = 32.0

// faultWait integrates the destination vCPU's demand faults over a push
// of P seconds, in ascending order, so that a page not yet pushed at time u
// has arrived with probability u/P: the vCPU first touches class-c pages at
// Pages·Rate·exp(-Rate·τ) per second of its running time τ, a share
// stale(c) of them not at the destination before the push, and every fault
// stops it for perFault seconds.
func faultWait(classes []RateClass, stale func(RateClass) float64, P, perFault float64) (faults, wait float64) {
	if P <= 0 {
		return 0, 0
	}
	const steps = 2000
	du := P / steps
	var tau float64
	for i := range steps {
		u := (float64(i) + 0.5) * du
		var g float64
		for _, c := range classes {
			seq := c.Sequential
			g += c.Pages * c.Rate * math.Exp(-c.Rate*tau) * stale(c) * (1 - seq + seq/prepageGain)
		}
		g *= 1 - u/P
		dtau := du / (1 + g*perFault)
		faults += g * dtau
		tau += dtau
	}
	return faults, faults * perFault
}

// dirtied is Profile.Dirtied over t seconds of guest time.
func dirtied(classes []RateClass, t float64) float64 {
	var w float64
	for _, c := range classes {
		w += c.Pages * -math.Expm1(-c.Rate*t)
	}
	return w
}

// hitShare is the share of the pages dirtied over a round of t seconds
// (guest time) that XBZRLE finds cached: those also dirtied in the
// earlier seen seconds since round 1 (sent, and cached, then), at most
// cachePages of them.
func hitShare(classes []RateClass, t, seen, cachePages float64) float64 {
	var dirty, hits, cached float64
	for _, c := range classes {
		q := -math.Expm1(-c.Rate * t)
		h := -math.Expm1(-c.Rate * seen)
		dirty += c.Pages * q
		hits += c.Pages * q * h
		cached += c.Pages * h
	}
	if dirty == 0 {
		return 0
	}
	share := hits / dirty
	if cached > cachePages && cached > 0 {
		share *= cachePages / cached
	}
	return share
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

package advisor

import (
	"fmt"
	"time"

	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
)

// Switch is what an adaptive pre-copy does after a round.
type Switch int

const (
	// Stay: pre-copy converges as it runs; change nothing.
	Stay Switch = iota
	// SwitchCompress turns on the codecs of AdaptDecision.Codecs.
	SwitchCompress
	// SwitchThrottle slows the guest's vCPUs (auto-converge).
	SwitchThrottle
	// SwitchPostCopy hands the guest over now and sends what is left by
	// post-copy: a hybrid decided on the way.
	SwitchPostCopy
)

func (s Switch) String() string {
	switch s {
	case Stay:
		return "stay"
	case SwitchCompress:
		return "compress"
	case SwitchThrottle:
		return "throttle"
	case SwitchPostCopy:
		return "post-copy"
	}
	return fmt.Sprintf("Switch(%d)", int(s))
}

// Progress is what an adaptive pre-copy knows after a round.
type Progress struct {
	// Round is the round that just ended, as precopy.Policy is fed it.
	Round precopy.RoundFacts
	// Codecs are the codecs on; Throttle the throttle in force (0..1).
	Codecs   codec.Codecs
	Throttle float64
}

// AdaptDecision is Adapt's answer.
type AdaptDecision struct {
	Switch Switch
	// Codecs, with SwitchCompress, are the codecs to turn on.
	Codecs codec.Codecs
	// Converges is the prediction for pre-copy as it runs: it meets the
	// downtime target within Rounds more rounds.
	Converges bool
	Rounds    int
	// Expected is the downtime if pre-copy stopped now.
	Expected time.Duration
	Reason   string
}

// Adapt decides, after a round of pre-copy, whether the migration as it
// runs will converge, and if it will not, what to switch to in time: what
// the advisor would pick for the guest of profile p over l among what is
// not already in force, by objective o. It is a pure function.
//
// The prediction takes the round's measured rate (its bytes over its
// time) and its pages' mean size on the wire, and runs the rounds ahead:
// each sends what the last left dirty, and leaves dirty what p says a
// round of that length dirties (slowed by the throttle), or, with no
// profile (p.Pages == 0), the round's own dirtying rate times the length.
// It converges if some round's rest fits the target at the measured rate
// before t.MaxRounds; it does not if the dirty set stops shrinking by a
// tenth a round (precopy's stall rule).
//
// Not converging, the choices are ranked by o with the advisor's
// predictions: XBZRLE and LZ4 (those not on yet), auto-converge (unless
// throttling already), post-copy for what is left (unless o is
// NoPostCopy). With no profile: post-copy if allowed, else compression if
// off, else throttle.
//
// Adaptive is the engine that acts on it (precopy.Config.Decider, with
// hybrid.Config.Adaptive for the hand-off to post-copy).
func Adapt(pr Progress, p Profile, l Link, t Target, o Objective) AdaptDecision {
	t = t.norm()
	f := pr.Round
	var d AdaptDecision
	if f.Duration <= 0 || f.SentBytes == 0 || f.PageSize <= 0 {
		d.Switch, d.Converges, d.Reason = Stay, true, "round took no measurable time"
		return d
	}
	rate := float64(f.SentBytes) / f.Duration.Seconds() // bytes per second
	perPage := float64(f.SentBytes) / float64(max(f.SentPages, 1))
	left := float64(f.DirtyPages)
	d.Expected = secs(left * float64(f.PageSize) / rate)
	fits := func(pages float64) bool { return secs(pages*float64(f.PageSize)/rate) <= t.Downtime }
	speed := 1 - pr.Throttle
	dirtyRate := float64(f.DirtyPages) / f.Duration.Seconds() // with no profile
	havePlan := p.Pages > 0 && p.Validate() == nil
	converges, rounds := false, 0
	for k := 1; f.Round+k <= t.MaxRounds; k++ {
		if fits(left) {
			converges, rounds = true, k
			break
		}
		dur := left * perPage / rate
		next := dirtyRate * dur * speed
		if havePlan {
			next = p.Dirtied(secs(dur * speed))
		}
		if next > 0.9*left {
			break // a stall: the guest dirties about what the round sends
		}
		left = next
	}
	d.Converges, d.Rounds = converges, rounds
	if converges {
		d.Switch = Stay
		d.Reason = fmt.Sprintf("converges: the rest fits the %v target at %s in %d more round(s)", t.Downtime, fmtBits(8*rate), rounds)
		return d
	}
	why := fmt.Sprintf("does not converge: %d pages left (%v at %s), the guest dirtying about as much as a round sends",
		f.DirtyPages, d.Expected.Round(time.Millisecond), fmtBits(8*rate))
	allCodecs := codec.Codecs{XBZRLE: true, LZ4: true}
	if !havePlan {
		switch {
		case o != NoPostCopy:
			d.Switch = SwitchPostCopy
		case pr.Codecs != allCodecs:
			d.Switch, d.Codecs = SwitchCompress, allCodecs
		default:
			d.Switch = SwitchThrottle
		}
		d.Reason = why + "; no profile: " + d.Switch.String()
		return d
	}
	preds, err := Predict(p, l, t)
	if err != nil {
		d.Switch, d.Reason = SwitchThrottle, why+"; "+err.Error()
		return d
	}
	type option struct {
		s      Switch
		codecs codec.Codecs
		pred   Prediction
	}
	var opts []option
	for _, pr2 := range preds {
		switch pr2.Algorithm {
		case "precopy-xbzrle", "precopy-lz4", "precopy-xbzrle-lz4":
			c := codec.Codecs{XBZRLE: pr2.Algorithm != "precopy-lz4", LZ4: pr2.Algorithm != "precopy-xbzrle"}
			if (c.XBZRLE && !pr.Codecs.XBZRLE) || (c.LZ4 && !pr.Codecs.LZ4) {
				opts = append(opts, option{SwitchCompress, codec.Codecs{XBZRLE: c.XBZRLE || pr.Codecs.XBZRLE, LZ4: c.LZ4 || pr.Codecs.LZ4}, pr2})
			}
		case "precopy-throttle":
			if pr.Throttle == 0 {
				opts = append(opts, option{s: SwitchThrottle, pred: pr2})
			}
		case "hybrid", "postcopy-preempt", "postcopy-preempt-lz4":
			if o != NoPostCopy {
				opts = append(opts, option{s: SwitchPostCopy, pred: pr2})
			}
		}
	}
	if len(opts) == 0 {
		d.Switch, d.Reason = SwitchThrottle, why+"; nothing else left to switch to"
		return d
	}
	best := opts[0]
	for _, op := range opts[1:] {
		if compare(o, op.pred, best.pred) < 0 {
			best = op
		}
	}
	d.Switch, d.Codecs = best.s, best.codecs
	d.Reason = fmt.Sprintf("%s; switch to %s, as the advisor would pick %s (predicted total %v + fault wait %v, downtime %v)",
		why, best.s, best.pred.Algorithm, best.pred.Total.Round(time.Millisecond), best.pred.FaultWait.Round(time.Millisecond),
		best.pred.Downtime.Round(time.Millisecond/10))
	if best.s == SwitchCompress {
		d.Reason += ": " + best.codecs.String()
	}
	return d
}

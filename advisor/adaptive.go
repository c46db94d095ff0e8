package advisor

import (
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
)

// AdaptiveConfig configures an Adaptive decider.
type AdaptiveConfig struct {
	// Profile, Link, Target and Objective are Adapt's. A zero Profile
	// (not observed) makes Adapt judge by each round's own dirtying rate.
	Profile   Profile
	Link      Link
	Target    Target
	Objective Objective
	// Codecs are the codecs the pre-copy pipeline may turn on (its
	// codec.Config's, usually with StartOff); Adapt's choice of another is
	// not acted on.
	Codecs codec.Codecs
	// Throttle says the VM implements livemig.Throttler; without it a
	// choice of throttling is not acted on.
	Throttle bool
}

// Adaptive is pre-copy's Decider (precopy.Config.Decider) that acts on
// Adapt: the adaptive engine. After each round it asks precopy's Policy
// (made from Target: the downtime target and the round limit) whether the
// rounds end; if they go on, it asks Adapt whether pre-copy as it runs will
// converge, and when it will not, it switches in time to what the advisor
// would pick: codecs on (Decision.Codecs), the guest throttled (20 %,
// then 10 % more each time), or what is left by post-copy
// (SwitchToPostCopy, which needs hybrid.Migrate with Adaptive). Under
// NoPostCopy the Policy stops and copies at its limit; otherwise it hands
// off to post-copy there too. Decide is a pure function of the facts it
// was fed, so the simulator and a real migration decide alike.
//
// An Adaptive serves one migration; Decisions says what it decided and why.
type Adaptive struct {
	cfg       AdaptiveConfig
	policy    *precopy.Policy
	decisions []AdaptDecision
}

// NewAdaptive returns the decider of cfg.
func NewAdaptive(cfg AdaptiveConfig) *Adaptive {
	cfg.Target = cfg.Target.norm()
	pc := precopy.Config{DowntimeTarget: cfg.Target.Downtime, MaxRounds: cfg.Target.MaxRounds, OnNonConvergence: precopy.PostCopy}
	if cfg.Objective == NoPostCopy {
		pc.OnNonConvergence = precopy.StopAndCopy
	}
	return &Adaptive{cfg: cfg, policy: precopy.NewPolicy(pc)}
}

// Decide decides after a round; see Adaptive.
func (a *Adaptive) Decide(f precopy.RoundFacts) precopy.Decision {
	d := a.policy.Decide(f)
	if d.Action != precopy.Continue {
		a.decisions = append(a.decisions, AdaptDecision{Switch: Stay, Converges: d.Converged, Reason: d.Reason})
		return d
	}
	// Codecs not allowed count as on: Adapt then offers only what the
	// pipeline can do.
	on := codec.Codecs{XBZRLE: f.Codecs.XBZRLE || !a.cfg.Codecs.XBZRLE, LZ4: f.Codecs.LZ4 || !a.cfg.Codecs.LZ4}
	ad := Adapt(Progress{Round: f, Codecs: on, Throttle: f.Throttle}, a.cfg.Profile, a.cfg.Link, a.cfg.Target, a.cfg.Objective)
	switch ad.Switch {
	case SwitchPostCopy:
		d.Action, d.Reason = precopy.SwitchToPostCopy, ad.Reason
	case SwitchCompress:
		c := codec.Codecs{XBZRLE: (ad.Codecs.XBZRLE || f.Codecs.XBZRLE) && a.cfg.Codecs.XBZRLE, LZ4: (ad.Codecs.LZ4 || f.Codecs.LZ4) && a.cfg.Codecs.LZ4}
		if c != f.Codecs {
			d.Codecs, d.Reason = &c, ad.Reason
		} else {
			ad.Switch, ad.Reason = Stay, ad.Reason+"; nothing more to turn on"
		}
	case SwitchThrottle:
		if a.cfg.Throttle {
			d.Throttle = 0.2
			if f.Throttle > 0 {
				d.Throttle = min(f.Throttle+0.1, 0.99)
			}
			d.Reason = ad.Reason
		} else {
			ad.Switch, ad.Reason = Stay, ad.Reason+"; the VM cannot be throttled"
		}
	default:
		d.Reason = ad.Reason
	}
	a.decisions = append(a.decisions, ad)
	return d
}

// Decisions returns what Decide decided after each round, in order.
func (a *Adaptive) Decisions() []AdaptDecision { return a.decisions }

var _ precopy.Decider = (*Adaptive)(nil)

package precopy

import (
	"fmt"
	"time"

	"github.com/livemig/livemig/codec"
)

// NonConvergence says what to do when pre-copy does not converge: the
// guest dirties pages faster than the link drains them for StallRounds
// rounds, or MaxRounds is reached.
type NonConvergence int

const (
	// StopAndCopy pauses the guest and sends what is left anyway, with a
	// downtime above the target (QEMU's behaviour without auto-converge).
	StopAndCopy NonConvergence = iota
	// Abort gives up: the migration fails with livemig.ErrNotConverged and
	// the source guest keeps running.
	Abort
	// Throttle asks the hypervisor to slow the guest's vCPUs, as QEMU's
	// auto-converge does: 20 % first, then 10 % more each time the guest
	// is still too fast, up to 99 %. At MaxRounds it stops and copies.
	Throttle
	// PostCopy hands the guest over and sends what is left by post-copy
	// (QEMU's postcopy-after-precopy): the Decision is SwitchToPostCopy.
	// Only HandOff's caller can go on that way (package hybrid's Migrate
	// does); Migrate refuses it.
	PostCopy
)

func (n NonConvergence) String() string {
	switch n {
	case StopAndCopy:
		return "stop-and-copy"
	case Abort:
		return "abort"
	case Throttle:
		return "throttle"
	case PostCopy:
		return "post-copy"
	}
	return fmt.Sprintf("NonConvergence(%d)", int(n))
}

// Action is what the policy decides after a round.
type Action int

const (
	// Continue with another round.
	Continue Action = iota
	// Stop pauses the guest and sends the rest (stop-and-copy).
	Stop
	// Fail aborts the migration; the source keeps running.
	Fail
	// SwitchToPostCopy ends the rounds without pausing: what is left goes
	// by post-copy (see HandOff).
	SwitchToPostCopy
)

func (a Action) String() string {
	switch a {
	case Continue:
		return "continue"
	case Stop:
		return "stop"
	case Fail:
		return "abort"
	case SwitchToPostCopy:
		return "post-copy"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// RoundFacts are what the policy knows after a round and the sync that
// follows it.
type RoundFacts struct {
	Round     int    // the round that just ended, from 1
	SentBytes uint64 // bytes the round put on the link
	SentPages uint64 // pages the round sent
	// Planned is the dirty set the round set out to send (its dirty pages
	// at the start). Pages it deferred or found unchanged are planned but
	// not sent; a round shrinks the dirty set when DirtyPages < Planned.
	// Zero means SentPages.
	Planned    uint64
	Duration   time.Duration // how long the round took
	DirtyPages uint64        // pages dirty at the sync after the round: what is left
	PageSize   int
	// Codecs are the codecs in use at the round's end; Throttle is the
	// vCPU throttle in force (0..1). The Policy does not need them; an
	// adaptive Decider does.
	Codecs   codec.Codecs
	Throttle float64
}

// Decision is the policy's answer.
type Decision struct {
	Action Action
	// Throttle, when above zero, is the vCPU throttle (0..0.99) to ask for
	// before the next round.
	Throttle float64
	// Bandwidth is the rate measured in the round, in bytes per second (0
	// when the round took no measurable time).
	Bandwidth float64
	// ExpectedDowntime is how long sending what is left would take at
	// that rate.
	ExpectedDowntime time.Duration
	// Converged says whether the stop is within the downtime target.
	Converged bool
	// Reason says why, for logs and reports.
	Reason string
	// Codecs, if set, are the codecs to use from the next round on (a
	// Decider's choice: the Policy leaves it nil). Only codecs Config.Codec
	// enables may be on; Codec.StartOff starts with them off.
	Codecs *codec.Codecs
}

// A Decider decides, after each round, what pre-copy does next: go on,
// stop and copy, give up, hand off to post-copy (HandOff only), throttle
// the guest, switch codecs. Policy is the Decider a Config makes;
// Config.Decider replaces it (package advisor's Adaptive acts on the
// advisor's predictions). Decide is called from the migrating goroutine,
// once per round, with the facts of that round; it must not block, and
// should be a pure function of the facts it was fed, so that a simulated
// migration decides as a real one.
type Decider interface {
	Decide(RoundFacts) Decision
}

// Policy decides, round by round, whether pre-copy goes on, stops and
// copies, or gives up: the Decider of a Config. It has no I/O and no clock: it is fed the facts of
// each round. A Policy is used by one migration at a time.
type Policy struct {
	cfg      Config
	stalls   int     // consecutive rounds that did not shrink the dirty set
	strikes  int     // consecutive rounds that dirtied > ThrottleTrigger of what they sent
	throttle float64 // current throttle
}

// NewPolicy returns the policy of cfg (defaults applied).
func NewPolicy(cfg Config) *Policy {
	cfg.setDefaults()
	return &Policy{cfg: cfg}
}

// Throttle returns the throttle currently asked for.
func (p *Policy) Throttle() float64 { return p.throttle }

// Decide takes the facts of the round that just ended and decides.
//
// The rules, in order:
//  1. Measure the bandwidth of the round (bytes / duration) and the
//     expected downtime (dirty bytes left / bandwidth). If it is within
//     DowntimeTarget (or nothing is left, or the round took no measurable
//     time), stop: converged (QEMU's switchover rule).
//  2. A round whose sync found more than (1-MinShrink) times the dirty set
//     the round set out to send (Planned) did not shrink it enough: a stall
//     (the guest dirties about as fast as the link drains). Pages the round
//     deferred count as planned, not as progress. StallRounds stalls in a
//     row, or reaching MaxRounds, is non-convergence, handled by
//     OnNonConvergence (Abort fails; StopAndCopy and Throttle stop; Throttle
//     stops only at MaxRounds; PostCopy hands off).
//  3. Under the Throttle policy, a round that dirtied more than
//     ThrottleTrigger of the pages it planned is a strike; two strikes in a row
//     raise the throttle (20 %, then +10 %, at most 99 %), as QEMU's
//     auto-converge does.
//  4. Otherwise, continue.
//
// With Config.AlwaysPostCopy every stop is a SwitchToPostCopy.
func (p *Policy) Decide(f RoundFacts) Decision {
	d := p.decide(f)
	if d.Action == Stop && p.cfg.AlwaysPostCopy {
		d.Action, d.Reason = SwitchToPostCopy, d.Reason+"; the rest by post-copy"
	}
	return d
}

func (p *Policy) decide(f RoundFacts) Decision {
	var d Decision
	left := float64(f.DirtyPages) * float64(f.PageSize)
	if f.Duration > 0 {
		d.Bandwidth = float64(f.SentBytes) / f.Duration.Seconds()
	}
	switch {
	case f.DirtyPages == 0:
		d.Converged, d.Action, d.Reason = true, Stop, "nothing left to send"
		return d
	case d.Bandwidth == 0 && f.SentBytes > 0:
		d.Converged, d.Action, d.Reason = true, Stop, "round took no measurable time"
		return d
	case d.Bandwidth > 0:
		d.ExpectedDowntime = time.Duration(left / d.Bandwidth * float64(time.Second))
		if d.ExpectedDowntime <= p.cfg.DowntimeTarget {
			d.Converged, d.Action = true, Stop
			d.Reason = fmt.Sprintf("expected downtime %v within target %v", d.ExpectedDowntime.Round(time.Microsecond), p.cfg.DowntimeTarget)
			return d
		}
	}
	planned := f.Planned
	if planned == 0 {
		planned = f.SentPages
	}
	if float64(f.DirtyPages) > (1-p.cfg.MinShrink)*float64(planned) {
		p.stalls++
	} else {
		p.stalls = 0
	}
	if p.cfg.OnNonConvergence == Throttle {
		if float64(f.DirtyPages) > p.cfg.ThrottleTrigger*float64(planned) {
			p.strikes++
		} else {
			p.strikes = 0
		}
		if p.strikes >= 2 {
			p.strikes = 0
			switch {
			case p.throttle == 0:
				p.throttle = p.cfg.ThrottleInitial
			default:
				p.throttle += p.cfg.ThrottleIncrement
			}
			if p.throttle > p.cfg.ThrottleMax {
				p.throttle = p.cfg.ThrottleMax
			}
			d.Throttle = p.throttle
		}
	}
	maxed := f.Round >= p.cfg.MaxRounds
	stalled := p.stalls >= p.cfg.StallRounds
	if !maxed && !stalled {
		d.Action, d.Reason = Continue, "dirty set still shrinking"
		if p.stalls > 0 {
			d.Reason = fmt.Sprintf("stalled %d of %d rounds", p.stalls, p.cfg.StallRounds)
		}
		return d
	}
	why := fmt.Sprintf("round limit %d reached", p.cfg.MaxRounds)
	if !maxed {
		why = fmt.Sprintf("dirty set did not shrink for %d rounds", p.stalls)
	}
	switch p.cfg.OnNonConvergence {
	case Abort:
		d.Action, d.Reason = Fail, why
	case PostCopy:
		d.Action, d.Reason = SwitchToPostCopy, why+"; the rest by post-copy"
	case Throttle:
		if maxed {
			d.Action, d.Reason = Stop, why+"; stopping with throttle "+fmt.Sprintf("%.0f%%", 100*p.throttle)
		} else {
			d.Action, d.Reason = Continue, why+"; throttling"
			p.stalls = 0
		}
	default:
		d.Action, d.Reason = Stop, why+"; stopping anyway"
	}
	return d
}

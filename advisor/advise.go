package advisor

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
)

// Link is the path between the two hosts: the wire, and what the hosts'
// CPUs take per page.
type Link struct {
	// Bandwidth in bits per second (measured or given). Required.
	Bandwidth float64
	// Latency one way.
	Latency time.Duration
	// Cost is what encoding and decoding a page costs the hosts' CPUs; nil
	// is codec.DefaultCost() (one core at each end).
	Cost *codec.CostModel
}

// Target is what the migration must achieve, and the engines' settings
// that shape it. Its zero value is the default.
type Target struct {
	// Downtime is the longest pause aimed for; default 300 ms (QEMU's, and
	// precopy.Config's).
	Downtime time.Duration
	// MaxRounds is pre-copy's round limit; default 30.
	MaxRounds int
	// StateBytes is the CPU and device state sent while paused; default
	// 256 KiB.
	StateBytes int
	// CacheBytes is the XBZRLE cache; default 512 MiB (examples/compare's).
	CacheBytes uint64
}

func (t Target) norm() Target {
	if t.Downtime <= 0 {
		t.Downtime = 300 * time.Millisecond
	}
	if t.MaxRounds <= 0 {
		t.MaxRounds = 30
	}
	if t.StateBytes <= 0 {
		t.StateBytes = 256 << 10
	}
	if t.CacheBytes == 0 {
		t.CacheBytes = 512 << 20
	}
	return t
}

// Objective is what the advice optimises.
type Objective int

const (
	// Balanced, the default: algorithms predicted to meet the downtime
	// target beat those that miss it; among those that meet it, the least
	// total time plus guest time lost to demand faults wins; if none meets
	// it, the least downtime.
	Balanced Objective = iota
	// NoPostCopy is Balanced among the pre-copy algorithms only, for
	// operators who will not have the guest's memory split between two
	// hosts (a lost destination, or a cut link that cannot be recovered,
	// then loses the guest).
	NoPostCopy
	// MinDowntime is the least downtime, then the least total time plus
	// fault wait.
	MinDowntime
)

func (o Objective) String() string {
	switch o {
	case Balanced:
		return "balanced"
	case NoPostCopy:
		return "no-postcopy"
	case MinDowntime:
		return "min-downtime"
	}
	return fmt.Sprintf("Objective(%d)", int(o))
}

// ParseObjective reads an Objective's name.
func ParseObjective(s string) (Objective, error) {
	for _, o := range []Objective{Balanced, NoPostCopy, MinDowntime} {
		if o.String() == s {
			return o, nil
		}
	}
	return 0, fmt.Errorf("%w: objective %q (want balanced, no-postcopy or min-downtime)", ErrConfig, s)
}

// Algorithms are the algorithms Advise chooses from, by the names of
// examples/compare's -algorithms.
var Algorithms = []string{
	"precopy", "precopy-throttle", "precopy-xbzrle", "precopy-lz4", "precopy-xbzrle-lz4",
	"postcopy-preempt", "postcopy-preempt-lz4", "hybrid",
}

// IsPostCopy reports whether the algorithm named hands the guest over
// before all its memory has arrived (post-copy and hybrid).
func IsPostCopy(name string) bool {
	return strings.HasPrefix(name, "postcopy") || name == "hybrid"
}

// Prediction is what the model expects of one algorithm.
type Prediction struct {
	Algorithm string
	Total     time.Duration // start to the destination resumed (pre-copy) or to the last page (post-copy)
	Downtime  time.Duration
	BytesSent uint64
	FaultWait time.Duration // the guest's time lost waiting on demand faults
	Faults    uint64
	Rounds    int
	Converged bool
	Throttle  float64 // the highest vCPU throttle pre-copy's auto-converge asks for
	// MeetsTarget: Downtime within Target.Downtime.
	MeetsTarget bool
	// Reason is pre-copy's stop rule's last word.
	Reason string
}

// MarshalJSON writes times in milliseconds: total_ms, downtime_ms,
// fault_wait_ms.
func (p Prediction) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	return json.Marshal(struct {
		Algorithm   string  `json:"algorithm"`
		TotalMS     float64 `json:"total_ms"`
		DowntimeMS  float64 `json:"downtime_ms"`
		BytesSent   uint64  `json:"bytes_sent"`
		FaultWaitMS float64 `json:"fault_wait_ms"`
		Faults      uint64  `json:"faults,omitempty"`
		Rounds      int     `json:"rounds"`
		Converged   bool    `json:"converged"`
		Throttle    float64 `json:"throttle,omitempty"`
		MeetsTarget bool    `json:"meets_target"`
	}{p.Algorithm, ms(p.Total), ms(p.Downtime), p.BytesSent, ms(p.FaultWait), p.Faults, p.Rounds,
		p.Converged, p.Throttle, p.MeetsTarget})
}

// Cost is the objective's figure of merit: guest-visible time, total time
// plus fault wait.
func (p Prediction) Cost() time.Duration { return p.Total + p.FaultWait }

// Advice is the algorithm to use, what it is expected to do, and why.
type Advice struct {
	Algorithm string
	Objective Objective
	Predicted Prediction
	// Candidates are every algorithm the objective allows, best first.
	Candidates []Prediction
	// Reasons say why, in words: the flowchart's steps.
	Reasons []string
}

// Better reports whether a is better than b by objective o: see Objective.
func Better(o Objective, a, b Prediction) bool { return compare(o, a, b) < 0 }

func compare(o Objective, a, b Prediction) int {
	if o == MinDowntime {
		return cmp.Or(cmp.Compare(a.Downtime, b.Downtime), cmp.Compare(a.Cost(), b.Cost()))
	}
	switch {
	case a.MeetsTarget && !b.MeetsTarget:
		return -1
	case !a.MeetsTarget && b.MeetsTarget:
		return 1
	case a.MeetsTarget:
		return cmp.Or(cmp.Compare(a.Cost(), b.Cost()), cmp.Compare(a.Downtime, b.Downtime))
	}
	return cmp.Or(cmp.Compare(a.Downtime, b.Downtime), cmp.Compare(a.Cost(), b.Cost()))
}

// Predict returns the model's prediction for each of Algorithms, in that
// order.
func Predict(p Profile, l Link, t Target) ([]Prediction, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if !(l.Bandwidth > 0) || math.IsInf(l.Bandwidth, 0) {
		return nil, fmt.Errorf("%w: bandwidth %v", ErrConfig, l.Bandwidth)
	}
	t = t.norm()
	e := &env{p: p, ps: float64(p.PageSize), pages: float64(p.Pages), bw: l.Bandwidth / 8,
		lat: max(l.Latency, 0).Seconds(), cost: l.Cost, target: t}
	preds := make([]Prediction, 0, len(Algorithms))
	for _, name := range Algorithms {
		var pr Prediction
		switch name {
		case "precopy":
			pr = e.preCopy(preCopyPlan{})
		case "precopy-throttle":
			pr = e.preCopy(preCopyPlan{throttle: true})
		case "precopy-xbzrle":
			pr = e.preCopy(preCopyPlan{xbzrle: true})
		case "precopy-lz4":
			pr = e.preCopy(preCopyPlan{lz4: true})
		case "precopy-xbzrle-lz4":
			pr = e.preCopy(preCopyPlan{xbzrle: true, lz4: true})
		case "postcopy-preempt":
			pr = e.postCopy(false, false)
		case "postcopy-preempt-lz4":
			pr = e.postCopy(false, true)
		case "hybrid":
			pr = e.postCopy(true, false)
		}
		pr.Algorithm = name
		pr.MeetsTarget = pr.Downtime <= t.Downtime
		preds = append(preds, pr)
	}
	return preds, nil
}

// Advise returns the algorithm the objective prefers for a guest of
// profile p over link l, with its predicted figures and the reasons. It is
// a pure function of its arguments. An invalid profile or link gives an
// Advice with no Algorithm and the error as its only reason.
func Advise(p Profile, l Link, t Target, o Objective) Advice {
	adv := Advice{Objective: o}
	preds, err := Predict(p, l, t)
	if err != nil {
		adv.Reasons = []string{err.Error()}
		return adv
	}
	t = t.norm()
	for _, pr := range preds {
		if o == NoPostCopy && IsPostCopy(pr.Algorithm) {
			continue
		}
		adv.Candidates = append(adv.Candidates, pr)
	}
	slices.SortStableFunc(adv.Candidates, func(a, b Prediction) int { return compare(o, a, b) })
	adv.Predicted = adv.Candidates[0]
	adv.Algorithm = adv.Predicted.Algorithm
	adv.Reasons = reasons(p, l, t, o, preds, adv.Candidates)
	return adv
}

// reasons writes the flowchart's steps for this profile, in words.
func reasons(p Profile, l Link, t Target, o Objective, all, ranked []Prediction) []string {
	by := map[string]Prediction{}
	for _, pr := range all {
		by[pr.Algorithm] = pr
	}
	var rs []string
	linkPages := l.Bandwidth / 8 / float64(p.PageSize+13)
	rs = append(rs, fmt.Sprintf("the guest dirties %.0f distinct pages/s over %v (%.0f%% of the link's %.0f pages/s); "+
		"%d pages (%s) in the %v window, %.0f%% of dirtying on the hottest tenth of memory",
		p.DirtyRate, p.Interval, 100*p.DirtyRate/linkPages, linkPages, p.WorkingSet,
		livemig.FormatBytes(p.WorkingSet*uint64(p.PageSize)), p.Window, 100*p.HotShare))
	pc := by["precopy"]
	if pc.MeetsTarget {
		rs = append(rs, fmt.Sprintf("plain pre-copy converges: %d rounds, downtime %v within the %v target",
			pc.Rounds, pc.Downtime.Round(time.Millisecond/10), t.Downtime))
	} else {
		rs = append(rs, fmt.Sprintf("plain pre-copy does not meet the target: downtime %v over %v (%s)",
			pc.Downtime.Round(time.Millisecond), t.Downtime, pc.Reason))
	}
	if p.DeltaSamples > 0 {
		x := by["precopy-xbzrle"]
		rs = append(rs, fmt.Sprintf("re-dirtied pages change little (XBZRLE delta %.0f bytes, %.0f%% rewritten whole): "+
			"with XBZRLE pre-copy's downtime is %v, %s sent against %s",
			p.DeltaBytes, 100*p.DeltaOverflow, x.Downtime.Round(time.Millisecond/10),
			livemig.FormatBytes(x.BytesSent), livemig.FormatBytes(pc.BytesSent)))
	}
	lz := by["precopy-lz4"]
	oneCore := float64(p.PageSize) * 8 / max(l.Cost.Encode(codec.Outcome{LZ4: codec.LZ4Sent}, p.PageSize).Seconds(), 1e-12)
	if l.Bandwidth < oneCore {
		rs = append(rs, fmt.Sprintf("pages compress %.2fx with LZ4 and the link (%s) is slower than LZ4 on the encoding cores (%s): "+
			"compression pays (pre-copy+lz4: %v)", p.LZ4Ratio(), fmtBits(l.Bandwidth), fmtBits(oneCore), lz.Total.Round(time.Millisecond)))
	} else {
		rs = append(rs, fmt.Sprintf("the link (%s) is faster than LZ4 on the encoding cores (%s): compression would slow the stream",
			fmtBits(l.Bandwidth), fmtBits(oneCore)))
	}
	pp, hy := by["postcopy-preempt"], by["hybrid"]
	if o == NoPostCopy {
		rs = append(rs, "post-copy and hybrid excluded: the objective keeps the whole guest at the source until the switch")
	} else {
		rs = append(rs, fmt.Sprintf("post-copy with preemption: downtime %v, but each of ~%d faults costs a round trip (%v): %v of guest time lost; hybrid loses %v",
			pp.Downtime.Round(time.Millisecond/10), pp.Faults, (2*l.Latency).Round(time.Microsecond), pp.FaultWait.Round(time.Millisecond),
			hy.FaultWait.Round(time.Millisecond)))
	}
	best := ranked[0]
	why := fmt.Sprintf("chose %s (objective %s): predicted total %v + fault wait %v, downtime %v, %s",
		best.Algorithm, o, best.Total.Round(time.Millisecond), best.FaultWait.Round(time.Millisecond),
		best.Downtime.Round(time.Millisecond/10), livemig.FormatBytes(best.BytesSent))
	if !best.MeetsTarget {
		why += fmt.Sprintf("; no algorithm meets the %v target, so the least downtime", t.Downtime)
	}
	if len(ranked) > 1 {
		nx := ranked[1]
		why += fmt.Sprintf("; next %s (total %v + fault wait %v, downtime %v)", nx.Algorithm,
			nx.Total.Round(time.Millisecond), nx.FaultWait.Round(time.Millisecond), nx.Downtime.Round(time.Millisecond/10))
	}
	rs = append(rs, why)
	return rs
}

func fmtBits(bps float64) string {
	if bps >= 1e9 {
		return fmt.Sprintf("%.3g Gbit/s", bps/1e9)
	}
	return fmt.Sprintf("%.3g Mbit/s", bps/1e6)
}

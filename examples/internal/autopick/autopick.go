// Package autopick is -mode auto of the example migration commands
// (memmigrate, kvm): the source profiles its guest through package
// advisor, takes the advisor's pick, says what it chose and why, and runs
// it. One implementation for both commands.
package autopick

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
)

// Config is what the source knows besides its guest: the link (given, not
// measured), the downtime target and round limit, the objective, and how
// long to watch.
type Config struct {
	Link      advisor.Link
	Target    advisor.Target
	Objective advisor.Objective
	Window    time.Duration // 0: advisor.ObserveConfig's default
	Logger    *slog.Logger
	// Log receives the lines that say what was chosen and why, each
	// starting with Prefix (say "source: ").
	Log    io.Writer
	Prefix string
}

// Pick is an algorithm as the commands run it.
type Pick struct {
	// Mode is "precopy", "postcopy" or "hybrid".
	Mode string
	// Codecs are pre-copy's (XBZRLE, LZ4); LZ4 is post-copy's.
	Codecs codec.Codecs
	LZ4    bool
	// Throttle says pre-copy throttles the guest when it does not
	// converge (auto-converge).
	Throttle bool
	// Advice and Profile are what the pick came from.
	Advice  advisor.Advice
	Profile advisor.Profile
}

// Choose profiles g for cfg.Window, asks the advisor, writes the pick and
// its reasons to cfg.Log, and returns the pick. It fails when the profile
// fails or no algorithm suits the objective.
func Choose(ctx context.Context, g advisor.Guest, cfg Config) (Pick, error) {
	fmt.Fprintf(cfg.Log, "%s-mode auto: profiling the guest for %v\n", cfg.Prefix, cfg.Window)
	p, err := advisor.Observe(ctx, g, livemig.WallClock{}, advisor.ObserveConfig{Window: cfg.Window, Logger: cfg.Logger})
	if err != nil {
		return Pick{Profile: p}, fmt.Errorf("-mode auto: profile: %w", err)
	}
	adv := advisor.Advise(p, cfg.Link, cfg.Target, cfg.Objective)
	if adv.Algorithm == "" {
		return Pick{Advice: adv, Profile: p}, fmt.Errorf("-mode auto: %s", strings.Join(adv.Reasons, "; "))
	}
	fmt.Fprintf(cfg.Log, "%s-mode auto chose %s (predicted total %v, downtime %v, fault wait %v):\n", cfg.Prefix, adv.Algorithm,
		adv.Predicted.Total.Round(time.Millisecond), adv.Predicted.Downtime.Round(time.Microsecond), adv.Predicted.FaultWait.Round(time.Millisecond))
	for _, r := range adv.Reasons {
		fmt.Fprintf(cfg.Log, "%s  - %s\n", cfg.Prefix, r)
	}
	pk := Of(adv.Algorithm)
	pk.Advice, pk.Profile = adv, p
	return pk, nil
}

// Of is the pick that runs the algorithm named (one of advisor.Algorithms).
func Of(alg string) Pick {
	switch alg {
	case "postcopy-preempt", "postcopy-preempt-lz4":
		return Pick{Mode: "postcopy", LZ4: alg == "postcopy-preempt-lz4"}
	case "hybrid":
		return Pick{Mode: "hybrid"}
	}
	return Pick{Mode: "precopy", Throttle: alg == "precopy-throttle",
		Codecs: codec.Codecs{XBZRLE: strings.Contains(alg, "xbzrle"), LZ4: strings.Contains(alg, "lz4")}}
}

// Adaptive says whether the pick runs as the adaptive engine: a pre-copy
// pick does, so that the rounds can still switch (advisor.Adaptive). With
// an objective that allows post-copy the commands run it as
// hybrid.Config.Adaptive (mode "adaptive": post-copy's connections, a
// destination that takes either end); under NoPostCopy as pre-copy with
// the decider.
func (pk Pick) Adaptive() bool { return pk.Mode == "precopy" }

// Decider is the adaptive engine's decider for pk: advisor.Adaptive with
// pk's profile and cfg's link, target and objective, every codec allowed,
// throttling when the VM can (throttle).
func (pk Pick) Decider(cfg Config, throttle bool) *advisor.Adaptive {
	return advisor.NewAdaptive(advisor.AdaptiveConfig{Profile: pk.Profile, Link: cfg.Link, Target: cfg.Target,
		Objective: cfg.Objective, Codecs: codec.Codecs{XBZRLE: true, LZ4: true}, Throttle: throttle})
}

// Codec is the adaptive engine's pre-copy codecs for pk: both allowed, on
// from the start when the pick names either (the pipeline's adaptation
// turns off one that slows the migration), off otherwise (the decider
// turns them on when pre-copy will not converge without).
func (pk Pick) Codec() codec.Config {
	return codec.Config{XBZRLE: true, LZ4: true, StartOff: !pk.Codecs.XBZRLE && !pk.Codecs.LZ4}
}

// AsDecider is a as a precopy.Config.Decider, or nil (pre-copy's own
// Policy) when there is none: never an interface holding a nil pointer.
func AsDecider(a *advisor.Adaptive) precopy.Decider {
	if a == nil {
		return nil
	}
	return a
}

// DecisionLine is the adaptive engine's decision after the round that event
// e ends, as the commands print it; false for another event or without an
// engine.
func DecisionLine(a *advisor.Adaptive, e livemig.Event) (string, bool) {
	if a == nil || e.Kind != livemig.RoundEnded {
		return "", false
	}
	ds := a.Decisions()
	if len(ds) == 0 {
		return "", false
	}
	d := ds[len(ds)-1]
	return fmt.Sprintf("adaptive     round %2d  %s: %s", e.Round, d.Switch, d.Reason), true
}

// Name is a -mode auto report's algorithm: "auto: " and the pick, and with
// the adaptive engine how it ended (post-copy for the rest after round n,
// or pre-copy, with the codecs on at the end).
func Name(pick string, rep *livemig.Report, adaptive bool) string {
	alg := "auto: " + pick
	if !adaptive {
		return alg
	}
	switch {
	case rep.PostCopy != nil:
		return alg + fmt.Sprintf(" (adaptive: post-copy for the rest after round %d)", len(rep.Rounds)-1)
	case rep.Codec != nil && rep.Codec.Codecs != "" && rep.Codec.Codecs != "none":
		return alg + " (adaptive: pre-copy, codecs " + rep.Codec.Codecs + ")"
	}
	return alg + " (adaptive: pre-copy)"
}

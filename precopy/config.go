package precopy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
)

// Config configures a pre-copy migration. Its zero value is the default:
// QEMU's downtime target of 300 ms, at most 30 rounds, stop-and-copy when
// the guest does not converge, the wall clock, no logging, end-to-end
// verification on.
type Config struct {
	// DowntimeTarget is the longest pause the migration aims for: it stops
	// iterating when what is left can be sent within it at the bandwidth
	// measured in the last round. Default 300 ms.
	DowntimeTarget time.Duration
	// MaxRounds bounds the rounds, the bulk round included. Default 30.
	MaxRounds int
	// StallRounds is how many rounds in a row may fail to shrink the dirty
	// set before the migration is declared not converging. Default 3.
	StallRounds int
	// MinShrink is how much a round must shrink the dirty set, as a share
	// of the pages it sent, not to count as a stall. Default 0.1: a round
	// that leaves more than 90 % of what it sent dirty again is a stall.
	MinShrink float64
	// OnNonConvergence says what to do then. Default StopAndCopy.
	OnNonConvergence NonConvergence
	// Decider, if set, decides after each round instead of the Policy made
	// from this Config (whose DowntimeTarget, MaxRounds, StallRounds,
	// MinShrink, OnNonConvergence and throttle settings it may use or not).
	Decider Decider
	// AlwaysPostCopy makes every end of the rounds a SwitchToPostCopy, converged or
	// not: a hybrid migration, whose pre-copy rounds only shrink what
	// post-copy has to fetch. Like OnNonConvergence PostCopy, only HandOff
	// honours it.
	AlwaysPostCopy bool
	// ThrottleTrigger, ThrottleInitial, ThrottleIncrement and ThrottleMax
	// tune the Throttle policy; defaults 0.5, 0.2, 0.1 and 0.99 (QEMU's
	// throttle-trigger-threshold and cpu-throttle-* parameters). The VM must
	// implement livemig.Throttler.
	ThrottleTrigger   float64
	ThrottleInitial   float64
	ThrottleIncrement float64
	ThrottleMax       float64
	// Codec chooses how pages are encoded: zero pages always go as zero
	// records; XBZRLE and LZ4 are off by default. Codec.Workers goroutines
	// read and encode pages (default: one per CPU, or 1 when Clock is a
	// *livemig.VirtualClock, so that simulations are deterministic). With a
	// *livemig.VirtualClock, Codec.Clock is set to it: encoding then takes
	// the virtual time of Codec.Cost (nil: codec.DefaultCost()), on
	// Codec.Cost.Workers modelled cores. Enable only codecs the destination
	// agreed to in the handshake (transport.Agreed).
	Codec codec.Config
	// Order decides the order of each round's pages (package reorder:
	// reorder.ByFrequency sends often-dirtied pages last). Nil: ascending
	// page numbers, the standard algorithm's order. The bulk round always
	// goes in ascending order.
	Order Order
	// Defer skips, in every round but the last, pages dirtied again since
	// the round's sync, before their turn (Clark et al.): they stay dirty
	// and go once, in a later round. The DirtySource must implement
	// livemig.DirtyPeeker.
	Defer bool
	// NoVerify turns off the end-to-end digest. Completeness (every page
	// received at least once) is checked regardless.
	NoVerify bool
	// Redial, at the source, opens a new connection to the destination
	// (handshake done) when the outcome of the hand-over is unknown: the
	// Commit was sent and the link failed before the destination said
	// whether it resumed. The source then asks (see Resolve) and resumes or
	// releases its guest by the answer, retrying for HandoverTimeout. It is
	// also used, best effort, to tell a destination that said Ready that
	// the source gave up before the Commit, so that it stops waiting.
	// Without Redial such a failure returns an *InDoubtError at once.
	Redial func(ctx context.Context) (transport.Conn, error)
	// Reaccept, at the destination, accepts the source's new connection
	// after the link failed once the destination had said Ready (all
	// received, verified and loaded): the source comes back to ask what
	// happened, or to send the Commit again. Reaccept should give up (return
	// an error) when no source comes back within the time the user is
	// willing to keep the destination waiting; the destination then
	// reports failure and does not resume, or, if it had resumed, reports
	// success (the source may be left in doubt). Without Reaccept the
	// destination fails at once before the resume, and after it returns as
	// soon as the source's AckReleased or the link's end comes.
	Reaccept func(ctx context.Context) (transport.Conn, error)
	// HandoverTimeout bounds how long a source in doubt keeps redialing to
	// learn the outcome, whether or not Migrate's ctx has ended meanwhile:
	// DefaultHandoverTimeout if 0.
	HandoverTimeout time.Duration
	// MaxReconnects bounds the connections a destination takes through
	// Reaccept while it waits for its source: DefaultMaxReconnects if 0.
	MaxReconnects int
	// Clock is where time is read; the wall clock by default, a
	// *livemig.VirtualClock in simulations.
	Clock livemig.Clock
	// Logger receives progress at Debug and decisions at Info; nil
	// discards.
	Logger *slog.Logger
	// OnEvent, if set, is called synchronously from the migrating goroutine
	// at each step. It must return quickly.
	OnEvent func(Event)
}

// DefaultHandoverTimeout is Config.HandoverTimeout's default.
const DefaultHandoverTimeout = 30 * time.Second

// DefaultMaxReconnects is Config.MaxReconnects' default.
const DefaultMaxReconnects = 16

func (c *Config) setDefaults() {
	if c.DowntimeTarget == 0 {
		c.DowntimeTarget = 300 * time.Millisecond
	}
	if c.MaxRounds == 0 {
		c.MaxRounds = 30
	}
	if c.StallRounds == 0 {
		c.StallRounds = 3
	}
	if c.MinShrink == 0 {
		c.MinShrink = 0.1
	}
	if c.ThrottleTrigger == 0 {
		c.ThrottleTrigger = 0.5
	}
	if c.ThrottleInitial == 0 {
		c.ThrottleInitial = 0.2
	}
	if c.ThrottleIncrement == 0 {
		c.ThrottleIncrement = 0.1
	}
	if c.ThrottleMax == 0 {
		c.ThrottleMax = 0.99
	}
	if c.HandoverTimeout == 0 {
		c.HandoverTimeout = DefaultHandoverTimeout
	}
	if c.MaxReconnects == 0 {
		c.MaxReconnects = DefaultMaxReconnects
	}
	if c.Clock == nil {
		c.Clock = livemig.WallClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	switch {
	case c.DowntimeTarget < 0:
		return fmt.Errorf("precopy: negative downtime target %v", c.DowntimeTarget)
	case c.MaxReconnects < 0:
		return fmt.Errorf("precopy: MaxReconnects %d < 0", c.MaxReconnects)
	case c.MaxRounds < 1:
		return fmt.Errorf("precopy: MaxRounds %d < 1", c.MaxRounds)
	case c.StallRounds < 1:
		return fmt.Errorf("precopy: StallRounds %d < 1", c.StallRounds)
	case c.MinShrink < 0 || c.MinShrink >= 1:
		return fmt.Errorf("precopy: MinShrink %v outside [0,1)", c.MinShrink)
	case c.OnNonConvergence < StopAndCopy || c.OnNonConvergence > PostCopy:
		return fmt.Errorf("precopy: unknown non-convergence policy %d", c.OnNonConvergence)
	case c.ThrottleInitial <= 0 || c.ThrottleInitial > 1 || c.ThrottleMax <= 0 || c.ThrottleMax >= 1 ||
		c.ThrottleIncrement <= 0 || c.ThrottleTrigger <= 0:
		return fmt.Errorf("precopy: throttle parameters out of range (initial %v, increment %v, max %v, trigger %v)",
			c.ThrottleInitial, c.ThrottleIncrement, c.ThrottleMax, c.ThrottleTrigger)
	}
	return nil
}

// Order is the order a round's pages go out in: livemig.Order.
type Order = livemig.Order

// EventKind and Event are livemig's; pre-copy reports RoundStarted,
// RoundEnded, Throttled, Stopping and Finished (the destination resumed).
type (
	EventKind = livemig.EventKind
	Event     = livemig.Event
)

// The steps pre-copy reports to Config.OnEvent.
const (
	RoundStarted = livemig.RoundStarted
	RoundEnded   = livemig.RoundEnded
	Throttled    = livemig.Throttled
	Stopping     = livemig.Stopping
	Finished     = livemig.Finished
)

// Package hybrid migrates a guest by hybrid migration: a bounded number of
// pre-copy rounds while the guest runs, then post-copy for what is left.
//
// The pre-copy rounds move the bulk of the memory while the guest runs at
// the source, as pre-copy does, but without waiting for convergence; the
// switchover then moves execution at once, as post-copy does, so the
// downtime does not depend on the dirty rate, and the post-copy phase has
// only the pages dirtied during the rounds left to fetch, so the guest
// faults less than under pure post-copy. The source names every page
// dirtied since it was sent (most before it pauses, the rest at the
// switchover), and the destination discards its copy (makes it missing),
// so that the guest never runs on a stale page.
//
// The rounds are pre-copy's own (precopy.HandOff: its Policy, codecs,
// page order and deferral); they end, without pausing, at a barrier the
// destination answers, and package postcopy's Core goes on from there
// (postcopy.Continue): it has the stale copies discarded, pauses the guest
// and pushes the rest. Before the hand-over a failure leaves the source
// running, after it a cut link is recovered by reconnecting (postcopy's
// rules). The number of rounds is this package's setting alone
// (Config.Rounds, DefaultRounds by default); postcopy.Migrate is always
// pure post-copy. Receive refuses, before anything arrives, a memory that
// cannot discard.
//
// With Config.Adaptive the migration is pre-copy that goes on by post-copy
// only when it does not converge (QEMU's postcopy-after-precopy): converging
// within PreCopy.DowntimeTarget, it stops and copies as pre-copy does, and
// the guest never runs at the destination on memory still at the source.
//
// # Usage
//
//	rep, err := hybrid.Migrate(ctx, conn, livemig.Source{Memory: g, Dirty: g, VM: g},
//		hybrid.Config{Rounds: 3})
//
// and at the destination, whose memory must implement postcopy.Discarder
// (faultmem.Region and postcopy.HeapMemory do), and livemig.PageReader for
// XBZRLE rounds:
//
//	drep, err := hybrid.Receive(ctx, conn, hybrid.Destination{
//		Memory: mem, VM: vm, Faults: faults, Pages: n, PageSize: 4096,
//	}, hybrid.Config{})
package hybrid

import (
	"context"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// DefaultRounds is Config.Rounds' default.
const DefaultRounds = 3

// Config configures a hybrid migration. Its zero value is the default:
// three pre-copy rounds at most, then post-copy with postcopy.Config's
// defaults.
type Config struct {
	// Rounds bounds the pre-copy rounds before the switchover, the bulk
	// round that sends every page included: DefaultRounds if 0 (with
	// Adaptive, PreCopy.MaxRounds). The rounds end sooner when pre-copy's
	// Policy stops: the rest fits PreCopy.DowntimeTarget, or a round does
	// not shrink the dirty set by PreCopy.MinShrink (PreCopy.StallRounds
	// is 1 unless set).
	Rounds int
	// Adaptive switches to post-copy only when pre-copy does not converge;
	// see the package documentation.
	Adaptive bool
	// Config configures the post-copy phase and what both phases share:
	// Clock, Logger, OnEvent, Redial, NoVerify, LZ4, and Order (the
	// rounds' too, unless PreCopy.Order is set).
	postcopy.Config
	// PreCopy configures the rounds: Policy, codecs, page order, deferral.
	// Its MaxRounds, OnNonConvergence and AlwaysPostCopy are set from
	// Rounds and Adaptive; a zero Clock, Logger, OnEvent or Redial is
	// Config's, and NoVerify is either's.
	PreCopy precopy.Config
}

// Destination is where the guest goes; its Memory must implement
// postcopy.Discarder.
type Destination = postcopy.Destination

// ReceiveReport is what the destination saw.
type ReceiveReport = postcopy.ReceiveReport

// PreCopyConfig returns the configuration Migrate runs the rounds with
// (precopy.HandOff): PreCopy, completed from Rounds, Adaptive and Config as
// their documentation says. Config.LZ4 compresses the rounds' pages too.
// Package scenario's hybrid model runs its rounds with it.
func (c Config) PreCopyConfig() (precopy.Config, error) {
	if c.Rounds < 0 {
		return precopy.Config{}, fmt.Errorf("hybrid: Rounds %d < 0", c.Rounds)
	}
	p := c.PreCopy
	switch {
	case c.Rounds > 0:
		p.MaxRounds = c.Rounds
	case !c.Adaptive:
		p.MaxRounds = DefaultRounds
	}
	if c.Adaptive {
		p.OnNonConvergence = precopy.PostCopy
	} else {
		p.AlwaysPostCopy = true
		if p.StallRounds == 0 {
			p.StallRounds = 1
		}
	}
	if p.Clock == nil {
		p.Clock = c.Clock
	}
	if p.Logger == nil {
		p.Logger = c.Logger
	}
	if p.OnEvent == nil {
		p.OnEvent = c.OnEvent
	}
	if p.Redial == nil {
		p.Redial = c.Redial
	}
	if p.Order == nil {
		p.Order = c.Order
	}
	p.NoVerify = p.NoVerify || c.NoVerify
	p.Codec.LZ4 = p.Codec.LZ4 || c.LZ4
	return p, nil
}

// Migrate migrates src to the destination at the other end of conn: up to
// cfg.Rounds pre-copy rounds, then post-copy. src needs Memory, Dirty and VM.
// It owns conn (and cfg.Urgent) and closes them. The report's Rounds are the
// pre-copy rounds and a final post-copy round (with Adaptive, when pre-copy
// converged, its final stop-and-copy round); see precopy.HandOff and
// postcopy.Migrate for the failure rules.
func Migrate(ctx context.Context, conn transport.Conn, src livemig.Source, cfg Config) (*livemig.Report, error) {
	pcfg, err := cfg.PreCopyConfig()
	if err != nil {
		conn.Close()
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
		return nil, err
	}
	rep, h, err := precopy.HandOff(ctx, conn, src, pcfg)
	if h == nil {
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
		if rep != nil && !cfg.Adaptive {
			rep.Algorithm = "hybrid"
		}
		return rep, err
	}
	return postcopy.Continue(ctx, h, src, cfg.Config)
}

// Receive is the destination's side of Migrate; see postcopy.Receive. The
// destination learns the number of rounds from the stream: cfg.Rounds does
// not matter here.
func Receive(ctx context.Context, conn transport.Conn, dst Destination, cfg Config) (*ReceiveReport, error) {
	if _, ok := dst.Memory.(postcopy.Discarder); !ok && dst.Memory != nil {
		conn.Close()
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
		return nil, fmt.Errorf("hybrid: the destination's memory cannot discard stale pages (implement postcopy.Discarder): %w", livemig.ErrNotSupported)
	}
	return postcopy.Receive(ctx, conn, dst, cfg.Config)
}

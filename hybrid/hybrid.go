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
// The engine is package postcopy's (its Core runs the rounds, then the
// post-copy phase); its protocol, failure and recovery rules hold here:
// before the hand-over a failure leaves the source running, after it a cut
// link is recovered by reconnecting. The number of rounds is this
// package's setting alone (Config.Rounds, DefaultRounds by default): a
// postcopy.Config has none, so postcopy.Migrate is always pure post-copy.
// Receive refuses, before anything arrives, a memory that cannot discard.
//
// # Usage
//
//	rep, err := hybrid.Migrate(ctx, conn, livemig.Source{Memory: g, Dirty: g, VM: g},
//		hybrid.Config{Rounds: 3})
//
// and at the destination, whose memory must implement postcopy.Discarder
// (faultmem.Region and postcopy.HeapMemory do):
//
//	drep, err := hybrid.Receive(ctx, conn, hybrid.Destination{
//		Memory: mem, VM: vm, Faults: faults, Pages: n, PageSize: 4096,
//	}, hybrid.Config{})
package hybrid

import (
	"github.com/livemig/livemig/internal/hybridhook"

	"context"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/transport"
)

// DefaultRounds is Config.Rounds' default.
const DefaultRounds = 3

// Config configures a hybrid migration. Its zero value is the default:
// three pre-copy rounds at most, then post-copy with postcopy.Config's
// defaults.
type Config struct {
	// Rounds bounds the pre-copy rounds before the switchover, the bulk
	// round that sends every page included: DefaultRounds if 0. The
	// pre-copy phase ends sooner when a round does not shrink the dirty
	// set, or leaves nothing dirty.
	Rounds int
	// Config configures the post-copy phase and everything else (urgent
	// connection, push order, pre-paging, LZ4, recovery, clock, logging).
	postcopy.Config
}

// Destination is where the guest goes; its Memory must implement
// postcopy.Discarder.
type Destination = postcopy.Destination

// ReceiveReport is what the destination saw.
type ReceiveReport = postcopy.ReceiveReport

func (c Config) postcopy() (postcopy.Config, error) {
	if c.Rounds < 0 {
		return postcopy.Config{}, fmt.Errorf("hybrid: Rounds %d < 0", c.Rounds)
	}
	n := c.Rounds
	if n == 0 {
		n = DefaultRounds
	}
	return hybridhook.WithRounds(c.Config, n).(postcopy.Config), nil
}

// Migrate migrates src to the destination at the other end of conn: up to
// cfg.Rounds pre-copy rounds, then post-copy. src needs Memory, Dirty and VM.
// It owns conn (and cfg.Urgent) and closes them. The report's Rounds are the
// pre-copy rounds and a final post-copy round; see postcopy.Migrate for the
// failure rules.
func Migrate(ctx context.Context, conn transport.Conn, src livemig.Source, cfg Config) (*livemig.Report, error) {
	pc, err := cfg.postcopy()
	if err != nil {
		conn.Close()
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
		return nil, err
	}
	return postcopy.Migrate(ctx, conn, src, pc)
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

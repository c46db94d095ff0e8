package postcopy

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// DefaultPrepage is how many neighbours of a requested page are sent with it
// when Config.Prepage is 0.
const DefaultPrepage = 16

// DefaultMaxReconnects bounds the reconnections of one migration when
// Config.MaxReconnects is 0.
const DefaultMaxReconnects = 16

// Config configures both sides of a post-copy (or hybrid) migration. Its
// zero value is the default: pure post-copy, sequential push, 16 pages of
// pre-paging, verification on, the wall clock, no logging, no recovery.
type Config struct {
	// Urgent, if set, is a second connection to the same peer (already
	// opened with transport.Open) on which the source sends requested
	// pages and their neighbours, so that they do not queue behind the
	// background push, like QEMU's postcopy-preempt channel. Both sides
	// must set it or neither: the source says at switchover whether it
	// uses one, and a destination that disagrees refuses the switchover.
	// Without it, requested pages go on the main connection ahead of the
	// rest of the push, flushed at once. The migration owns it (closes it).
	// After a reconnection only the main connection is used, unless
	// RedialUrgent and ReacceptUrgent open a new urgent one.
	Urgent transport.Conn
	// Order is the order of the background push (and of the pre-copy
	// rounds after the first); package reorder provides them. Nil:
	// ascending page numbers.
	Order livemig.Order
	// Prepage is how many neighbours of a requested page the source sends
	// right after it (Hines and Gopalan's pre-paging): in the direction the
	// faults are moving, and twice as many, up to 8×Prepage, while they
	// keep moving that way. 0 means DefaultPrepage, negative means none.
	Prepage int
	// LZ4 compresses the pages the source sends (pushed, requested and in
	// pre-copy rounds) with LZ4 when the block saves at least 1/64 of the
	// page (codec.PageEncoder, codec.MaxLZ4); the destination decompresses
	// them. It pays on
	// links slower than the source compresses (about 1 GB/s a core). Zero
	// pages go as zero-page records either way.
	LZ4 bool
	// PushBandwidth caps the background push, in bytes per second;
	// requested pages are not counted against it. 0: no cap.
	PushBandwidth int64
	// NoVerify turns off the end-to-end digest. Completeness (the
	// destination holds every page) is checked regardless.
	NoVerify bool
	// Redial, at the source, opens a new connection to the destination
	// after the link was cut following the switchover (the destination is
	// then waiting in Reaccept), retried with back-off up to MaxReconnects
	// times. Without it such a cut ends the migration with an error
	// wrapping livemig.ErrIncomplete: the guest runs at the destination but
	// part of its memory is still only at the source. A source that fails
	// before the Commit, after sending the state, also uses it once, best
	// effort, to tell the destination to stop waiting.
	Redial func(ctx context.Context) (transport.Conn, error)
	// Reaccept, at the destination, accepts the source's new connection
	// after a cut following the switchover, and after the completion for a
	// source that missed the AckComplete. Without it such a cut ends
	// Receive with an error wrapping livemig.ErrIncomplete. It should give
	// up (return an error) when no source comes back within the time the
	// user is willing to wait. A connection that says nothing within
	// transport.DefaultLiveness, or names another session, is dropped.
	Reaccept func(ctx context.Context) (transport.Conn, error)
	// RedialUrgent, at the source, opens a new urgent connection after a
	// reconnection (Redial), so that requested pages keep their own
	// connection for the rest of the migration; it is called once Redial's
	// connection has said which session it resumes. ReacceptUrgent, at the
	// destination, accepts it. A source with RedialUrgent says so on the
	// new connection, and a destination without ReacceptUrgent then
	// refuses the reconnection (an error wrapping livemig.ErrVersion), as
	// for Urgent at the switchover; a destination with ReacceptUrgent
	// whose source has none goes on with the main connection alone.
	RedialUrgent   func(ctx context.Context) (transport.Conn, error)
	ReacceptUrgent func(ctx context.Context) (transport.Conn, error)
	// MaxReconnects bounds the reconnections of one migration:
	// DefaultMaxReconnects if 0.
	MaxReconnects int
	// Clock is where time is read: the wall clock by default.
	Clock livemig.Clock
	// Logger receives progress at Debug and decisions at Info; nil
	// discards.
	Logger *slog.Logger
	// OnEvent, if set, is called synchronously at each step, from the
	// goroutine that runs Migrate or Receive. It must return quickly.
	OnEvent func(Event)
}

func (c *Config) setDefaults() {
	if c.Prepage == 0 {
		c.Prepage = DefaultPrepage
	}
	if c.Prepage < 0 {
		c.Prepage = 0
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
	case c.PushBandwidth < 0:
		return fmt.Errorf("postcopy: PushBandwidth %d < 0", c.PushBandwidth)
	case c.MaxReconnects < 0:
		return fmt.Errorf("postcopy: MaxReconnects %d < 0", c.MaxReconnects)
	}
	return nil
}

// EventKind and Event are livemig's. The source reports RoundStarted,
// RoundEnded, Pausing, HandedOver, Pushing (every PushEventEvery pages),
// PushDone, LinkCut, Reconnected and Finished; the destination Resumed,
// LinkCut and Reconnected.
type (
	EventKind = livemig.EventKind
	Event     = livemig.Event
)

// The steps post-copy reports to Config.OnEvent.
const (
	RoundStarted = livemig.RoundStarted
	RoundEnded   = livemig.RoundEnded
	Pausing      = livemig.Pausing
	HandedOver   = livemig.HandedOver
	Pushing      = livemig.Pushing
	PushDone     = livemig.PushDone
	LinkCut      = livemig.LinkCut
	Reconnected  = livemig.Reconnected
	Resumed      = livemig.Resumed
	Finished     = livemig.Finished
)

// PushEventEvery is how many pages go between two Pushing events.
const PushEventEvery = 1024

package livemig

import (
	"fmt"
	"time"
)

// Source is the guest being migrated away, as every engine takes it: its
// memory, its dirty log (needed by pre-copy rounds) and its control.
type Source struct {
	Memory Memory
	Dirty  DirtySource
	VM     VM
}

// Order is the order a round's pages go out in (and post-copy's push);
// reorder.Order satisfies it. Observe is called after every sync of the
// dirty log with the pages found dirty; Plan appends the pages set in dirty
// to dst in sending order, each once, without modifying dirty. Both are
// called from one goroutine at a time.
type Order interface {
	Observe(dirty []uint64)
	Plan(dst []uint64, dirty []uint64) []uint64
	Name() string
}

// EventKind names a step of a migration. Every engine reports its steps
// with this one set; each engine's documentation says which it reports.
type EventKind int

// The steps of a migration.
const (
	RoundStarted EventKind = iota // a pre-copy round begins
	RoundEnded                    // a pre-copy round ended
	Throttled                     // pre-copy slowed the guest down (auto-converge)
	Stopping                      // pre-copy: the source is about to pause, stop-and-copy begins
	Pausing                       // post-copy: the source is about to pause
	HandedOver                    // post-copy: the source sent Commit: it will not run the guest again
	Pushing                       // post-copy: progress of the push
	PushDone                      // post-copy: every page is sent; Done follows
	LinkCut                       // the link failed after the hand-over
	Reconnected                   // a new link replaced it
	Resumed                       // the destination resumed the guest
	Finished                      // the migration completed
)

var eventNames = [...]string{"round-started", "round-ended", "throttled", "stopping", "pausing", "handed-over",
	"pushing", "push-done", "link-cut", "reconnected", "resumed", "finished"}

func (k EventKind) String() string {
	if k < 0 || int(k) >= len(eventNames) {
		return fmt.Sprintf("EventKind(%d)", int(k))
	}
	return eventNames[k]
}

// Event is one step of a migration, as the side that reports it sees it.
type Event struct {
	Kind  EventKind
	Round int
	// Pages is the step's page count: the pages a round sends
	// (RoundStarted) or leaves dirty (RoundEnded), the pages to push
	// (HandedOver), sent since the switchover (Pushing, PushDone), or left
	// to push (Reconnected).
	Pages     uint64
	PagesSent uint64        // page records sent so far (source)
	BytesSent uint64        // bytes sent so far (pre-copy source)
	Elapsed   time.Duration // since the migration started
	// ExpectedDowntime (pre-copy) is the stop-and-copy's time at the last
	// round's bandwidth; Throttle the guest's throttle (0 to 1); Reason why
	// the rounds stop (Stopping).
	ExpectedDowntime time.Duration
	Throttle         float64
	Reason           string
	Err              error // LinkCut: what broke
}

package reorder

import (
	"fmt"

	"github.com/livemig/livemig/bitmap"
)

// Deferred is the deferral rule of Clark et al. ("Live Migration of Virtual
// Machines", NSDI 2005): a page planned for this round that has been dirtied
// again since the round's sync, before its turn came, is skipped. Sending it
// now would be wasted: it is dirty again, so it stays set in the dirty log
// and the next sync hands it to a later round, which sends it once.
//
// peek holds the pages written since the round's sync, in KVM's layout, as
// livemig.DirtyPeeker.PeekDirty reports them (without clearing the log).
// Deferred reports whether page is set in peek and the round is not final.
// In the final, stop-and-copy round nothing is deferred: the guest is paused,
// so there is no later round and every planned page must go. A page past the
// end of peek is not deferred. Deferred only reads peek.
func Deferred(peek []uint64, page uint64, final bool) bool {
	if final {
		return false
	}
	return bitmap.Words(peek).Test(page)
}

// DefaultPeekEvery is how many pages a Deferrer lets go between two looks at
// the dirty log when DeferConfig.PeekEvery is 0. A look costs a pass over
// the bitmap (8 KiB per 256 MiB of guest), so at 4096 pages (16 MiB) between
// looks it costs about 1/2000 of the round's traffic in memory reads.
const DefaultPeekEvery = 4096

// DeferConfig configures a Deferrer. Its zero value is the default.
type DeferConfig struct {
	// PeekEvery is how many planned pages go between two refreshes of the
	// peek bitmap; DefaultPeekEvery if 0. Fewer means fresher knowledge
	// and fewer wasted sends, at the price of more passes over the log.
	// Negative values count as the default.
	PeekEvery int
}

// Deferrer applies the Deferred rule over a round, refreshing its picture of
// the dirty log every PeekEvery pages. It is pure: it never reads the log
// itself but tells the engine when to, and hands it the buffer to fill.
// The engine's loop over a round's plan is:
//
//	d.Start(final)
//	for _, p := range plan {
//		if buf := d.Due(); buf != nil {
//			if err := peeker.PeekDirty(buf); err != nil {
//				return err
//			}
//		}
//		if d.Skip(p) {
//			continue // deferred: still dirty in the log
//		}
//		send(p)
//	}
//
// A Deferrer belongs to one goroutine. Its zero value is not usable; make
// one with NewDeferrer.
type Deferrer struct {
	peek    []uint64
	every   int
	since   int
	final   bool
	skipped uint64
}

// NewDeferrer returns a Deferrer for a guest of pages pages; its peek buffer
// takes livemig.WordsFor(pages) words (1 bit per page). It returns an error
// wrapping ErrTooLarge if pages exceeds MaxPages.
func NewDeferrer(pages uint64, cfg DeferConfig) (*Deferrer, error) {
	if pages > MaxPages {
		return nil, fmt.Errorf("%w: %d pages, at most %d", ErrTooLarge, pages, MaxPages)
	}
	every := cfg.PeekEvery
	if every <= 0 {
		every = DefaultPeekEvery
	}
	return &Deferrer{peek: make([]uint64, (pages+63)/64), every: every}, nil
}

// Start begins a round: the first Due asks for a fresh peek. final says
// whether the round is the stop-and-copy one, where nothing is deferred and
// Due never asks for a peek. Start forgets the previous round's peek (until
// the first Due is filled nothing is deferred) and resets Skipped.
func (d *Deferrer) Start(final bool) {
	clear(d.peek)
	d.final = final
	d.since = d.every
	d.skipped = 0
}

// Due returns, when it is time to look at the dirty log again, the peek
// buffer, cleared, for the engine to fill with PeekDirty before the next
// Skip; otherwise nil. The buffer is owned by the Deferrer and valid until
// the next Due; the engine must not retain it.
func (d *Deferrer) Due() []uint64 {
	if d.final || d.since < d.every {
		return nil
	}
	d.since = 0
	clear(d.peek)
	return d.peek
}

// Skip reports whether page is deferred by the last peek (see Deferred)
// and counts one planned page towards the next Due.
func (d *Deferrer) Skip(page uint64) bool {
	d.since++
	if Deferred(d.peek, page, d.final) {
		d.skipped++
		return true
	}
	return false
}

// Skipped returns the pages deferred since Start.
func (d *Deferrer) Skipped() uint64 { return d.skipped }

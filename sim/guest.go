package sim

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// readAdvanceEvery is how often ReadPage brings the guest up to date: every
// readAdvanceEvery-th call, so that a read costs no clock reading and no
// lock. The writes it skips show in the next dirty-log sync regardless.
const readAdvanceEvery = 32

// Guest is a simulated guest: its memory (livemig.Memory), dirty log
// (livemig.DirtySource, livemig.DirtyPeeker) and control (livemig.VM,
// livemig.Throttler).
//
// Its workload writes pages as the guest's running time passes. Writes are
// applied lazily: every method that observes the guest (SyncDirty,
// PeekDirty, Page, Snapshot, Stats, SaveState, Pause, Resume, SetThrottle,
// Advance, and ReadPage every 32nd call) first applies the writes due by
// the clock's current time. A Guest is safe for concurrent use; ReadPage
// takes no lock and may run in many goroutines at once.
type Guest struct {
	cfg   GuestConfig
	lay   layout
	w     Workload
	env   Env
	clock livemig.Clock
	state []uint64 // packed PageState per page: atomic loads, stores under mu
	reads atomic.Uint32

	mu       sync.Mutex
	dirty    bitmap.Words // pages written since the last SyncDirty, KVM layout
	last     time.Time
	run      time.Duration // running time so far
	rem      uint64        // running time below 1 ns, in units of 2^-32 ns
	speed    uint64        // (1-throttle) in units of 2^-32
	throttle float64
	paused   bool
	stats    Stats
	apply    WriteFunc // g.write, bound once
}

// Stats are a guest's figures.
type Stats struct {
	Writes       uint64        // writes applied, by the workload and by Write
	WholeWrites  uint64        // of Writes, those that rewrote a whole page
	PagesWritten uint64        // pages written at least once
	Dropped      uint64        // writes a workload aimed past the last page, ignored
	RunTime      time.Duration // running time: unpaused, scaled by the throttle
	Throttle     float64       // the throttle in force
	Paused       bool
}

// NewGuest returns a running guest of configuration cfg whose pages w
// writes as time passes on clock. A nil w is Idle(); a nil clock is the wall
// clock. Its running time starts at 0 now. The error wraps ErrConfig when
// cfg or w does not hold.
func NewGuest(cfg GuestConfig, w Workload, clock livemig.Clock) (*Guest, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	if w == nil {
		w = Idle()
	}
	if err := w.Check(c.Pages); err != nil {
		return nil, fmt.Errorf("sim: workload %s: %w", w.Name(), err)
	}
	if clock == nil {
		clock = livemig.WallClock{}
	}
	g := &Guest{
		cfg:   c,
		lay:   newLayout(c),
		w:     w,
		env:   Env{Pages: c.Pages, Seed: mix(c.Seed ^ 0x776f726b6c6f6164)},
		clock: clock,
		state: make([]uint64, c.Pages),
		dirty: make([]uint64, livemig.WordsFor(c.Pages)),
		last:  clock.Now(),
		speed: 1 << 32,
	}
	g.apply = g.write
	return g, nil
}

// Config returns the guest's configuration with its defaults filled in; a
// Sink built from it checks this guest's pages.
func (g *Guest) Config() GuestConfig { return g.cfg }

// Workload returns the guest's workload.
func (g *Guest) Workload() Workload { return g.w }

// Env returns what the guest's workload is told of the guest. With it a
// simulated destination replays the writes the workload would make after
// the source paused: Workload().Writes(Env(), from, to, f) for running
// times past Stats().RunTime emits the writes the guest makes next.
func (g *Guest) Env() Env { return g.env }

// PageSize returns the page size in bytes.
func (g *Guest) PageSize() int { return g.cfg.PageSize }

// PageCount returns the number of pages.
func (g *Guest) PageCount() uint64 { return g.cfg.Pages }

// ReadPage writes the current contents of page n to dst, which must be
// exactly PageSize bytes. It allocates nothing and takes no lock. Errors are
// *livemig.PageError wrapping livemig.ErrPageRange or ErrBufferSize.
func (g *Guest) ReadPage(n uint64, dst []byte) error {
	if n >= g.cfg.Pages {
		return &livemig.PageError{Op: "read", Page: n, Err: livemig.ErrPageRange}
	}
	if len(dst) != g.cfg.PageSize {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("%w: %d bytes, want %d", ErrBufferSize, len(dst), g.cfg.PageSize)}
	}
	if g.reads.Add(1)%readAdvanceEvery == 0 {
		g.Advance()
	}
	g.lay.fill(dst, n, unpack(atomic.LoadUint64(&g.state[n])))
	return nil
}

// Contents writes to dst, which must be exactly PageSize bytes, the
// contents page n has in state s, whatever state it is in now: pairs of
// versions of a page for codec tests, or pages a Sink accepts. Errors are
// as ReadPage's.
func (g *Guest) Contents(n uint64, s PageState, dst []byte) error {
	if n >= g.cfg.Pages {
		return &livemig.PageError{Op: "read", Page: n, Err: livemig.ErrPageRange}
	}
	if len(dst) != g.cfg.PageSize {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("%w: %d bytes, want %d", ErrBufferSize, len(dst), g.cfg.PageSize)}
	}
	g.lay.fill(dst, n, s)
	return nil
}

// Page returns the state of page n (which determines its contents), after
// applying the writes due.
func (g *Guest) Page(n uint64) (PageState, error) {
	if n >= g.cfg.Pages {
		return PageState{}, &livemig.PageError{Op: "read", Page: n, Err: livemig.ErrPageRange}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	return unpack(g.state[n]), nil
}

// Snapshot returns the state of every page, after applying the writes due.
// Two guests whose snapshots are equal have equal memory.
func (g *Guest) Snapshot() []PageState {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	s := make([]PageState, len(g.state))
	for i, x := range g.state {
		s[i] = unpack(x)
	}
	return s
}

// Write writes page n now, as the guest's vCPUs would: a few words, or the
// whole page. It is the hand of a test or a driver, so it applies even
// while the guest is paused.
func (g *Guest) Write(n uint64, whole bool) error {
	if n >= g.cfg.Pages {
		return &livemig.PageError{Op: "write", Page: n, Err: livemig.ErrPageRange}
	}
	g.mu.Lock()
	g.write(n, whole)
	g.mu.Unlock()
	return nil
}

// write applies one write; g.mu is held.
func (g *Guest) write(n uint64, whole bool) {
	if n >= g.cfg.Pages {
		g.stats.Dropped++
		return
	}
	s := unpack(g.state[n])
	if s.Version == 0 {
		g.stats.PagesWritten++
	}
	if s.Version++; s.Version == 0 {
		s.Version = 1
	}
	if whole {
		s.Generation++
		g.stats.WholeWrites++
	}
	g.stats.Writes++
	atomic.StoreUint64(&g.state[n], s.pack())
	g.dirty.Set(n)
}

// Advance applies the writes due by the clock's current time. Every method
// that observes the guest calls it; a driver that runs the guest in real
// time may call it too.
func (g *Guest) Advance() {
	g.mu.Lock()
	g.advance()
	g.mu.Unlock()
}

// advance runs the workload up to the clock's now; g.mu is held. The
// workload runs under the lock, so it must not call the guest.
func (g *Guest) advance() {
	now := g.clock.Now()
	if !now.After(g.last) {
		return
	}
	dt := uint64(now.Sub(g.last))
	g.last = now
	if g.paused || g.speed == 0 {
		return
	}
	d := dt
	if g.speed != 1<<32 {
		hi, lo := bits.Mul64(dt, g.speed)
		var c uint64
		lo, c = bits.Add64(lo, g.rem, 0)
		hi += c
		d = hi<<32 | lo>>32
		g.rem = lo & (1<<32 - 1)
	}
	if d == 0 {
		return
	}
	from := g.run
	g.run += time.Duration(d)
	g.w.Writes(g.env, from, g.run, g.apply)
}

func (g *Guest) checkWords(dst []uint64) error {
	if len(dst) < len(g.dirty) {
		return fmt.Errorf("sim: dirty bitmap: %w: %d words, want at least %d", ErrBufferSize, len(dst), len(g.dirty))
	}
	return nil
}

// SyncDirty ORs into dst the pages written since the previous call and
// clears them (livemig.DirtySource). dst must hold at least
// livemig.WordsFor(PageCount) words; the error otherwise wraps
// ErrBufferSize. Bits past the page count are never set.
func (g *Guest) SyncDirty(dst []uint64) error {
	if err := g.checkWords(dst); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	for i, w := range g.dirty {
		if w != 0 {
			dst[i] |= w
			g.dirty[i] = 0
		}
	}
	return nil
}

// PeekDirty ORs into dst the pages written since the previous SyncDirty
// without clearing them (livemig.DirtyPeeker).
func (g *Guest) PeekDirty(dst []uint64) error {
	if err := g.checkWords(dst); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	for i, w := range g.dirty {
		dst[i] |= w
	}
	return nil
}

// Pause stops the guest's vCPUs: writes due up to now are applied, and no
// time passes for the workload until Resume. Pausing a paused guest does
// nothing. It returns ctx.Err() if ctx is done.
func (g *Guest) Pause(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	g.paused = true
	return nil
}

// Resume lets the guest run again from now: the time it spent paused
// makes no writes. Resuming a running guest does nothing. It returns
// ctx.Err() if ctx is done.
func (g *Guest) Resume(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	g.paused = false
	return nil
}

// Paused reports whether the guest is paused.
func (g *Guest) Paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.paused
}

// SetThrottle makes the guest run only (1-fraction) of the time from now
// on, so its workload writes at (1-fraction) of its rate
// (livemig.Throttler); fraction is clamped to [0,1] and 0 lifts the
// throttle. Writes due before the call are made at the old pace. The
// scaling is exact integer arithmetic, so a throttled run is repeatable.
func (g *Guest) SetThrottle(fraction float64) {
	if !(fraction > 0) {
		fraction = 0
	} else if fraction > 1 {
		fraction = 1
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	g.throttle = fraction
	g.speed = uint64(math.Round((1 - fraction) * (1 << 32)))
}

// SaveState appends the guest's CPU/device state, StateSize bytes that
// depend on the seed, the running time and the writes made, to dst
// (livemig.VM). A guest with no state returns dst unchanged.
func (g *Guest) SaveState(ctx context.Context, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	return appendState(dst, &g.lay, g.run, g.stats.Writes), nil
}

// LoadState checks that state is one that a guest of this configuration
// saved, returning an error wrapping livemig.ErrCorrupt otherwise, and
// changes nothing: a Guest is a migration's source; its destination is a
// Sink.
func (g *Guest) LoadState(ctx context.Context, state []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkState(state, &g.lay)
}

// Stats returns the guest's figures, after applying the writes due.
func (g *Guest) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance()
	s := g.stats
	s.RunTime = g.run
	s.Throttle = g.throttle
	s.Paused = g.paused
	return s
}

// Interface checks.
var (
	_ livemig.Memory      = (*Guest)(nil)
	_ livemig.DirtySource = (*Guest)(nil)
	_ livemig.DirtyPeeker = (*Guest)(nil)
	_ livemig.VM          = (*Guest)(nil)
	_ livemig.Throttler   = (*Guest)(nil)
)

package livemig

import (
	"context"
	"sync"
	"time"
)

// Clock is where engines, links and simulated workloads read time.
//
// Now returns the current time. WaitUntil blocks until Now() >= t or ctx is
// done, returning ctx.Err() in the latter case. In the real world the clock is
// the wall clock (WallClock); in the simulated world it is a VirtualClock,
// which moves only when a simulated link or workload advances it.
type Clock interface {
	Now() time.Time
	WaitUntil(ctx context.Context, t time.Time) error
}

// WallClock is the real clock. Its zero value is ready to use.
type WallClock struct{}

// Now returns time.Now().
func (WallClock) Now() time.Time { return time.Now() }

// WaitUntil sleeps until t or until ctx is done.
func (WallClock) WaitUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// VirtualEpoch is the time at which a VirtualClock created by NewVirtualClock
// starts. Simulated reports count from it, so figures do not depend on the day.
var VirtualEpoch = time.Date(2012, 1, 1, 0, 0, 0, 0, time.UTC)

// VirtualClock is simulated time. It never moves by itself: Advance and
// AdvanceTo move it forward, and WaitUntil moves it to the time waited for at
// once, because in a simulation the waiter is the one that lets time pass.
// It is safe for concurrent use; time never goes backwards.
type VirtualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewVirtualClock returns a virtual clock set to VirtualEpoch.
func NewVirtualClock() *VirtualClock { return &VirtualClock{now: VirtualEpoch} }

// Now returns the virtual time.
func (c *VirtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d (a negative d does nothing) and returns
// the new time.
func (c *VirtualClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d > 0 {
		c.now = c.now.Add(d)
	}
	return c.now
}

// AdvanceTo moves the clock to t if t is later than now, and returns the new
// time.
func (c *VirtualClock) AdvanceTo(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	return c.now
}

// WaitUntil advances the clock to t. It returns ctx.Err() if ctx is already
// done.
func (c *VirtualClock) WaitUntil(ctx context.Context, t time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.AdvanceTo(t)
	return nil
}

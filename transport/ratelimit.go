package transport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"golang.org/x/time/rate"

	"github.com/livemig/livemig"
)

// DefaultBurst is RateConfig.Burst's default.
const DefaultBurst = 64 << 10

var errRateClosed = fmt.Errorf("transport: rate-limited link: %w", livemig.ErrClosed)

// RateConfig configures RateLimit. Its zero value is an unlimited link
// measured against the wall clock.
type RateConfig struct {
	// BytesPerSec is the rate writes may not exceed; <= 0 or +Inf means
	// unlimited.
	BytesPerSec float64
	// Burst is the most bytes that may go at once, and the largest piece a
	// Write is cut into; <= 0 means DefaultBurst.
	Burst int
	// Clock is the time the limit is measured in; nil means the wall clock.
	// With a livemig.VirtualClock, a Write that must wait advances the clock
	// instead of sleeping.
	Clock livemig.Clock
}

// RateLink is a Link whose writes are limited by a token bucket (see
// RateLimit). Reads pass straight through.
type RateLink struct {
	l     Link
	lim   *rate.Limiter
	burst int
	clock livemig.Clock

	wmu       sync.Mutex // serializes writers, so each write waits its turn
	mu        sync.Mutex // guards wake and gen
	gen       uint64     // SetRate calls so far
	wake      context.CancelFunc
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
}

// RateLimit wraps l so that Write sends at most cfg.BytesPerSec bytes per
// second on average, with bursts of at most cfg.Burst bytes: a Write is cut
// into pieces of at most Burst bytes and each piece waits for its tokens
// before it is written to l. Close closes l and makes a Write blocked waiting
// for tokens return an error wrapping livemig.ErrClosed. Read, and
// CloseWrite if l has it, go straight to l.
func RateLimit(l Link, cfg RateConfig) *RateLink {
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Clock == nil {
		cfg.Clock = livemig.WallClock{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	rl := &RateLink{
		l:      l,
		lim:    rate.NewLimiter(rateLimit(cfg.BytesPerSec), cfg.Burst),
		burst:  cfg.Burst,
		clock:  cfg.Clock,
		ctx:    ctx,
		cancel: cancel,
	}
	return rl
}

func rateLimit(bytesPerSec float64) rate.Limit {
	if bytesPerSec <= 0 || math.IsInf(bytesPerSec, 1) || math.IsNaN(bytesPerSec) {
		return rate.Inf
	}
	return rate.Limit(bytesPerSec)
}

// SetRate changes the limit from now on (<= 0 means unlimited). It is safe to
// call from any goroutine, including while a Write waits.
func (r *RateLink) SetRate(bytesPerSec float64) {
	r.lim.SetLimitAt(r.clock.Now(), rateLimit(bytesPerSec))
	r.mu.Lock()
	r.gen++ // a Write that reserved before and is not waiting yet asks again
	if r.wake != nil {
		r.wake() // a waiting Write gives its reservation back and asks again
		r.wake = nil
	}
	r.mu.Unlock()
}

// Rate returns the current limit in bytes per second (+Inf if unlimited).
func (r *RateLink) Rate() float64 { return float64(r.lim.Limit()) }

// virtualTime reports whether the limit runs in virtual time (its clock is
// a *livemig.VirtualClock), for liveness.
func (r *RateLink) virtualTime() bool {
	_, ok := r.clock.(*livemig.VirtualClock)
	return ok
}

// Unwrap returns the wrapped link.
func (r *RateLink) Unwrap() Link { return r.l }

// Read reads from the wrapped link.
func (r *RateLink) Read(p []byte) (int, error) { return r.l.Read(p) }

// Write writes p to the wrapped link at the configured rate.
func (r *RateLink) Write(p []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	total := 0
	for total < len(p) {
		n := min(len(p)-total, r.burst)
		if err := r.wait(n); err != nil {
			return total, err
		}
		w, err := r.l.Write(p[total : total+n])
		total += w
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// wait takes n tokens, waiting on the clock for them. A SetRate meanwhile
// makes it give its reservation back and reserve again at the new rate.
func (r *RateLink) wait(n int) error {
	for {
		if r.ctx.Err() != nil {
			return errRateClosed
		}
		r.mu.Lock()
		gen := r.gen
		r.mu.Unlock()
		now := r.clock.Now()
		res := r.lim.ReserveN(now, n)
		if !res.OK() { // cannot happen: Write cuts at the burst
			return fmt.Errorf("transport: rate-limited link: %d bytes exceed the burst", n)
		}
		d := res.DelayFrom(now)
		if d <= 0 {
			return nil
		}
		ctx, cancel := context.WithCancel(r.ctx)
		r.mu.Lock()
		if r.gen != gen {
			// SetRate came between the reservation and now, too early to
			// wake this wait: reserve again at the new rate.
			r.mu.Unlock()
			cancel()
			res.CancelAt(r.clock.Now())
			continue
		}
		r.wake = cancel
		r.mu.Unlock()
		err := r.clock.WaitUntil(ctx, now.Add(d))
		r.mu.Lock()
		r.wake = nil
		r.mu.Unlock()
		cancel()
		if err == nil {
			return nil
		}
		res.CancelAt(r.clock.Now())
		if r.ctx.Err() != nil {
			return errRateClosed
		}
		if !errors.Is(err, context.Canceled) {
			return err
		}
	}
}

// CloseWrite shuts the wrapped link's write side if it has CloseWrite, and
// returns an error wrapping livemig.ErrNotSupported otherwise.
func (r *RateLink) CloseWrite() error {
	if cw, ok := r.l.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("transport: rate-limited link: CloseWrite: %w", livemig.ErrNotSupported)
}

// Close closes the wrapped link and wakes a Write waiting for tokens. It is
// idempotent: later calls return the first call's result.
func (r *RateLink) Close() error {
	r.closeOnce.Do(func() {
		r.cancel()
		r.closeErr = r.l.Close()
	})
	return r.closeErr
}

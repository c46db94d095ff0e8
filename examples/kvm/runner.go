package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// step is what one entry into the guest ended with.
type step int

const (
	stepBatch       step = iota // the guest finished a batch (its I/O port exit)
	stepInterrupted             // a kick took the vCPU out of the guest
	stepAgain                   // an exit handled by the vCPU itself (a full dirty ring): enter again
	stepHalted                  // the guest stopped for good (HLT)
)

// vcpu is one vCPU as a runner drives it.
//
// enter runs the guest until its next exit and reports it; it is called by
// the runner's goroutine alone, which is locked to its OS thread. kick,
// from any goroutine, makes an enter under way return stepInterrupted soon,
// and is sticky: a kick made before enter begins makes that enter return at
// once (KVM's immediate_exit). enter clears it as it returns.
type vcpu interface {
	enter() (step, error)
	kick()
}

// errStopped: the runner's vCPU no longer runs (the guest halted, failed or
// was closed).
var errStopped = errors.New("vCPU stopped")

// runner runs a vcpu on its own goroutine, locked to an OS thread, and
// pauses and resumes it.
//
// It starts paused. Resume lets the vCPU enter the guest; Pause kicks it
// out and returns once it is out (bounded by pauseTimeout and ctx); do runs
// a function on the vCPU's goroutine while it is paused (the vCPU ioctls:
// registers, state). Its methods are safe for concurrent use.
type runner struct {
	cpu          vcpu
	pauseTimeout time.Duration
	// gap, if over 0, is the least time from one batch's end to the next
	// entry into the guest (the -rate pacing); the vCPU counts as paused
	// while it waits.
	gap time.Duration

	mu      sync.Mutex
	cond    *sync.Cond
	want    bool // the vCPU should run
	out     bool // the vCPU is out of the guest and waits (paused)
	stopped bool // the loop ended
	err     error
	batches uint64
	work    []func() // run while paused (do)
	atEnd   []func() // run at the next batch's end (atBatch)
	next    time.Time
	timer   *time.Timer
	done    chan struct{}
}

// newRunner starts the goroutine of cpu, paused; gap paces its batches.
func newRunner(cpu vcpu, pauseTimeout, gap time.Duration) *runner {
	r := &runner{cpu: cpu, pauseTimeout: pauseTimeout, gap: gap, done: make(chan struct{}), out: true}
	r.cond = sync.NewCond(&r.mu)
	go r.loop()
	return r
}

// loop is the vCPU's goroutine.
func (r *runner) loop() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(r.done)
	for {
		if !r.waitToRun() {
			return
		}
		s, err := r.cpu.enter()
		if err != nil || s == stepHalted {
			if err == nil {
				err = errors.New("the guest halted")
			}
			r.stop(err)
			return
		}
		if s == stepBatch {
			r.batchEnded()
		}
	}
}

// batchEnded runs, on the vCPU's goroutine, what waits for a batch's end.
func (r *runner) batchEnded() {
	r.mu.Lock()
	fs := r.atEnd
	r.atEnd = nil
	r.mu.Unlock()
	for _, f := range fs {
		f()
	}
	r.mu.Lock()
	r.batches++
	if r.gap > 0 {
		r.next = time.Now().Add(r.gap)
	}
	r.cond.Broadcast()
	r.mu.Unlock()
}

// waitToRun waits, out of the guest, until the vCPU should run, doing the
// work handed to it meanwhile; false: stop.
func (r *runner) waitToRun() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		for len(r.work) > 0 {
			f := r.work[0]
			r.work = r.work[1:]
			r.mu.Unlock()
			f()
			r.mu.Lock()
		}
		if r.stopped {
			return false
		}
		if r.want && !r.paced() {
			r.out = false
			return true
		}
		if !r.out {
			r.out = true
			r.cond.Broadcast()
		}
		r.cond.Wait()
	}
}

// paced says whether the vCPU must wait before its next batch, and if so
// arranges to be woken when the wait is over. Called with r.mu held.
func (r *runner) paced() bool {
	d := time.Until(r.next)
	if r.gap <= 0 || d <= 0 {
		return false
	}
	if r.timer == nil {
		r.timer = time.AfterFunc(d, func() {
			r.mu.Lock()
			r.timer = nil
			r.cond.Broadcast()
			r.mu.Unlock()
		})
	}
	return true
}

func (r *runner) stop(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopped {
		r.stopped, r.err, r.out = true, err, true
	}
	r.cond.Broadcast()
}

// Pause takes the vCPU out of the guest and returns once it is out. If it
// is not out within pauseTimeout (or ctx ends first) the pause is called
// off, the vCPU runs on and the error says so.
func (r *runner) Pause(ctx context.Context) error {
	r.mu.Lock()
	if r.stopped {
		defer r.mu.Unlock()
		return fmt.Errorf("pause: %w: %w", errStopped, r.err)
	}
	r.want = false
	r.mu.Unlock()
	r.cpu.kick()
	err := r.waitFor(ctx, r.pauseTimeout, func() bool { return r.out })
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.out && !r.stopped:
		return nil
	case r.stopped:
		return fmt.Errorf("pause: %w: %w", errStopped, r.err)
	}
	r.want = true // called off: the vCPU runs on
	return fmt.Errorf("pause: the vCPU did not leave the guest within %v: %w", r.pauseTimeout, err)
}

// Resume lets the vCPU run. Resuming a running vCPU does nothing; a stopped
// one is an error.
func (r *runner) Resume(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return fmt.Errorf("resume: %w: %w", errStopped, r.err)
	}
	r.want = true
	r.cond.Broadcast()
	return nil
}

// Running says whether the vCPU is meant to run and has not stopped.
func (r *runner) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.want && !r.stopped
}

// do runs f on the vCPU's goroutine, which must be paused, and returns its
// error.
func (r *runner) do(f func() error) error {
	r.mu.Lock()
	if r.stopped {
		defer r.mu.Unlock()
		return fmt.Errorf("%w: %w", errStopped, r.err)
	}
	if r.want || !r.out {
		r.mu.Unlock()
		return errors.New("the vCPU is not paused")
	}
	res := make(chan error, 1)
	r.work = append(r.work, func() { res <- f() })
	r.cond.Broadcast()
	r.mu.Unlock()
	return <-res
}

// atBatch runs f on the vCPU's goroutine at the end of the guest's next
// batch (its stores complete, the vCPU out of the guest) and returns once
// it has run, or ctx ends, or the vCPU stops.
func (r *runner) atBatch(ctx context.Context, f func()) error {
	ran := false
	r.mu.Lock()
	if r.stopped {
		defer r.mu.Unlock()
		return fmt.Errorf("%w: %w", errStopped, r.err)
	}
	r.atEnd = append(r.atEnd, func() {
		f()
		r.mu.Lock()
		ran = true
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	r.mu.Unlock()
	err := r.waitFor(ctx, 0, func() bool { return ran || r.stopped })
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case ran:
		return nil
	case r.stopped:
		return fmt.Errorf("%w: %w", errStopped, r.err)
	}
	return err
}

// Batches returns how many batches the guest has completed.
func (r *runner) Batches() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.batches
}

// WaitBatches waits until the guest has completed more than n batches, or
// ctx ends, or the vCPU stops.
func (r *runner) WaitBatches(ctx context.Context, n uint64) error {
	err := r.waitFor(ctx, 0, func() bool { return r.batches > n || r.stopped })
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.batches > n:
		return nil
	case r.stopped:
		return fmt.Errorf("%w: %w", errStopped, r.err)
	}
	return err
}

// waitFor waits until cond (read under r.mu) holds, ctx ends, or timeout
// (if > 0) passes.
func (r *runner) waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for !cond() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.cond.Wait()
	}
	return nil
}

// Close stops the vCPU's goroutine (kicking it out of the guest) and waits
// for it to end, bounded by pauseTimeout.
func (r *runner) Close() error {
	r.mu.Lock()
	r.want = false
	if !r.stopped {
		r.stopped, r.err = true, errors.New("closed")
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	r.cpu.kick()
	return r.wait(r.pauseTimeout)
}

// wait waits at most d for the vCPU's goroutine to end.
func (r *runner) wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.done:
		return nil
	case <-t.C:
		return fmt.Errorf("the vCPU did not leave the guest within %v", d)
	}
}

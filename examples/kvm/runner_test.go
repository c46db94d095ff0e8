package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeCPU is a vcpu whose guest finishes a batch each time the test sends
// on batch, and which a kick interrupts; stuck makes it ignore kicks.
type fakeCPU struct {
	batch  chan struct{}
	kicked chan struct{} // one token: a sticky kick
	stuck  bool
	halt   chan struct{}
	mu     sync.Mutex
	in     bool // inside enter
}

func newFakeCPU() *fakeCPU {
	return &fakeCPU{batch: make(chan struct{}), kicked: make(chan struct{}, 1), halt: make(chan struct{})}
}

func (f *fakeCPU) enter() (step, error) {
	f.mu.Lock()
	f.in = true
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.in = false; f.mu.Unlock() }()
	kicked := f.kicked
	if f.stuck {
		kicked = nil
	}
	select {
	case <-f.batch:
		return stepBatch, nil
	case <-kicked:
		return stepInterrupted, nil
	case <-f.halt:
		return stepHalted, nil
	}
}

func (f *fakeCPU) kick() {
	select {
	case f.kicked <- struct{}{}:
	default:
	}
}

func (f *fakeCPU) inside() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.in
}

func TestRunnerPauseResume(t *testing.T) {
	ctx := context.Background()
	cpu := newFakeCPU()
	r := newRunner(cpu, 5*time.Second, 0)
	defer r.Close()
	// It starts paused: do works, and Pause of a paused vCPU returns at once.
	if err := r.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := r.do(func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("do on a paused vCPU: %v, ran %v", err, ran)
	}
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.do(func() error { return nil }); err == nil {
		t.Fatal("do on a running vCPU succeeded")
	}
	for range 3 {
		cpu.batch <- struct{}{}
	}
	if err := r.WaitBatches(ctx, 2); err != nil || r.Batches() != 3 {
		t.Fatalf("batches %d: %v", r.Batches(), err)
	}
	// Pause kicks the vCPU out of the guest and returns once it is out.
	if err := r.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if cpu.inside() || r.Running() {
		t.Fatal("paused, yet inside the guest")
	}
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// atBatch runs at the end of the next batch.
	got := make(chan uint64, 1)
	go func() { cpu.batch <- struct{}{} }()
	if err := r.atBatch(ctx, func() { got <- r.Batches() }); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != 3 {
		t.Fatalf("atBatch ran after %d batches, want 3 (before the 4th is counted)", n)
	}
}

// A vCPU that does not leave the guest makes Pause fail within its bound,
// and the vCPU runs on.
func TestRunnerPauseBounded(t *testing.T) {
	ctx := context.Background()
	cpu := newFakeCPU()
	cpu.stuck = true
	r := newRunner(cpu, 50*time.Millisecond, 0)
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	cpu.batch <- struct{}{} // it entered once and comes back for more
	if err := r.WaitBatches(ctx, 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := r.Pause(ctx); err == nil {
		t.Fatal("a stuck vCPU paused")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Pause took %v", d)
	}
	if !r.Running() {
		t.Fatal("a failed Pause left the vCPU stopped")
	}
	cpu.batch <- struct{}{}
	if err := r.WaitBatches(ctx, 1); err != nil {
		t.Fatal(err)
	}
	close(cpu.halt)
	if err := r.WaitBatches(ctx, 5); !errors.Is(err, errStopped) {
		t.Fatalf("after a halt: %v", err)
	}
	if err := r.Resume(ctx); !errors.Is(err, errStopped) {
		t.Fatalf("resume after a halt: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

package livemigtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/region"
)

// ref is a tiny in-memory guest and sink that follows every contract.
// Its flaws make it break one rule each, to prove the checks catch it.
type ref struct {
	mu    sync.Mutex
	ps    int
	pages [][]byte
	dirty []uint64
	reads int
	flaws
	race // for loseRacing
}

// race makes loseRacing's loss certain: the raceAt-th write waits until a
// SyncDirty is between its copy and its clear, and that sync waits until
// the write has landed.
type race struct {
	writes                atomic.Int64
	waiting, open, landed chan struct{}
	once                  sync.Once
}

const raceAt = 100 // past the few writes of TestDirtySource's exact checks

type flaws struct {
	noClear      bool // SyncDirty does not clear
	overwriteDst bool // SyncDirty stores instead of ORing
	pastEnd      bool // SyncDirty sets a bit past the page count
	loseRacing   bool // SyncDirty clears a bit set between its copy and its clear
	dropLast     bool // SyncDirty never reports the last page
	noRangeErr   bool // out-of-range page numbers wrap instead of failing
	keepBuf      bool // WritePage keeps the caller's slice
	zeroNoop     bool // ZeroPage does nothing
	readOverrun  bool // ReadPage writes a byte past dst (through its capacity)
	readShort    bool // ReadPage leaves the last byte of dst unwritten
	readUnstable bool // ReadPage returns different bytes each time
}

func newRef(pages uint64, ps int, f flaws) *ref {
	r := &ref{ps: ps, pages: make([][]byte, pages), dirty: make([]uint64, livemig.WordsFor(pages)), flaws: f}
	r.waiting, r.open, r.landed = make(chan struct{}), make(chan struct{}), make(chan struct{})
	for i := range r.pages {
		r.pages[i] = make([]byte, ps)
	}
	return r
}

func (r *ref) PageSize() int     { return r.ps }
func (r *ref) PageCount() uint64 { return uint64(len(r.pages)) }

func (r *ref) check(n uint64, op string) (uint64, error) {
	if n >= uint64(len(r.pages)) {
		if r.noRangeErr {
			return n % uint64(len(r.pages)), nil
		}
		return 0, &livemig.PageError{Op: op, Page: n, Err: livemig.ErrPageRange}
	}
	return n, nil
}

func (r *ref) ReadPage(n uint64, dst []byte) error {
	n, err := r.check(n, "read")
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.readShort:
		copy(dst[:len(dst)-1], r.pages[n])
	case r.readUnstable:
		copy(dst, r.pages[n])
		r.reads++
		dst[len(dst)/2] ^= byte(r.reads)
	default:
		copy(dst, r.pages[n])
	}
	if r.readOverrun {
		// A bug through unsafe memory, modelled by the guard the check puts
		// after dst: write into the bytes right after it.
		overrun(dst)
	}
	return nil
}

// overrun is set by the test to reach the bytes after dst.
var overrun = func([]byte) {}

func (r *ref) write(n uint64) {
	if r.loseRacing && r.writes.Add(1) == raceAt {
		close(r.waiting)
		<-r.open
		defer close(r.landed)
	}
	r.mu.Lock()
	r.pages[n][0]++
	bitmap.Words(r.dirty).Set(n)
	r.mu.Unlock()
}

// poke writes page n without marking it dirty; mark marks it.
func (r *ref) poke(n uint64) {
	r.mu.Lock()
	r.pages[n][0]++
	r.mu.Unlock()
}

func (r *ref) mark(n uint64) {
	r.mu.Lock()
	bitmap.Words(r.dirty).Set(n)
	r.mu.Unlock()
}

func (r *ref) SyncDirty(dst []uint64) error {
	if r.loseRacing {
		// Copy under the lock, then clear under it again: writes in
		// between are lost.
		snap := make([]uint64, len(r.dirty))
		r.mu.Lock()
		copy(snap, r.dirty)
		r.mu.Unlock()
		select {
		case <-r.waiting:
			r.once.Do(func() { close(r.open); <-r.landed })
		default:
		}
		r.mu.Lock()
		for i := range snap {
			dst[i] |= snap[i]
			r.dirty[i] = 0
		}
		r.mu.Unlock()
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, w := range r.dirty {
		if r.dropLast && i == len(r.dirty)-1 {
			last := uint64(len(r.pages)-1) % 64
			w &^= 1 << last
		}
		if r.overwriteDst {
			dst[i] = w
		} else {
			dst[i] |= w
		}
		if !r.noClear {
			r.dirty[i] = 0
		}
	}
	if r.pastEnd {
		dst[len(r.dirty)] |= 1
	}
	return nil
}

func (r *ref) WritePage(n uint64, data []byte) error {
	n, err := r.check(n, "write")
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keepBuf {
		r.pages[n] = data
		return nil
	}
	copy(r.pages[n], data)
	return nil
}

func (r *ref) ZeroPage(n uint64) error {
	n, err := r.check(n, "zero")
	if err != nil {
		return err
	}
	if !r.zeroNoop {
		r.mu.Lock()
		clear(r.pages[n])
		r.mu.Unlock()
	}
	return nil
}

// fakeTB records failures. Fatalf records and stops the check the way
// testing.T does, by ending the goroutine; the checks run in a goroutine
// of their own here.
type fakeTB struct {
	mu     sync.Mutex
	failed []string
}

func (f *fakeTB) Helper()             {}
func (f *fakeTB) Logf(string, ...any) {}
func (f *fakeTB) Errorf(s string, a ...any) {
	f.mu.Lock()
	f.failed = append(f.failed, fmt.Sprintf(s, a...))
	f.mu.Unlock()
}
func (f *fakeTB) Fatalf(s string, a ...any) {
	f.Errorf(s, a...)
	runtime.Goexit()
}

// run runs check against a fake TB and returns its failures.
func run(check func(TB)) []string {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		check(f)
	}()
	<-done
	return f.failed
}

func all(r *ref) func(TB) {
	return func(t TB) {
		TestMemory(t, r)
		TestDirtySource(t, r, r.PageCount(), r.write)
		TestPageSink(t, r, r, r.ps, r.PageCount(), nil)
	}
}

func TestReferencePasses(t *testing.T) {
	for _, pages := range []uint64{1, 2, 63, 64, 65, 1000} {
		if failed := run(all(newRef(pages, 64, flaws{}))); len(failed) != 0 {
			t.Errorf("%d pages: the reference fails: %q", pages, failed)
		}
	}
	// And through a real *testing.T.
	r := newRef(300, 128, flaws{})
	TestMemory(t, r)
	TestDirtySource(t, r, 300, r.write)
	TestPageSink(t, r, r, 128, 300, nil)
}

func TestBrokenFail(t *testing.T) {
	cases := []struct {
		name string
		f    flaws
		want string // in some failure message
	}{
		{"no clear", flaws{noClear: true}, "must clear"},
		{"overwrite dst", flaws{overwriteDst: true}, "it must OR"},
		{"bits past end", flaws{pastEnd: true}, "past the"},
		{"loses racing writes", flaws{loseRacing: true}, "never reported"},
		{"drops last page", flaws{dropLast: true}, "did not report it"},
		{"no range error", flaws{noRangeErr: true}, "ErrPageRange"},
		{"keeps buffer", flaws{keepBuf: true}, "caller's buffer changed"},
		{"zero does nothing", flaws{zeroNoop: true}, "after ZeroPage"},
		{"read leaves last byte", flaws{readShort: true}, "left byte 63 of dst unwritten"},
		{"reads differ", flaws{readUnstable: true}, "two reads of the page, with nothing writing it, differ at byte 32"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			failed := run(all(newRef(1000, 64, c.f)))
			if len(failed) == 0 {
				t.Fatal("the checks passed a broken implementation")
			}
			if !strings.Contains(strings.Join(failed, "\n"), c.want) {
				t.Errorf("no failure says %q: %q", c.want, failed)
			}
		})
	}
}

func TestReadOverrunFails(t *testing.T) {
	defer func() { overrun = func([]byte) {} }()
	// The bug a ReadPage through unsafe memory can have: one byte written
	// past dst. The check surrounds dst with guard bytes of its own, so the
	// write lands in them.
	// Only the first read overruns: it is the check's guarded one, and
	// later reads go to buffers without guard bytes.
	var once sync.Once
	overrun = func(dst []byte) {
		once.Do(func() { *(*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(dst)), len(dst))) = 0 })
	}
	failed := run(func(t TB) { TestMemory(t, newRef(10, 64, flaws{readOverrun: true})) })
	if !strings.Contains(strings.Join(failed, "\n"), "wrote outside") {
		t.Fatalf("a ReadPage that writes past dst: %q", failed)
	}
}

func TestFatalStopsCheck(t *testing.T) {
	failed := run(func(t TB) { TestMemory(t, newRef(0, 64, flaws{})) })
	if len(failed) != 1 || !strings.Contains(failed[0], "must be positive") {
		t.Errorf("empty memory: %q", failed)
	}
}

// stepVM is a guest on a ref whose one vCPU writes a few pages each time
// step is called (the passing of time, for TestVM's run), and whose control
// follows the livemig.VM contract but for its vmFlaws.
type stepVM struct {
	*ref
	vmFlaws
	mu       sync.Mutex
	paused   bool
	stopping bool     // lagPause: paused, but the vCPU runs one more step
	held     []uint64 // lagLog: pages written whose marks are not in the log yet
	rng      *rand.Rand
	state    []byte
}

type vmFlaws struct {
	lagPause    bool // Pause returns before the vCPU stops: it runs one more step
	lagLog      bool // a step's dirty marks reach the log at the next step; Pause does not flush them
	noResume    bool // Resume returns nil but the vCPU stays stopped
	strictPause bool // Pause of a paused guest fails
	failPauses  bool // a Pause that fails (its ctx is done) pauses the guest all the same
	overwrite   bool // SaveState writes the state over dst instead of appending
	rejectLoad  bool // LoadState rejects what SaveState saved
}

func newStepVM(pages uint64, f vmFlaws) *stepVM {
	return &stepVM{ref: newRef(pages, 64, flaws{}), vmFlaws: f, rng: rand.New(rand.NewPCG(11, 12)),
		state: []byte("vcpu registers and device state")}
}

func (v *stepVM) step() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.paused && !v.stopping {
		return
	}
	v.stopping = false
	for _, n := range v.held {
		v.mark(n)
	}
	v.held = v.held[:0]
	for i := 0; i < 4; i++ {
		n := v.rng.Uint64N(v.PageCount())
		if v.lagLog {
			v.poke(n)
			v.held = append(v.held, n)
		} else {
			v.write(n)
		}
	}
}

func (v *stepVM) Pause(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := ctx.Err(); err != nil {
		if v.failPauses {
			v.paused = true
		}
		return err
	}
	if v.paused && v.strictPause {
		return errors.New("already paused")
	}
	if !v.paused {
		v.paused, v.stopping = true, v.lagPause
	}
	return nil
}

func (v *stepVM) Resume(context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.noResume {
		v.paused, v.stopping = false, false
	}
	return nil
}

func (v *stepVM) SaveState(_ context.Context, dst []byte) ([]byte, error) {
	if v.overwrite {
		return append(dst[:0], v.state...), nil
	}
	return append(dst, v.state...), nil
}

func (v *stepVM) LoadState(_ context.Context, state []byte) error {
	if v.rejectLoad || !bytes.Equal(state, v.state) {
		return fmt.Errorf("state %q is not one this VM saves", state)
	}
	return nil
}

func (v *stepVM) check(t TB) { TestVM(t, v, v, v, v.step) }

func TestVMReferencePasses(t *testing.T) {
	for _, pages := range []uint64{1, 64, 200, 3000} {
		if failed := run(newStepVM(pages, vmFlaws{}).check); len(failed) != 0 {
			t.Errorf("%d pages: the reference VM fails: %q", pages, failed)
		}
	}
	newStepVM(300, vmFlaws{}).check(t) // through a real *testing.T
}

func TestVMBrokenFail(t *testing.T) {
	cases := []struct {
		name string
		f    vmFlaws
		want string // in some failure message
	}{
		{"pause returns before the vCPU stops", vmFlaws{lagPause: true}, "Pause returned but page"},
		{"pause leaves marks unflushed", vmFlaws{lagLog: true}, "was written before Pause returned but no SyncDirty after Pause reported it"},
		{"resume does not resume", vmFlaws{noResume: true}, "Resume returned but the guest wrote nothing after it"},
		{"second pause fails", vmFlaws{strictPause: true}, "Pause of a paused guest: already paused"},
		{"failed pause pauses", vmFlaws{failPauses: true}, "a Pause that fails must leave the guest running"},
		{"save overwrites dst", vmFlaws{overwrite: true}, "it must append to dst"},
		{"load rejects", vmFlaws{rejectLoad: true}, "LoadState must accept what SaveState saved"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			failed := run(newStepVM(200, c.f).check)
			if len(failed) == 0 {
				t.Fatal("TestVM passed a broken VM")
			}
			if !strings.Contains(strings.Join(failed, "\n"), c.want) {
				t.Errorf("no failure says %q: %q", c.want, failed)
			}
		})
	}
}

// TestVMRegion runs TestVM on a region.Region written by goroutines, the
// guest of the engines' real-memory tests.
func TestVMRegion(t *testing.T) {
	r := testkit.NewSource(t, 4096, 512)
	stop, total := testkit.Writers(r, 3)
	defer stop()
	TestVM(t, r, r, r, nil)
	if r.Paused() || total() == 0 {
		t.Errorf("after TestVM: paused %v, %d writes", r.Paused(), total())
	}
}

// pauselessRegion is a region whose Pause returns at once and leaves its
// writers running.
type pauselessRegion struct{ *region.Region }

func (pauselessRegion) Pause(context.Context) error { return nil }

// TestVMRegionPauseLies: goroutines writing a region that Pause does not
// stop are caught.
func TestVMRegionPauseLies(t *testing.T) {
	const writers = 3
	r := testkit.NewSource(t, 4096, 512)
	stop, total := testkit.Writers(r, writers)
	defer stop()
	// run waits until some writer has finished a write begun after run
	// started (a writer counts a write before making it, so writers+1
	// counts mean one writer counted twice): the writers' writes land
	// within the check's window whatever the scheduling. With a Pause that
	// stopped the writers, this run would wait for ever.
	step := func() {
		n := total()
		for total() < n+writers+1 {
			runtime.Gosched()
		}
	}
	failed := run(func(t TB) { TestVM(t, pauselessRegion{r}, r, r, step) })
	if !strings.Contains(strings.Join(failed, "\n"), "Pause returned but page") {
		t.Fatalf("a Pause that does not stop the writers: %q", failed)
	}
}

package livemigtest

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/livemig/livemig"
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
	r.dirty[n/64] |= 1 << (n % 64)
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

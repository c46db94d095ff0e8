//go:build linux

package faultmem

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ps = 4096

// newOrSkip makes a Region, skipping the test where userfaultfd is
// unavailable unless LIVEMIG_REQUIRE_UFFD=1 demands it. Cleanup closes it.
func newOrSkip(tb testing.TB, pages uint64, cfg Config) *Region {
	tb.Helper()
	r, err := New(ps, pages, cfg)
	if err != nil {
		testkit.SkipOrFail(tb, err, "userfaultfd", "LIVEMIG_REQUIRE_UFFD")
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return r
}

// content is the source's copy of page n: seeded pseudo-random bytes, or
// zeros for every fifth page.
func content(n uint64) []byte {
	p := make([]byte, ps)
	if n%5 == 0 {
		return p
	}
	rng := rand.New(rand.NewPCG(42, n))
	for i := 0; i < ps; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	return p
}

// The guest's accesses are plain loads and stores in Go code, never copy()
// or bytes.Equal over the region (see the package doc).

//go:noinline
func guestEqual(mem []byte, off int, want []byte) bool {
	for i, w := range want {
		if mem[off+i] != w {
			return false
		}
	}
	return true
}

//go:noinline
func guestStore(mem []byte, off int, p []byte) {
	for i, b := range p {
		mem[off+i] = b
	}
}

//go:noinline
func guestLoad(mem []byte, i int) byte { return mem[i] }

const slot = 64 // each guest goroutine owns bytes [g*slot, (g+1)*slot) of every page

func marker(g int, n uint64) []byte {
	m := make([]byte, slot)
	for i := range m {
		m[i] = byte(g+1)<<5 ^ byte(n) ^ byte(i) | 1 // never zero
	}
	return m
}

// TestGuestsFaultFeeder: 4 guest goroutines read and write 4,096 missing
// pages in seeded random orders while a feeder places each page on its
// first fault (WritePage, or ZeroPage for the zero pages). Each guest sees
// exactly the placed contents, then its own writes; every page is requested
// exactly once, and the memory ends as placed contents plus the guests'
// slots.
func TestGuestsFaultFeeder(t *testing.T) {
	const pages, guests = 4096, 4
	// A guest blocked in a fault keeps its P: leave Ps for the handler and
	// the feeder (see the package doc).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(guests + 2))
	src := make([][]byte, pages)
	for n := range src {
		src[n] = content(uint64(n))
	}
	reqs := make(chan uint64, pages) // OnFault reports each page once
	r := newOrSkip(t, pages, Config{OnFault: func(n uint64) { reqs <- n }})
	feederDone := make(chan error, 1)
	go func() {
		var err error
		for n := range reqs {
			if n%5 == 0 {
				err = errors.Join(err, r.ZeroPage(n))
			} else {
				err = errors.Join(err, r.WritePage(n, src[n]))
			}
		}
		feederDone <- err
	}()

	mem := r.Bytes()
	var wg sync.WaitGroup
	errs := make(chan string, guests)
	for g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(7, uint64(g)))
			for _, i := range rng.Perm(pages) {
				n := uint64(i)
				off := i*ps + g*slot
				mine := marker(g, n)
				if rng.IntN(2) == 0 { // read first
					if !guestEqual(mem, off, src[n][g*slot:(g+1)*slot]) {
						errs <- "guest read of a fresh page differs from the placed contents"
						return
					}
					guestStore(mem, off, mine)
				} else { // write first: the write waits for the page, then lands on it
					guestStore(mem, off, mine)
				}
				if !guestEqual(mem, off, mine) {
					errs <- "guest does not read back its own write"
					return
				}
				// A byte outside every slot still holds the placed contents.
				if b := guestLoad(mem, i*ps+ps-1); b != src[n][ps-1] {
					errs <- "placed byte outside the slots differs"
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	close(reqs)
	if err := <-feederDone; err != nil {
		t.Fatalf("feeder: %v", err)
	}

	if got := r.Missing(); got != 0 {
		t.Errorf("Missing = %d, want 0", got)
	}
	if got := r.Requests(); got != pages {
		t.Errorf("Requests = %d, want %d (one per page)", got, pages)
	}
	if r.Faults() < pages {
		t.Errorf("Faults = %d, want at least %d", r.Faults(), pages)
	}
	buf := make([]byte, ps)
	for n := range uint64(pages) {
		if !r.Present(n) {
			t.Fatalf("page %d not present", n)
		}
		if err := r.ReadPage(n, buf); err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(src[n])
		for g := range guests {
			copy(want[g*slot:], marker(g, n))
		}
		if !bytes.Equal(buf, want) {
			t.Fatalf("page %d differs from placed contents plus the guests' writes", n)
		}
	}
	fn, p50, p99, maxd := r.FaultStats()
	if fn != pages || p50 <= 0 || p50 > p99 || p99 > maxd {
		t.Errorf("FaultStats = %d, %v, %v, %v: want %d served with 0 < p50 <= p99 <= max", fn, p50, p99, maxd, pages)
	}
	t.Logf("faults %d, requests %d, service p50 %v p99 %v max %v", r.Faults(), r.Requests(), p50, p99, maxd)
}

// TestZeroPageOnFault: the handler itself zero-fills the faulting page; a
// reader sees zeros and a writer's store lands (copy-on-write of the zero
// page is an ordinary fault).
func TestZeroPageOnFault(t *testing.T) {
	// The handler learns of r through an atomic: a fault is no Go
	// synchronization, so the race detector would flag a plain variable.
	var rp atomic.Pointer[Region]
	placed := make(chan struct{}, 8)
	r := newOrSkip(t, 8, Config{OnFault: func(n uint64) {
		if _, err := rp.Load().PlaceZero(n); err != nil {
			t.Error(err)
		}
		placed <- struct{}{}
	}})
	rp.Store(r)
	mem := r.Bytes()
	for i := 0; i < ps; i += 512 {
		if b := guestLoad(mem, 3*ps+i); b != 0 {
			t.Fatalf("byte %d of a zero-placed page is %#x", i, b)
		}
	}
	guestStore(mem, 5*ps+100, []byte{1, 2, 3})
	if !guestEqual(mem, 5*ps+99, []byte{0, 1, 2, 3, 0}) {
		t.Fatal("write to a zero-faulted page not read back")
	}
	// The guest runs on as soon as the kernel maps the page; the present
	// bit follows when PlaceZero returns.
	<-placed
	<-placed
	if r.Missing() != 6 || !r.Present(3) || !r.Present(5) || r.Present(4) {
		t.Fatalf("presence wrong (faults %d requests %d): missing %d, 3:%v 4:%v 5:%v", r.Faults(), r.Requests(), r.Missing(), r.Present(3), r.Present(4), r.Present(5))
	}
}

// TestPresence: placements set exactly their bits; ReadPage of a missing
// page fails at once with ErrMissing; bad page numbers and buffer sizes are
// errors.
func TestPresence(t *testing.T) {
	const pages = 200
	r := newOrSkip(t, pages, Config{})
	for n := uint64(0); n < pages; n += 3 {
		if err := r.WritePage(n, content(n)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, ps)
	for n := range uint64(pages) {
		want := n%3 == 0
		if r.Present(n) != want {
			t.Fatalf("Present(%d) = %v, want %v", n, !want, want)
		}
		err := r.ReadPage(n, buf)
		switch {
		case want && err != nil:
			t.Fatal(err)
		case want && !bytes.Equal(buf, content(n)):
			t.Fatalf("page %d differs", n)
		case !want && !errors.Is(err, ErrMissing):
			t.Fatalf("ReadPage(%d) of a missing page = %v, want ErrMissing", n, err)
		}
	}
	if got, want := r.Missing(), uint64(pages-(pages+2)/3); got != want {
		t.Fatalf("Missing = %d, want %d", got, want)
	}
	var pe *livemig.PageError
	if err := r.WritePage(pages, buf); !errors.Is(err, livemig.ErrPageRange) || !errors.As(err, &pe) || pe.Page != pages {
		t.Fatalf("WritePage past the end = %v", err)
	}
	if err := r.ZeroPage(pages); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("ZeroPage past the end = %v", err)
	}
	if _, err := r.Place(1<<40, buf); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("Place past the end = %v", err)
	}
	if err := r.ReadPage(pages, buf); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("ReadPage past the end = %v", err)
	}
	if err := r.WritePage(1, buf[:100]); err == nil || r.Present(1) {
		t.Fatalf("WritePage of a short buffer = %v", err)
	}
	if r.Present(pages) {
		t.Fatal("Present past the end")
	}
	if r.Faults() != 0 {
		t.Fatalf("Faults = %d without any guest access", r.Faults())
	}
}

// TestOverwriteBeforeResume: before the guest runs, the newest copy of a
// page wins, whether it is data or zeros.
func TestOverwriteBeforeResume(t *testing.T) {
	r := newOrSkip(t, 4, Config{})
	buf := make([]byte, ps)
	steps := []struct {
		zero bool
		data []byte
	}{{data: content(1)}, {data: content(2)}, {zero: true}, {data: content(3)}, {zero: true}}
	for i, s := range steps {
		var err error
		want := make([]byte, ps)
		if s.zero {
			err = r.ZeroPage(2)
		} else {
			err = r.WritePage(2, s.data)
			want = s.data
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ReadPage(2, buf); err != nil || !bytes.Equal(buf, want) {
			t.Fatalf("step %d: page is not the newest copy (err %v)", i, err)
		}
	}
	// A page placed as zeros first, then written.
	if err := r.ZeroPage(3); err != nil {
		t.Fatal(err)
	}
	if err := r.WritePage(3, content(4)); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadPage(3, buf); err != nil || !bytes.Equal(buf, content(4)) {
		t.Fatalf("zero page overwritten: err %v, equal %v", err, bytes.Equal(buf, content(4)))
	}
	if r.Missing() != 2 {
		t.Fatalf("Missing = %d, want 2", r.Missing())
	}
}

// TestPlaceKeepsGuestBytes: after resume, Place and PlaceZero on a present
// page report placed == false and leave what the guest wrote.
func TestPlaceKeepsGuestBytes(t *testing.T) {
	r := newOrSkip(t, 4, Config{})
	placed, err := r.Place(1, content(1))
	if err != nil || !placed {
		t.Fatalf("Place of a missing page = %v, %v", placed, err)
	}
	mem := r.Bytes()
	guestStore(mem, ps+10, []byte("guest"))
	want := bytes.Clone(content(1))
	copy(want[10:], "guest")
	for _, place := range []func() (bool, error){
		func() (bool, error) { return r.Place(1, content(9)) },
		func() (bool, error) { return r.PlaceZero(1) },
	} {
		placed, err := place()
		if err != nil || placed {
			t.Fatalf("Place of a present page = %v, %v; want false, nil", placed, err)
		}
	}
	buf := make([]byte, ps)
	if err := r.ReadPage(1, buf); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("guest's bytes lost (err %v)", err)
	}
	if placed, err := r.PlaceZero(2); err != nil || !placed {
		t.Fatalf("PlaceZero of a missing page = %v, %v", placed, err)
	}
}

// TestConcurrentPlacers: two goroutines place each page at once (the loser
// gets EEXIST from the kernel): exactly one wins, its copy is the page, and
// the missing count drops once per page.
func TestConcurrentPlacers(t *testing.T) {
	const pages = 512
	r := newOrSkip(t, pages, Config{})
	a, b := content(1), content(2)
	var wg sync.WaitGroup
	wins := make([][2]bool, pages)
	for n := range uint64(pages) {
		start := make(chan struct{})
		for who := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				var placed bool
				var err error
				switch {
				case who == 0:
					placed, err = r.Place(n, a)
				case n%2 == 0:
					placed, err = r.Place(n, b)
				default:
					placed, err = r.PlaceZero(n)
				}
				if err != nil {
					t.Error(err)
				}
				wins[n][who] = placed
			}()
		}
		close(start)
	}
	wg.Wait()
	buf := make([]byte, ps)
	for n := range uint64(pages) {
		w := wins[n]
		if w[0] == w[1] {
			t.Fatalf("page %d: placed = %v, want exactly one winner", n, w)
		}
		want := a
		if w[1] {
			want = b
			if n%2 == 1 {
				want = make([]byte, ps)
			}
		}
		if err := r.ReadPage(n, buf); err != nil || !bytes.Equal(buf, want) {
			t.Fatalf("page %d is not the winner's copy (err %v)", n, err)
		}
	}
	if r.Missing() != 0 {
		t.Fatalf("Missing = %d, want 0", r.Missing())
	}
}

// TestStopReleasesBlockedGuest: a guest blocked on a page nobody sends is
// released by Stop (it reads zeros), Close after joining it does not hang,
// and the handler goroutine is gone (goleak, in TestMain).
func TestStopReleasesBlockedGuest(t *testing.T) {
	faulted := make(chan uint64, 1)
	r := newOrSkip(t, 16, Config{OnFault: func(n uint64) { faulted <- n }})
	mem := r.Bytes()
	got := make(chan byte)
	go func() { got <- guestLoad(mem, 7*ps+1) }()
	if n := <-faulted; n != 7 {
		t.Fatalf("fault on page %d, want 7", n)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != 0 {
		t.Fatalf("released guest read %#x, want 0", b)
	}
	if err := r.WritePage(1, content(1)); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("WritePage after Stop = %v, want ErrClosed", err)
	}
	if _, err := r.Place(1, content(1)); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Place after Stop = %v, want ErrClosed", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if r.Bytes() != nil {
		t.Fatal("Bytes after Close not nil")
	}
	if err := r.ReadPage(1, make([]byte, ps)); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("ReadPage after Close = %v, want ErrClosed", err)
	}
}

func TestNewRejectsBadGeometry(t *testing.T) {
	for _, c := range []struct {
		ps    int
		pages uint64
	}{{100, 10}, {2048, 10}, {3 * 4096, 10}, {4096, 0}, {4096, 1 << 40}} {
		if r, err := New(c.ps, c.pages, Config{}); err == nil {
			r.Close()
			t.Errorf("New(%d, %d) accepted", c.ps, c.pages)
		}
	}
}

// TestLargePages: a page of several host pages is placed whole.
func TestLargePages(t *testing.T) {
	r, err := New(4*ps, 4, Config{})
	if err != nil {
		newOrSkip(t, 1, Config{}) // skips or fails as userfaultfd allows
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte{0xC3}, 4*ps)
	if err := r.WritePage(2, data); err != nil {
		t.Fatal(err)
	}
	if b := guestLoad(r.Bytes(), 2*4*ps+3*ps+5); b != 0xC3 {
		t.Fatalf("last host page of a large page holds %#x", b)
	}
}

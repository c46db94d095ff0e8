//go:build linux

package postcopy_test

import (
	"context"
	"encoding/binary"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// faultMem is the real destination: a userfaultfd region whose guest
// goroutines block in the kernel on missing pages.
type faultMem struct{ *faultmem.Region }

// store is a plain Go store into the region (see faultmem's package doc:
// no copy() or runtime routine may take the fault).
func (f faultMem) store(_ context.Context, n uint64, off int, v uint64) error {
	b := f.Bytes()
	binary.LittleEndian.PutUint64(b[int(n)*pageSize+off:], v)
	return nil
}

func (f faultMem) contents() []byte { return f.Bytes() }

// release stops fault service so that guests blocked on missing pages of a
// failed migration go on (they read zeros).
func (f faultMem) release() { _ = f.Stop() }

// newFaultMem maps a userfaultfd region, skipping the test where
// userfaultfd is unavailable unless LIVEMIG_REQUIRE_UFFD=1.
func newFaultMem(t *testing.T, pages uint64, onFault func(uint64)) guestMem {
	return faultMem{openFaultMem(t, pages, onFault)}
}

// openFaultMem maps a userfaultfd region reporting faults to onFault; it
// is closed at the end of the test.
func openFaultMem(t testing.TB, pages uint64, onFault func(uint64)) *faultmem.Region {
	t.Helper()
	r, err := faultmem.New(pageSize, pages, faultmem.Config{OnFault: onFault})
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd", "LIVEMIG_REQUIRE_UFFD")
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return r
}

// moreProcs raises GOMAXPROCS above the guest goroutines plus the placers,
// as faultmem asks: a goroutine blocked on a missing page keeps its P.
func moreProcs(t testing.TB, guests int) {
	old := runtime.GOMAXPROCS(guests + 4)
	t.Cleanup(func() { runtime.GOMAXPROCS(old) })
}

// The real thing: a region source written by goroutines until the pause, a
// userfaultfd destination whose guest goroutines write from the moment it
// resumes, over loopback TCP. Afterwards every page equals the source at
// pause time plus what the destination's guests wrote, byte for byte. The
// hybrid case writes the pre-copy rounds into the region (WritePage) and
// discards the stale copies (MADV_DONTNEED) before the guests run.
func TestRealPostCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    setup
	}{
		{"main connection", setup{pages: 8192, guests: 4, srcWriters: 2, writes: 2000, tcp: true}},
		{"urgent connection", setup{pages: 8192, guests: 4, srcWriters: 2, writes: 2000, tcp: true, urgent: true}},
		{"hybrid", setup{pages: 8192, guests: 4, srcWriters: 2, writes: 2000, tcp: true, urgent: true, preRounds: 3, dirtyAtPause: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.s
			s.mem = newFaultMem
			moreProcs(t, s.guests)
			o := run(t, s)
			checkComplete(t, s, o)
			rep := o.rep
			if s.preRounds > 0 {
				// Pages cross more than once, and the guests may find every
				// page they touch present.
				if final := rep.Rounds[len(rep.Rounds)-1]; o.drep.Discarded == 0 || o.drep.Discarded != final.DirtyPages {
					t.Fatalf("discarded %d pages, %d to push after the switchover", o.drep.Discarded, final.DirtyPages)
				}
			} else if rep.PagesSent-rep.PagesResent != s.pages || (!s.urgent && rep.PagesSent != s.pages) || rep.PostCopy.DemandFaults == 0 {
				t.Fatalf("%d pages sent, %d re-sent, guest of %d, %d demand faults", rep.PagesSent, rep.PagesResent, s.pages, rep.PostCopy.DemandFaults)
			}
			t.Logf("%v", rep)
		})
	}
}

// Recovery with real memory: the link is cut at several points after the
// switchover, reconnected, and the migration finishes with the memory
// right.
func TestRealRecovery(t *testing.T) {
	for _, tc := range []struct {
		name      string
		preRounds int
		cut       func(e postcopy.Event, src, dst *cutLink)
	}{
		{"in the commit", 0, func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.HandedOver {
				src.Arm(5)
			}
		}},
		{"mid push", 0, func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.Pushing && e.Pages >= 2048 {
				src.Arm(300 << 10)
			}
		}},
		{"return path", 0, func(e postcopy.Event, _, dst *cutLink) {
			if e.Kind == postcopy.Pushing && e.Pages >= 1024 {
				dst.Arm(40) // a request or two, or the final ack
			}
		}},
		{"hybrid, in the commit", 2, func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.HandedOver {
				src.Arm(5)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := setup{pages: 8192, guests: 4, srcWriters: 1, writes: 2000, tcp: true, recover: true, urgent: true,
				preRounds: tc.preRounds, mem: newFaultMem, cut: once(tc.cut)}
			moreProcs(t, s.guests)
			o := run(t, s)
			checkComplete(t, s, o)
			if o.drep.Reconnects != 1 {
				t.Fatalf("%d reconnections, want 1", o.drep.Reconnects)
			}
			t.Logf("%d pages re-sent\n%v", o.rep.PagesResent, o.rep)
		})
	}
}

// requestLog is the destination's connection, noting the pages it has
// requested once the request is written.
type requestLog struct {
	transport.Conn
	sent []atomic.Bool
}

func (c *requestLog) Send(ctx context.Context, m transport.Msg) error {
	err := c.Conn.Send(ctx, m)
	if err == nil && m.Kind == wire.KindRequest && m.Page < uint64(len(c.sent)) {
		c.sent[m.Page].Store(true)
	}
	return err
}

// While Receive runs, a FaultQueue is served directly: the request for a
// faulted page is on the wire when Fault returns on faultmem's handler
// goroutine, with no hop through the engine's requester. Once Receive has
// returned, faults are queued for NextFault again.
func TestRealFaultRequestedFromHandler(t *testing.T) {
	const pages = 256
	ctx := context.Background()
	src := newSource(t, pages)
	faults := postcopy.NewFaultQueue(pages, nil)
	var c *requestLog
	var checking atomic.Bool
	var checked, late atomic.Int32 // faults checked, and of them not yet requested when Fault returned
	r := openFaultMem(t, pages, func(n uint64) {
		faults.Fault(n)
		if checking.Load() {
			checked.Add(1)
			if !c.sent[n].Load() {
				late.Add(1)
			}
		}
	})
	a, bl := linkPair(t, true)
	ca, cb, err := openPair(ctx, a, bl, pages)
	if err != nil {
		t.Fatal(err)
	}
	c = &requestLog{Conn: cb, sent: make([]atomic.Bool, pages)}
	vm := newDstVM()
	// The push is held (it sends one page, then waits for hours): the pages
	// come by request.
	wait := migrateAsync(ctx, ca, c, precopy.Source{Memory: src, VM: src},
		postcopy.Destination{Memory: r, VM: vm, Faults: faults, Pages: pages, PageSize: pageSize},
		postcopy.Config{Prepage: -1, PushBandwidth: 1}, postcopy.Config{})
	<-vm.started
	mem := r.Bytes()
	for n := pages - 1; n >= 0; n-- {
		touched += mem[n*pageSize]
		// The first page that came by request shows that the engine
		// serves faults (it switches to direct service before any
		// request): check the faults from then on.
		if c.sent[n].Load() {
			checking.Store(true)
		}
	}
	wait().ok(t)
	if checked.Load() < pages/2 || late.Load() != 0 {
		t.Fatalf("%d faults checked, %d of them not yet requested when Fault returned", checked.Load(), late.Load())
	}
	faults.Fault(7)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if n, _, err := faults.NextFault(cctx); err != nil || n != 7 {
		t.Fatalf("NextFault after Receive = %d, %v; want the queued fault on page 7", n, err)
	}
}

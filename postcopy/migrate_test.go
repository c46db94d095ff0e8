package postcopy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// Pure post-copy into the in-process memory: guests at the destination
// write from the resume; every page crosses the link exactly once; the
// destination ends equal to the source at pause plus the guests' writes.
func TestPostCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    setup
	}{
		{"main connection", setup{pages: 2048, guests: 4, srcWriters: 2}},
		{"urgent connection", setup{pages: 2048, guests: 4, srcWriters: 2, urgent: true}},
		{"no prepaging", setup{pages: 1024, guests: 2, prepage: -1}},
		{"descending push", setup{pages: 1024, guests: 2, order: &descending{}}},
		{"odd size", setup{pages: 1000, guests: 3, urgent: true}},
		{"multi-stream", setup{pages: 2048, guests: 4, srcWriters: 2, streams: 3}},
		{"multi-stream, urgent", setup{pages: 2048, guests: 4, srcWriters: 2, streams: 2, urgent: true, tcp: true}},
		// No source writers: they fill pages with counters, and how
		// compressible the memory is would depend on how long they ran.
		// The push is capped (8 MiB at 32 MiB/s: 250 ms): compressed, it
		// took about a millisecond, done before a loaded machine ran the
		// guests, which then faulted on nothing.
		{"lz4", setup{pages: 2048, guests: 4, urgent: true, lz4: true, pushBandwidth: 32 << 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := run(t, tc.s)
			checkComplete(t, tc.s, o)
			rep := o.rep
			// Every page crosses once: a duplicate can only come from the
			// urgent connection serving a page the push had sent.
			if rep.PagesSent-rep.PagesResent != tc.s.pages || (!tc.s.urgent && rep.PagesSent != tc.s.pages) {
				t.Fatalf("%d pages sent, %d re-sent, guest of %d", rep.PagesSent, rep.PagesResent, tc.s.pages)
			}
			if rep.PagesResent != o.drep.Duplicates {
				t.Fatalf("source re-sent %d pages, destination dropped %d", rep.PagesResent, o.drep.Duplicates)
			}
			if len(rep.Rounds) != 1 || !rep.Rounds[0].Final || rep.Algorithm != "post-copy" {
				t.Fatalf("rounds %+v, algorithm %q", rep.Rounds, rep.Algorithm)
			}
			if rep.PostCopy.DemandFaults == 0 {
				t.Fatalf("no demand faults with %d guests: %+v", tc.s.guests, rep.PostCopy)
			}
			// With LZ4 the pages go compressed (testkit's pattern, one
			// word in eight, compresses).
			if c := rep.Codec; tc.s.lz4 != (c != nil) || tc.s.lz4 && (c.LZ4Pages == 0 || c.Ratio() < 1.5 || rep.BytesSent >= tc.s.pages*pageSize/2) {
				t.Fatalf("lz4 %v: codec figures %+v, %d bytes sent", tc.s.lz4, c, rep.BytesSent)
			}
			t.Logf("%v", rep)
		})
	}
}

// Config.PushBandwidth caps the push, and Migrate keeps to the Core's
// schedule: on a virtual clock, which the source's waits move, the push of
// 16 MiB at 64 MiB/s takes 250 ms of it, whatever the machine's load. (The
// schedule itself, and its catch-up after a late wake, are
// TestCorePushKeepsItsRate's; BenchmarkPushBandwidth measures the rate on
// the wall clock.)
func TestPushBandwidth(t *testing.T) {
	const pages, bw = 4096, 64 << 20 // 16 MiB: 250 ms at the cap
	clock := livemig.NewVirtualClock()
	rep := pushCapped(t, pages, bw, clock)
	atCap := time.Duration(float64(rep.BytesSent) / bw * float64(time.Second))
	// The first pushSlack of the schedule may go at once.
	if took := rep.TotalTime; took < atCap-10*time.Millisecond || took > atCap+time.Millisecond {
		t.Fatalf("%d bytes in %v of virtual time, %v at the cap", rep.BytesSent, took, atCap)
	}
}

// BenchmarkPushBandwidth is a post-copy push capped at 64 MiB/s on the wall
// clock, over an in-memory pipe: ratio is the rate achieved over the cap
// (1: the cap kept; a sleep that overshoots and is not made up shows below
// it).
func BenchmarkPushBandwidth(b *testing.B) {
	const pages, bw = 4096, 64 << 20
	b.SetBytes(pages * pageSize)
	var ratio float64
	for range b.N {
		t0 := time.Now()
		rep := pushCapped(b, pages, bw, livemig.WallClock{})
		ratio += float64(rep.BytesSent) / time.Since(t0).Seconds() / bw
	}
	b.ReportMetric(ratio/float64(b.N), "ratio")
}

// pushCapped migrates a guest of pages pages by post-copy with the push
// capped at bw bytes a second, the source on clock, and returns the
// source's report.
func pushCapped(tb testing.TB, pages uint64, bw int64, clock livemig.Clock) *livemig.Report {
	tb.Helper()
	ctx := context.Background()
	src := newSource(tb, pages)
	mem, err := postcopy.NewHeapMemory(pageSize, pages, nil)
	if err != nil {
		tb.Fatal(err)
	}
	a, b := transport.Pipe(1 << 20)
	ca, cb, err := openPair(ctx, a, b, pages)
	if err != nil {
		tb.Fatal(err)
	}
	e := migrateAsync(ctx, ca, cb, precopy.Source{Memory: src, VM: src},
		postcopy.Destination{Memory: mem, VM: newDstVM(), Pages: pages, PageSize: pageSize},
		postcopy.Config{PushBandwidth: bw, Clock: clock}, postcopy.Config{})()
	e.ok(tb)
	return e.rep
}

// descending is an Order that sends pages from the highest down.
type descending struct{ observed int }

func (d *descending) Observe([]uint64) { d.observed++ }
func (d *descending) Name() string     { return "descending" }
func (d *descending) Plan(dst, dirty []uint64) []uint64 {
	for i := len(dirty) - 1; i >= 0; i-- {
		for b := 63; b >= 0; b-- {
			if dirty[i]&(1<<b) != 0 {
				dst = append(dst, uint64(i)*64+uint64(b))
			}
		}
	}
	return dst
}

// Hybrid: pre-copy rounds with writers running, then post-copy; the stale
// copies are discarded, so the destination never runs on an old page.
func TestHybridHeap(t *testing.T) {
	for _, v := range []struct {
		streams int
		lz4     bool
	}{{1, false}, {3, false}, {1, true}} {
		streams := v.streams
		s := setup{pages: 2048, guests: 4, srcWriters: 2, preRounds: 3, dirtyAtPause: 100, streams: streams, lz4: v.lz4}
		o := run(t, s)
		checkComplete(t, s, o)
		rep := o.rep
		if rep.Algorithm != "hybrid" || len(rep.Rounds) < 2 || o.drep.Rounds != len(rep.Rounds)-1 {
			t.Fatalf("%d streams: algorithm %q, %d rounds, destination saw %d pre-copy rounds", streams, rep.Algorithm, len(rep.Rounds), o.drep.Rounds)
		}
		if o.drep.Discarded == 0 || o.drep.Discarded != rep.Rounds[len(rep.Rounds)-1].DirtyPages {
			t.Fatalf("%d streams: discarded %d pages, %d to push after the switchover", streams, o.drep.Discarded, rep.Rounds[len(rep.Rounds)-1].DirtyPages)
		}
		t.Logf("%d streams: %v", streams, rep)
	}
}

// A hybrid migration needs a memory that can discard; one that cannot is
// refused before the resume, and the source keeps running.
func TestHybridNeedsDiscard(t *testing.T) {
	s := setup{pages: 256, dirtyAtPause: 10, preRounds: 2, mem: func(t *testing.T, pages uint64, f func(uint64)) guestMem {
		return noDiscard{heapMemory(t, pages, f)}
	}}
	o := run(t, s)
	if !errors.Is(o.derr, livemig.ErrNotSupported) || !errors.Is(o.err, livemig.ErrPeer) {
		t.Fatalf("source %v, destination %v", o.err, o.derr)
	}
	if o.srcVM.resumes.Load() == 0 && o.srcVM.pauses.Load() != 0 || o.dstVM.resumes.Load() != 0 {
		t.Fatalf("source paused %d resumed %d; destination resumed %d", o.srcVM.pauses.Load(), o.srcVM.resumes.Load(), o.dstVM.resumes.Load())
	}
}

// noDiscard hides HeapMemory's Discard.
type noDiscard struct{ guestMem }

// A cut after the switchover is recovered: the source redials, the
// destination says which pages it holds, the migration finishes and the
// memory is right. Cuts at several points, of either direction.
func TestRecovery(t *testing.T) {
	const pages = 4096
	type point struct {
		name string
		cut  func(e postcopy.Event, src, dst *cutLink)
		dst  func(e postcopy.Event, src, dst *cutLink)
	}
	points := []point{
		{"in the commit (destination in doubt)", func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.HandedOver {
				src.Arm(5)
			}
		}, nil},
		{"early in the push", func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.Pushing && e.Pages >= 1024 {
				src.Arm(64 << 10)
			}
		}, nil},
		{"later in the push", func(e postcopy.Event, src, _ *cutLink) {
			// The next write: a batch of the push, or Done.
			if e.Kind == postcopy.Pushing && e.Pages >= 2048 {
				src.Arm(0)
			}
		}, nil},
		{"at done", func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.PushDone {
				src.Arm(0)
			}
		}, nil},
		{"return path at the resume", nil, func(e postcopy.Event, _, dst *cutLink) {
			if e.Kind == postcopy.Resumed {
				dst.Arm(30)
			}
		}},
	}
	for _, urgent := range []bool{false, true} {
		for _, p := range points {
			name := p.name
			if urgent {
				name += ", urgent"
			}
			t.Run(name, func(t *testing.T) {
				// No pre-paging: a fault then pulls one page, so the guests'
				// 1,200 writes leave at least 2,896 pages to the push and the
				// cuts armed at its events always fire (with pre-paging the
				// urgent connection could pull all but a few pages, and a cut
				// armed mid-push never came: 0 reconnections, now and then).
				s := setup{pages: pages, guests: 4, srcWriters: 1, recover: true, urgent: urgent, prepage: -1,
					cut: once(p.cut), onDstEvent: once(p.dst)}
				o := run(t, s)
				checkComplete(t, s, o)
				if o.drep.Reconnects != 1 {
					t.Fatalf("%d reconnections, want 1", o.drep.Reconnects)
				}
				// With an urgent connection, the reconnection opens a new
				// one (Done waits for its end marker, so it carried the
				// rest of the requests).
				if want := map[bool]int64{false: 0, true: 1}[urgent]; o.urgentRedials.Load() != want {
					t.Fatalf("%d urgent redials, want %d", o.urgentRedials.Load(), want)
				}
				// Pages held across the cut are not sent again.
				if o.rep.PagesSent-o.rep.PagesResent != pages || o.rep.PagesResent > pages/2 {
					t.Fatalf("%d pages sent, %d re-sent", o.rep.PagesSent, o.rep.PagesResent)
				}
				t.Logf("%d reconnections, %d pages re-sent\n%v", o.drep.Reconnects, o.rep.PagesResent, o.rep)
			})
		}
	}
}

// A source without RedialUrgent goes on with the main connection alone
// after a reconnection, even when the destination could accept an urgent
// one.
func TestRecoveryWithoutUrgentRedial(t *testing.T) {
	s := setup{pages: 4096, guests: 4, recover: true, urgent: true, noUrgentAfterCut: true,
		cut: once(func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.Pushing && e.Pages >= 1024 {
				src.Arm(64 << 10)
			}
		})}
	o := run(t, s)
	checkComplete(t, s, o)
	if o.drep.Reconnects != 1 || o.urgentRedials.Load() != 0 {
		t.Fatalf("%d reconnections, %d urgent redials", o.drep.Reconnects, o.urgentRedials.Load())
	}
}

// once returns f that acts only until it has armed a cut.
func once(f func(e postcopy.Event, src, dst *cutLink)) func(e postcopy.Event, src, dst *cutLink) {
	if f == nil {
		return nil
	}
	var done bool
	return func(e postcopy.Event, src, dst *cutLink) {
		if done {
			return
		}
		f(e, src, dst)
		done = src.Armed() || dst.Armed()
	}
}

// Two cuts in one migration: the second on the reconnected link.
func TestRecoveryTwice(t *testing.T) {
	const pages = 4096
	var first, second bool
	s := setup{pages: pages, guests: 2, recover: true, cut: func(e postcopy.Event, src, _ *cutLink) {
		switch {
		case e.Kind == postcopy.Pushing && e.Pages >= 1024 && !first:
			first = true
			src.Arm(10 << 10)
		case e.Kind == postcopy.Reconnected && !second:
			second = true
			src.Arm(200 << 10)
		}
	}}
	o := run(t, s)
	checkComplete(t, s, o)
	if o.drep.Reconnects != 2 {
		t.Fatalf("%d reconnections, want 2", o.drep.Reconnects)
	}
}

// Without Redial, a cut after the switchover leaves the guest running at
// the destination and the source paused, with an error that says the
// memory is split.
func TestCutAfterSwitchoverWithoutRecovery(t *testing.T) {
	s := setup{pages: 4096, guests: 2, cut: func(e postcopy.Event, src, _ *cutLink) {
		if e.Kind == postcopy.Pushing && e.Pages >= 1024 {
			src.Arm(1000)
		}
	}}
	o := run(t, s)
	if !errors.Is(o.err, livemig.ErrIncomplete) || !errors.Is(o.derr, livemig.ErrIncomplete) {
		t.Fatalf("source %v, destination %v", o.err, o.derr)
	}
	if !o.paused || o.srcVM.resumes.Load() != 0 {
		t.Fatal("the source resumed after the hand-over")
	}
	if !o.drep.Resumed || o.dstVM.resumes.Load() != 1 {
		t.Fatal("the destination did not run the guest")
	}
}

// A cut before the switchover is pre-copy's clean failure: the source runs
// on, unchanged by the migration, and the destination never resumes.
func TestCutBeforeSwitchover(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    setup
	}{
		{"in a pre-copy round", setup{pages: 2048, preRounds: 3, cut: func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.RoundStarted && e.Round == 1 {
				src.Arm(2 << 20)
			}
		}}},
		{"in the discard", setup{pages: 2048, preRounds: 3, srcWriters: 2, cut: func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.Pausing {
				src.Arm(20)
			}
		}}},
		{"in the state", setup{pages: 1024, cut: func(e postcopy.Event, src, _ *cutLink) {
			if e.Kind == postcopy.Pausing {
				src.Arm(30)
			}
		}}},
		{"return path before the state's ack", setup{pages: 1024, recover: true, cut: func(e postcopy.Event, _, dst *cutLink) {
			if e.Kind == postcopy.Pausing {
				dst.Arm(0)
			}
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.s
			s.guests = 2
			o := run(t, s)
			if o.err == nil || o.derr == nil {
				t.Fatalf("want two errors; source %v, destination %v", o.err, o.derr)
			}
			if !isAny(o.err, io.ErrClosedPipe, livemig.ErrClosed, io.ErrUnexpectedEOF, livemig.ErrPeer) ||
				!errors.Is(o.derr, livemig.ErrIncomplete) {
				t.Errorf("source %v\ndestination %v", o.err, o.derr)
			}
			if o.paused || o.srcVM.pauses.Load() != o.srcVM.resumes.Load() {
				t.Errorf("source left paused (paused %d, resumed %d)", o.srcVM.pauses.Load(), o.srcVM.resumes.Load())
			}
			if o.dstVM.resumes.Load() != 0 || o.drep.Resumed {
				t.Errorf("destination resumed")
			}
			// The source's memory is what its writers made of it: the
			// migration wrote nothing there. And it still runs.
			if err := o.src.Write(0, 0, []byte{1}); err != nil {
				t.Fatal(err)
			}
			t.Logf("source: %v\ndestination: %v", o.err, o.derr)
		})
	}
}

func isAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// A destination that refuses an urgent connection the source uses (or the
// reverse) fails before the resume.
func TestUrgentMismatch(t *testing.T) {
	ctx := context.Background()
	const pages = 64
	src := newSource(t, pages)
	a, b := transport.Pipe(1 << 20)
	ca, cb, err := openPair(ctx, a, b, pages)
	if err != nil {
		t.Fatal(err)
	}
	ua, ub := transport.Pipe(1 << 20)
	uca, ucb, err := openPair(ctx, ua, ub, pages)
	if err != nil {
		t.Fatal(err)
	}
	ucb.Close()
	mem, _ := postcopy.NewHeapMemory(pageSize, pages, nil)
	vm := newDstVM()
	done := make(chan error, 1)
	go func() {
		_, err := postcopy.Receive(ctx, cb, postcopy.Destination{Memory: mem, VM: vm, Pages: pages, PageSize: pageSize}, postcopy.Config{})
		done <- err
	}()
	_, err = postcopy.Migrate(ctx, ca, precopy.Source{Memory: src, VM: src}, postcopy.Config{Urgent: uca})
	derr := <-done
	if !errors.Is(derr, livemig.ErrVersion) || !errors.Is(err, livemig.ErrPeer) || src.Paused() || vm.resumes.Load() != 0 {
		t.Fatalf("source %v, destination %v, source paused %v", err, derr, src.Paused())
	}
}

// The in-process memory places only missing pages, blocks accesses to
// missing pages until they are placed, and discards.
func TestHeapMemory(t *testing.T) {
	faults := make(chan uint64, 4)
	h, err := postcopy.NewHeapMemory(64, 4, func(n uint64) { faults <- n })
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte{7}, 64)
	if ok, err := h.Place(1, page); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := h.Place(1, make([]byte, 64)); ok || err != nil {
		t.Fatalf("second Place = %v, %v", ok, err)
	}
	got := make([]byte, 64)
	if err := h.ReadPage(1, got); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("page 1 = %v, %v", got, err)
	}
	if err := h.ReadPage(2, got); err == nil {
		t.Fatal("read of a missing page succeeded")
	}
	done := make(chan byte)
	go func() {
		var b byte = 0xff
		_ = h.Access(context.Background(), 2, func(p []byte) { b = p[0] })
		done <- b
	}()
	// The access reports the fault and waits until page 2 is placed.
	if n := <-faults; n != 2 {
		t.Fatalf("fault on page %d", n)
	}
	select {
	case <-done:
		t.Fatal("access to a missing page did not wait")
	default:
	}
	if ok, _ := h.PlaceZero(2); !ok {
		t.Fatal("PlaceZero of a missing page did not place")
	}
	if b := <-done; b != 0 {
		t.Fatalf("access saw %d", b)
	}
	if err := h.Discard(1); err != nil || h.Present(1) {
		t.Fatal("discard left the page present", err)
	}
	if _, err := h.Place(4, page); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("Place past the end: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Access(ctx, 3, func([]byte) {}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled access: %v", err)
	}
	if n := <-faults; n != 3 {
		t.Fatalf("fault on page %d", n)
	}
}

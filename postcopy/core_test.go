package postcopy

import (
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

var t0 = livemig.VirtualEpoch

// committed returns a post-copy Core of pages pages past its hand-over.
func committed(t *testing.T, cfg CoreConfig) *Core {
	t.Helper()
	cfg.PageSize = 4096
	c, err := NewCore(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	if o := c.Next(t0, false); o.Op != OpPause {
		t.Fatalf("first step %v, want Pause", o.Op)
	}
	if err := c.Request(0, 1); !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("request before the hand-over: %v", err)
	}
	if _, err := c.Paused(t0); err != nil {
		t.Fatal(err)
	}
	if err := c.Committed(t0); err != nil {
		t.Fatal(err)
	}
	return c
}

// step takes the next step on a connection and, for a page or the marker,
// says it was written as a raw page.
func step(c *Core, now time.Time, urgent bool) Out {
	o := c.Next(now, urgent)
	if o.Op == OpPage || o.Op == OpMarker {
		c.Wrote(o, transport.EncRaw, 4096)
	}
	return o
}

func TestCoreRequestsGoBeforeThePush(t *testing.T) {
	c := committed(t, CoreConfig{Pages: 100, Prepage: 2})
	if o := step(c, t0, false); o.Op != OpPage || o.Page != 0 || o.Pulled {
		t.Fatalf("first push step %+v", o)
	}
	if err := c.Request(50, 1); err != nil {
		t.Fatal(err)
	}
	// The page asked for, then two neighbours, the last flushed.
	for i, want := range []uint64{50, 51, 52} {
		o := step(c, t0, false)
		if o.Op != OpPage || o.Page != want || !o.Pulled || o.Flush != (i == 2) {
			t.Fatalf("requested step %d: %+v, want page %d", i, o, want)
		}
	}
	// A request for a page sent brings only its unsent neighbours: the
	// window doubled as the faults moved on.
	if err := c.Request(52, 1); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	o := step(c, t0, false)
	for ; o.Pulled; o = step(c, t0, false) {
		got = append(got, o.Page)
	}
	if len(got) != 4 || got[0] != 53 || got[3] != 56 {
		t.Fatalf("second request sent %v, want 53..56", got)
	}
	// The push goes on (o is its next page), skips what requests sent, and
	// Done follows its last page: 100 pages in all, 7 of them pulled.
	pushed := 1 // page 0
	for ; o.Op != OpDone; o = step(c, t0, false) {
		if o.Op != OpPage || o.Pulled || (o.Page >= 50 && o.Page <= 56) {
			t.Fatalf("push step %+v", o)
		}
		pushed++
	}
	if pushed != 100-7 {
		t.Fatalf("pushed %d pages, want %d", pushed, 100-7)
	}
	if err := c.Request(200, 1); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("request past the end: %v", err)
	}
	var r livemig.Report
	c.Fill(&r, t0, t0, true)
	if r.PagesSent != 100 || r.PostCopy.PagesPulled != 7 || r.PostCopy.PagesPushed != 93 || r.PagesResent != 0 {
		t.Fatalf("figures: sent %d pushed %d pulled %d resent %d", r.PagesSent, r.PostCopy.PagesPushed, r.PostCopy.PagesPulled, r.PagesResent)
	}
}

func TestCoreUrgentResendsOnceAndMarksTheEnd(t *testing.T) {
	c := committed(t, CoreConfig{Pages: 4, Urgent: true})
	if o := step(c, t0, false); o.Page != 0 {
		t.Fatalf("push %+v", o)
	}
	if o := c.Next(t0, true); o.Op != OpIdle {
		t.Fatalf("urgent with nothing asked: %v", o.Op)
	}
	// Page 0 was pushed but may be queued behind the push: it goes again,
	// on the urgent connection, once.
	_ = c.Request(0, 1)
	_ = c.Request(0, 1)
	if o := step(c, t0, true); o.Op != OpPage || o.Page != 0 || !o.Flush {
		t.Fatalf("urgent %+v", o)
	}
	if o := c.Next(t0, true); o.Op != OpIdle {
		t.Fatalf("urgent sent page 0 twice: %+v", o)
	}
	for _, want := range []uint64{1, 2, 3} {
		if o := step(c, t0, false); o.Page != want {
			t.Fatalf("push %+v, want %d", o, want)
		}
	}
	// Done waits for the urgent stream's end marker.
	if o := c.Next(t0, false); o.Op != OpIdle {
		t.Fatalf("main before the marker: %v", o.Op)
	}
	if o := step(c, t0, true); o.Op != OpMarker {
		t.Fatalf("urgent after the push: %v", o.Op)
	}
	if o := c.Next(t0, false); o.Op != OpDone {
		t.Fatalf("main after the marker: %v", o.Op)
	}
	var r livemig.Report
	c.Fill(&r, t0, t0, true)
	if r.PagesResent != 1 || r.PostCopy.PagesPulled != 1 || r.PostCopy.PagesPushed != 4 {
		t.Fatalf("figures: resent %d pulled %d pushed %d", r.PagesResent, r.PostCopy.PagesPulled, r.PostCopy.PagesPushed)
	}
}

func TestCorePushKeepsItsRate(t *testing.T) {
	const bw = 4096 + transport.RecordOverhead // one page a second
	c := committed(t, CoreConfig{Pages: 3, PushBandwidth: bw})
	now := t0
	if o := step(c, now, false); o.Op != OpPage {
		t.Fatalf("first push: %v", o.Op)
	}
	o := c.Next(now, false)
	if o.Op != OpWait || !o.At.Equal(t0.Add(time.Second)) {
		t.Fatalf("after a page: %+v, want a wait until a second on", o)
	}
	// Late by more than the slack: catch up, by at most pushSlack.
	now = t0.Add(10 * time.Second)
	if o := step(c, now, false); o.Op != OpPage {
		t.Fatalf("late push: %v", o.Op)
	}
	if o := c.Next(now, false); o.Op != OpWait || !o.At.Equal(now.Add(-pushSlack).Add(time.Second)) {
		t.Fatalf("after catching up: %+v", o)
	}
}

func TestCoreReconnectedPushesWhatIsNotHeld(t *testing.T) {
	c := committed(t, CoreConfig{Pages: 130, Urgent: true})
	for range 10 {
		step(c, t0, false)
	}
	held := make([]uint64, 3)
	held[0] = 1<<5 - 1 // pages 0..4 arrived
	if err := c.Reconnected(t0, held, false); err != nil {
		t.Fatal(err)
	}
	if o := step(c, t0, false); o.Op != OpPage || o.Page != 5 {
		t.Fatalf("after the reconnection: %+v, want page 5", o)
	}
	// Without an urgent connection now, requests go on the main one.
	_ = c.Request(100, 1)
	if o := step(c, t0, false); o.Page != 100 || !o.Pulled {
		t.Fatalf("request after the reconnection: %+v", o)
	}
	if err := c.Reconnected(t0, []uint64{0}, false); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("short held bitmap: %v", err)
	}
}

// After pre-copy's rounds (AfterPreCopy) the Core discards the copies they
// left stale, pauses, names what the guest wrote since, and pushes every
// page not current at the destination, counting on from the rounds'
// figures.
func TestCoreAfterPreCopy(t *testing.T) {
	c, err := NewCore(CoreConfig{Pages: 70, PageSize: 4096}, t0)
	if err != nil {
		t.Fatal(err)
	}
	expect := func(op Op) Out {
		t.Helper()
		o := step(c, t0, false)
		if o.Op != op {
			t.Fatalf("step %v, want %v", o.Op, op)
		}
		return o
	}
	sent := []uint64{^uint64(0) &^ (1 << 5), 0x3f} // all 70 pages but page 5 (deferred)
	dirty := []uint64{1<<5 | 1<<9, 0}              // page 9 stale; page 5 never sent
	rep := &livemig.Report{Rounds: []livemig.Round{{Index: 1}, {Index: 2}}, PagesSent: 75, ZeroPages: 2, PagesResent: 6, BytesSent: 1 << 20}
	if err := c.AfterPreCopy(sent, dirty, rep); err != nil {
		t.Fatal(err)
	}
	if err := c.AfterPreCopy(sent, dirty, rep); err == nil {
		t.Fatal("a second AfterPreCopy was taken")
	}
	if o := expect(OpDiscard); o.Stale[0] != 1<<9 || o.Bytes != transport.FrameOverhead+16+8 {
		t.Fatalf("discard %+v, want page 9 alone", o)
	}
	c.Discarded()
	expect(OpPause)
	c.DirtyLog()[1] = 1 << 1 // page 65 written since the sync
	stale, err := c.Paused(t0)
	if err != nil {
		t.Fatal(err)
	}
	if stale.Stale[0] != 0 || stale.Stale[1] != 1<<1 {
		t.Fatalf("stale at the switchover %x, want page 65", stale.Stale)
	}
	if c.ToPush() != 3 {
		t.Fatalf("to push %d, want 3 (pages 5, 9, 65)", c.ToPush())
	}
	if err := c.Committed(t0); err != nil {
		t.Fatal(err)
	}
	var pushed []uint64
	for o := step(c, t0, false); o.Op == OpPage; o = step(c, t0, false) {
		pushed = append(pushed, o.Page)
	}
	if len(pushed) != 3 || pushed[0] != 5 || pushed[1] != 9 || pushed[2] != 65 {
		t.Fatalf("pushed %v, want [5 9 65]", pushed)
	}
	var r livemig.Report
	c.Written(2 << 20)
	c.Fill(&r, t0.Add(time.Second), t0.Add(time.Millisecond), true)
	if len(r.Rounds) != 3 || !r.Rounds[2].Final || r.PagesSent != 78 || r.PagesResent != 8 || r.ZeroPages != 2 || r.BytesSent != 2<<20 {
		t.Fatalf("report %+v: want the rounds' figures counted on (3 rounds, 78 pages, 8 resent)", r)
	}

	// A dirty log past the guest's end is refused.
	c2, _ := NewCore(CoreConfig{Pages: 70, PageSize: 4096}, t0)
	if err := c2.AfterPreCopy(sent, []uint64{0, 1 << 10}, rep); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("dirty page past the end: %v", err)
	}
}

// A request that comes between the Commit and Committed (the destination
// resumed at once) is taken in when the push starts, and goes first.
func TestCoreRequestBeforeThePushStarts(t *testing.T) {
	c, err := NewCore(CoreConfig{Pages: 100, PageSize: 4096}, t0)
	if err != nil {
		t.Fatal(err)
	}
	c.Next(t0, false)
	if _, err := c.Paused(t0); err != nil {
		t.Fatal(err)
	}
	if err := c.Request(42, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Committed(t0); err != nil {
		t.Fatal(err)
	}
	if o := step(c, t0, false); o.Op != OpPage || o.Page != 42 || !o.Pulled {
		t.Fatalf("first step after the early request: %+v", o)
	}
	if o := step(c, t0, false); o.Page != 0 || o.Pulled {
		t.Fatalf("then the push: %+v", o)
	}
}

// BenchmarkCoreHandover is the Core's part of the downtime of a 1 GiB guest's
// hand-over (Paused, then Committed, which plans the push): the source's
// CPU between the pause and the Commit, and just after it, as handover-µs
// (ns/op also counts making the Core).
func BenchmarkCoreHandover(b *testing.B) {
	const pages = 1 << 18
	b.ReportAllocs()
	var in time.Duration
	for range b.N {
		c, err := NewCore(CoreConfig{Pages: pages, PageSize: 4096}, t0)
		if err != nil {
			b.Fatal(err)
		}
		c.Next(t0, false)
		start := time.Now()
		if _, err := c.Paused(t0); err != nil {
			b.Fatal(err)
		}
		if err := c.Committed(t0); err != nil {
			b.Fatal(err)
		}
		in += time.Since(start)
	}
	b.ReportMetric(float64(in.Microseconds())/float64(b.N), "handover-µs")
}

// Demand needs the time only for a page that ends a wait or completes the
// guest after the resume; the waits it measures are the placements'.
func TestDemandTimed(t *testing.T) {
	d := NewDemand(3)
	if d.Timed(0) {
		t.Fatal("a page nobody waits on, before the resume, needs no time")
	}
	d.Placed(0, time.Time{})
	d.Resumed(t0)
	if !d.Fault(1, t0, t0) || d.Fault(1, t0, t0) {
		t.Fatal("the first fault on page 1 asks, the second does not")
	}
	if !d.Timed(1) || d.Timed(0) || d.Timed(7) {
		t.Fatalf("timed: page 1 %v, page 0 %v, page 7 %v", d.Timed(1), d.Timed(0), d.Timed(7))
	}
	d.Placed(1, t0.Add(time.Millisecond))
	if !d.Timed(2) {
		t.Fatal("the last missing page after the resume needs the time")
	}
	d.Placed(2, t0.Add(2*time.Millisecond))
	var pc livemig.PostCopyStats
	d.Fill(&pc)
	if pc.DemandFaults != 2 || pc.WaitTotal != 2*time.Millisecond || pc.FaultMax != time.Millisecond ||
		!d.LastPage().Equal(t0.Add(2*time.Millisecond)) {
		t.Fatalf("figures %+v, last page %v", pc, d.LastPage())
	}
}

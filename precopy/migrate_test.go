package precopy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pageSize = livemig.DefaultPageSize

func newSource(t testing.TB, pages uint64) *region.Region {
	return testkit.NewSource(t, pageSize, pages)
}

// newDest maps an empty destination region, closed at the test's end.
func newDest(t testing.TB, pages uint64) *region.Region {
	t.Helper()
	dst, err := region.New(pageSize, pages)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Close() })
	return dst
}

// vm counts what an engine did to a guest's control.
type vm struct {
	livemig.VM
	resumes, loads atomic.Int32
	onSave         func()
}

func (v *vm) Resume(ctx context.Context) error { v.resumes.Add(1); return v.VM.Resume(ctx) }
func (v *vm) LoadState(ctx context.Context, s []byte) error {
	v.loads.Add(1)
	return v.VM.LoadState(ctx, s)
}
func (v *vm) SaveState(ctx context.Context, dst []byte) ([]byte, error) {
	if v.onSave != nil {
		v.onSave()
	}
	return v.VM.SaveState(ctx, dst)
}

// writers runs n goroutines writing the source (see testkit.Writers).
var writers = testkit.Writers

type result struct {
	rep  *livemig.Report
	err  error
	drep *precopy.ReceiveReport
	derr error
}

// migrate runs a source and a destination over the two ends of a link pair.
func migrate(t *testing.T, ctx context.Context, a, b transport.Link, src *region.Region, srcVM livemig.VM,
	dst *region.Region, dstVM livemig.VM, cfg precopy.Config, dctx context.Context) result {
	t.Helper()
	return migrateWithSink(t, ctx, a, b, src, srcVM, dst, dst, dstVM, cfg, dctx)
}

func tcpPair(t testing.TB) (a, b transport.Link) { return testkit.LinkPair(t, true) }

// The real world: a region written by goroutines the whole time migrates over
// loopback TCP; afterwards the destination equals the source at pause time,
// byte for byte, and the state arrived.
func TestMigrateRealMemoryOverTCP(t *testing.T) {
	const pages = 8192 // 32 MiB
	src := newSource(t, pages)
	dst := newDest(t, pages)
	stop, total := writers(src, 2)
	defer stop()
	a, b := tcpPair(t)
	srcVM, dstVM := &vm{VM: src}, &vm{VM: dst}
	res := migrate(t, context.Background(), a, b, src, srcVM, dst, dstVM,
		precopy.Config{DowntimeTarget: 50 * time.Millisecond, MaxRounds: 10}, context.Background())
	if res.err != nil || res.derr != nil {
		t.Fatalf("source: %v; destination: %v", res.err, res.derr)
	}
	// The source stays paused after the hand-over: its memory is the state
	// at pause time.
	if !src.Paused() {
		t.Fatal("source running after a completed migration")
	}
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatalf("destination differs from the source at pause time in %d pages", diffPages(src.Bytes(), dst.Bytes()))
	}
	if !bytes.Equal(dst.State(), src.State()) || dstVM.resumes.Load() != 1 || dstVM.loads.Load() != 1 {
		t.Fatalf("state %q, resumes %d, loads %d", dst.State(), dstVM.resumes.Load(), dstVM.loads.Load())
	}
	if !res.rep.Verified || !res.drep.Verified || !res.drep.Resumed {
		t.Fatalf("verified %v/%v resumed %v", res.rep.Verified, res.drep.Verified, res.drep.Resumed)
	}
	if total() == 0 || res.rep.PagesSent < pages || len(res.rep.Rounds) < 2 {
		t.Fatalf("writes %d, pages sent %d, rounds %d", total(), res.rep.PagesSent, len(res.rep.Rounds))
	}
	if res.rep.Downtime <= 0 || res.rep.Downtime > res.rep.TotalTime {
		t.Fatalf("downtime %v of %v", res.rep.Downtime, res.rep.TotalTime)
	}
	t.Logf("%d guest writes during the migration\n%v", total(), res.rep)
}

func diffPages(a, b []byte) int {
	n, _ := testkit.DiffPages(a, b, pageSize)
	return n
}

// The failure matrix: whatever breaks, the source ends running and
// unchanged, the destination never resumes, both say what happened, and no
// goroutine leaks.
func TestFailureIsClean(t *testing.T) {
	const pages = 2048 // 8 MiB
	type knobs struct {
		cut         *testkit.CutLink
		cancelSrc   context.CancelFunc
		cancelDst   context.CancelFunc
		srcVM       *vm
		dstPages    uint64
		dstSinkFail bool
	}
	tests := []struct {
		name    string
		setup   func(k *knobs)
		onEvent func(k *knobs, e precopy.Event)
		srcErr  []error // the source's error wraps one of these
		dstErr  []error
	}{
		{"cut in the bulk round", func(k *knobs) { k.cut.Arm(2 << 20) }, nil,
			[]error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"cut in a later round", nil, func(k *knobs, e precopy.Event) {
			if e.Kind == precopy.RoundStarted && e.Round == 2 {
				k.cut.Arm(100 << 10)
			}
		}, []error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"cut in stop-and-copy", nil, func(k *knobs, e precopy.Event) {
			if e.Kind == precopy.Stopping {
				k.cut.Arm(64 << 10)
			}
		}, []error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"cut while sending the state", func(k *knobs) { k.srcVM.onSave = func() { k.cut.Arm(5) } }, nil,
			[]error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"corrupt frame", func(k *knobs) { k.cut.Flip = true; k.cut.Arm(3 << 20) }, nil,
			[]error{livemig.ErrPeer, livemig.ErrClosed, io.ErrClosedPipe, io.EOF, io.ErrUnexpectedEOF}, []error{livemig.ErrCorrupt}},
		{"source cancelled", nil, func(k *knobs, e precopy.Event) {
			if e.Kind == precopy.RoundStarted && e.Round == 2 {
				k.cancelSrc()
			}
		}, []error{context.Canceled}, []error{livemig.ErrPeer, livemig.ErrIncomplete}},
		{"destination gone", func(k *knobs) { k.dstSinkFail = true }, nil,
			[]error{livemig.ErrPeer, livemig.ErrClosed, io.ErrClosedPipe, io.EOF, io.ErrUnexpectedEOF}, []error{context.Canceled}},
		{"other geometry", func(k *knobs) { k.dstPages = pages / 2 }, nil,
			[]error{livemig.ErrVersion}, []error{livemig.ErrVersion}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := newSource(t, pages)
			before := bytes.Clone(src.Bytes())
			k := &knobs{srcVM: &vm{VM: src}, dstPages: pages}
			a, b := transport.Pipe(1 << 20)
			k.cut = testkit.NewCut(a)
			sctx, cancelSrc := context.WithCancel(context.Background())
			dctx, cancelDst := context.WithCancel(context.Background())
			defer cancelSrc()
			defer cancelDst()
			k.cancelSrc, k.cancelDst = cancelSrc, cancelDst
			if tc.setup != nil {
				tc.setup(k)
			}
			dst := newDest(t, k.dstPages)
			dstVM := &vm{VM: dst}
			var sink livemig.PageSink = dst
			if k.dstSinkFail {
				sink = &cancellingSink{Region: dst, after: 500, cancel: cancelDst}
			}
			cfg := precopy.Config{
				DowntimeTarget: time.Nanosecond, MaxRounds: 4,
				OnEvent: dirtyRounds(src, pages, func(e precopy.Event) {
					if tc.onEvent != nil {
						tc.onEvent(k, e)
					}
				}),
			}
			// The destination's sink may be wrapped: run the pair by hand.
			res := migrateWithSink(t, sctx, k.cut, b, src, k.srcVM, dst, sink, dstVM, cfg, dctx)
			checkClean(t, res, tc.srcErr, tc.dstErr, src, before, dstVM)
		})
	}
}

// checkClean checks a failed migration's outcome: both sides failed, with
// errors wrapping one of srcErr and of dstErr; the source runs, holding
// what it held before (before) but for the test's own writes (the first
// two bytes of pages); the destination never loaded the state nor resumed.
func checkClean(t *testing.T, res result, srcErr, dstErr []error, src *region.Region, before []byte, dstVM *vm) {
	t.Helper()
	if res.err == nil || res.derr == nil {
		t.Fatalf("want two errors; source: %v, destination: %v", res.err, res.derr)
	}
	if !isAny(res.err, srcErr) {
		t.Errorf("source error %v, want one wrapping %v", res.err, srcErr)
	}
	if !isAny(res.derr, dstErr) {
		t.Errorf("destination error %v, want one wrapping %v", res.derr, dstErr)
	}
	if src.Paused() {
		t.Error("source left paused")
	}
	if dstVM.resumes.Load() != 0 || dstVM.loads.Load() != 0 || (res.drep != nil && res.drep.Resumed) {
		t.Errorf("destination resumed %d times, loaded state %d times", dstVM.resumes.Load(), dstVM.loads.Load())
	}
	// Unchanged: the migration wrote nothing into the source; only the
	// test's own writes differ from the memory it started with.
	got := src.Bytes()
	for off := 0; off < len(got); off += pageSize {
		if !bytes.Equal(got[off+2:off+pageSize], before[off+2:off+pageSize]) {
			t.Fatalf("source page %d changed beyond the test's writes", off/pageSize)
		}
	}
	// And it still runs: a write goes through.
	if err := src.Write(0, 0, []byte{1}); err != nil {
		t.Fatal(err)
	}
	t.Logf("source: %v\ndestination: %v", res.err, res.derr)
}

// dirtyRounds dirties 300 pages of src during each of the first rounds and
// just before the pause, so that there are later rounds and a
// stop-and-copy with pages in it, and passes each event on to then.
func dirtyRounds(src *region.Region, pages uint64, then func(precopy.Event)) func(precopy.Event) {
	return func(e precopy.Event) {
		if (e.Kind == precopy.RoundStarted && e.Round <= 3) || e.Kind == precopy.Stopping {
			for i := uint64(0); i < 300; i++ {
				_ = src.Write((i*7+uint64(e.Round))%pages, 0, []byte{byte(e.Round), 0xEE})
			}
		}
		if then != nil {
			then(e)
		}
	}
}

func isAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// cancellingSink stands for a destination that dies: after some pages it
// cancels the destination's context. Streams may write it at once.
type cancellingSink struct {
	*region.Region
	n      atomic.Int64
	after  int64
	cancel context.CancelFunc
}

func (s *cancellingSink) WritePage(n uint64, data []byte) error {
	if s.n.Add(1) == s.after {
		s.cancel()
	}
	return s.Region.WritePage(n, data)
}

func migrateWithSink(t *testing.T, ctx context.Context, a, b transport.Link, src *region.Region, srcVM livemig.VM,
	dst *region.Region, sink livemig.PageSink, dstVM livemig.VM, cfg precopy.Config, dctx context.Context) result {
	t.Helper()
	var res result
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, _, err := transport.Open(dctx, b, transport.Hello{PageSize: pageSize, PageCount: dst.PageCount(), Features: transport.FeatDigest}, transport.Config{})
		if err != nil {
			b.Close()
			res.derr = err
			return
		}
		res.drep, res.derr = precopy.Receive(dctx, conn, precopy.Destination{Sink: sink, VM: dstVM, Pages: dst.PageCount(), PageSize: pageSize}, precopy.Config{})
	}()
	conn, _, err := transport.Open(ctx, a, transport.Hello{PageSize: pageSize, PageCount: src.PageCount(), Features: transport.FeatDigest}, transport.Config{})
	if err != nil {
		a.Close()
		res.err = err
	} else {
		res.rep, res.err = precopy.Migrate(ctx, conn, precopy.Source{Memory: src, Dirty: src, VM: srcVM}, cfg)
	}
	wg.Wait()
	return res
}

// descending is an Order that sends pages from the highest down and counts
// the syncs it saw.
type descending struct{ observed, planned int }

func (d *descending) Observe([]uint64) { d.observed++ }
func (d *descending) Name() string     { return "descending" }
func (d *descending) Plan(dst, dirty []uint64) []uint64 {
	d.planned++
	for i := len(dirty) - 1; i >= 0; i-- {
		for b := 63; b >= 0; b-- {
			if dirty[i]&(1<<b) != 0 {
				dst = append(dst, uint64(i)*64+uint64(b))
			}
		}
	}
	return dst
}

// Pages written again before their turn are deferred, round after round,
// and sent once when they stop changing; the engine follows the Order it is
// given and tells it of every sync.
func TestDeferAndOrder(t *testing.T) {
	const pages = 2048
	src := newSource(t, pages)
	dst := newDest(t, pages)
	order := &descending{}
	cfg := precopy.Config{
		DowntimeTarget: time.Nanosecond, MaxRounds: 8, Defer: true, Order: order,
		OnEvent: func(e precopy.Event) {
			if e.Kind == precopy.RoundStarted && e.Round <= 3 {
				for n := uint64(10); n < 20; n++ {
					_ = src.Write(n, 0, []byte{byte(e.Round)})
				}
			}
		},
	}
	a, b := transport.Pipe(1 << 20)
	res := migrate(t, context.Background(), a, b, src, src, dst, dst, cfg, context.Background())
	if res.err != nil || res.derr != nil {
		t.Fatalf("source: %v; destination: %v", res.err, res.derr)
	}
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatalf("destination differs in %d pages", diffPages(src.Bytes(), dst.Bytes()))
	}
	rep := res.rep
	var deferred uint64
	for _, r := range rep.Rounds {
		deferred += r.Deferred
	}
	if deferred != 30 || rep.PagesSent != pages || rep.PagesResent != 0 {
		t.Fatalf("deferred %d (want 30: 10 pages in each of rounds 1-3), sent %d, re-sent %d\n%v", deferred, rep.PagesSent, rep.PagesResent, rep)
	}
	if order.observed != len(rep.Rounds) || order.planned != len(rep.Rounds)-1 {
		t.Fatalf("order saw %d syncs and planned %d rounds; the migration made %d rounds (the bulk round is not planned)",
			order.observed, order.planned, len(rep.Rounds))
	}
}

// A dirty log that reports a page past the guest's end is an error, not a
// write out of bounds.
func TestDirtyLogOutOfRange(t *testing.T) {
	const pages = 100
	src := newSource(t, pages)
	dst := newDest(t, pages)
	bad := &badLog{Region: src}
	a, b := transport.Pipe(1 << 20)
	var out result
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, _, err := transport.Open(context.Background(), b, transport.Hello{PageSize: pageSize, PageCount: pages}, transport.Config{})
		if err != nil {
			out.derr = err
			return
		}
		out.drep, out.derr = precopy.Receive(context.Background(), conn, precopy.Destination{Sink: dst, VM: dst, Pages: pages, PageSize: pageSize}, precopy.Config{})
	}()
	conn, _, err := transport.Open(context.Background(), a, transport.Hello{PageSize: pageSize, PageCount: pages}, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, out.err = precopy.Migrate(context.Background(), conn, precopy.Source{Memory: src, Dirty: bad, VM: src}, precopy.Config{DowntimeTarget: time.Nanosecond})
	wg.Wait()
	if !errors.Is(out.err, livemig.ErrPageRange) || out.drep == nil || out.drep.Resumed {
		t.Fatalf("source %v, destination %v", out.err, out.derr)
	}
}

// badLog reports page 101 of a 100-page guest at its second sync.
type badLog struct {
	*region.Region
	syncs int
}

func (b *badLog) SyncDirty(dst []uint64) error {
	b.syncs++
	if b.syncs == 2 {
		dst[1] |= 1 << (101 - 64)
	}
	return b.Region.SyncDirty(dst)
}

// Real memory written by goroutines migrates with XBZRLE and LZ4 encoding
// on several workers; the destination ends equal to the source at pause
// time.
func TestMigrateWithCodecs(t *testing.T) {
	const pages = 4096
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			src := newSource(t, pages)
			dst := newDest(t, pages)
			stop, total := writers(src, 1)
			defer stop()
			cfg := precopy.Config{DowntimeTarget: 5 * time.Millisecond, MaxRounds: 6}
			cfg.Codec.XBZRLE, cfg.Codec.LZ4, cfg.Codec.Workers, cfg.Codec.NoAdapt = true, true, workers, true
			a, b := transport.Pipe(1 << 20)
			res := migrate(t, context.Background(), a, b, src, src, dst, dst, cfg, context.Background())
			if res.err != nil || res.derr != nil {
				t.Fatalf("source: %v; destination: %v", res.err, res.derr)
			}
			if !bytes.Equal(src.Bytes(), dst.Bytes()) {
				t.Fatalf("destination differs in %d pages", diffPages(src.Bytes(), dst.Bytes()))
			}
			c := res.rep.Codec
			if c == nil || c.LZ4Pages == 0 || !res.rep.Verified || len(res.rep.Rounds) < 3 {
				t.Fatalf("codec %+v, verified %v, %d rounds", c, res.rep.Verified, len(res.rep.Rounds))
			}
			t.Logf("%d writes; %s sent for %s of pages; codec ratio %.2f, %d delta pages, %d LZ4 pages",
				total(), livemig.FormatBytes(res.rep.BytesSent), livemig.FormatBytes(c.RawBytes), c.Ratio(), c.DeltaPages, c.LZ4Pages)
		})
	}
}

// countingPR counts the page records a multi-stream Conn's streams apply.
type countingPR struct {
	transport.ParallelReceiver
	perStream [8]atomic.Uint64
}

func (c *countingPR) HandlePages(h transport.PageHandler) error {
	return c.ParallelReceiver.HandlePages(func(s int, m *transport.Msg) error {
		c.perStream[s].Add(1)
		return h(s, m)
	})
}

// Over three streams of loopback TCP (DialMulti, AcceptConn) the
// destination applies the pages on the streams' goroutines, every one of
// them, and the migration of memory written the whole time is exact.
func TestMigrateMultiStream(t *testing.T) {
	const pages, streams = 8192, 3
	src := newSource(t, pages)
	dst := newDest(t, pages)
	stop, total := writers(src, 2)
	defer stop()
	ctx := context.Background()
	ln, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hello := func(r *region.Region) transport.Hello {
		return transport.Hello{PageSize: pageSize, PageCount: r.PageCount(), Features: transport.FeatDigest}
	}
	var res result
	var counted *countingPR
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, _, err := ln.AcceptConn(ctx, hello(dst), transport.Config{})
		if err != nil {
			res.derr = err
			return
		}
		pr, ok := conn.(transport.ParallelReceiver)
		if !ok {
			conn.Close()
			res.derr = fmt.Errorf("%T is not a ParallelReceiver", conn)
			return
		}
		counted = &countingPR{ParallelReceiver: pr}
		res.drep, res.derr = precopy.Receive(ctx, counted, precopy.Destination{Sink: dst, VM: dst, Pages: pages, PageSize: pageSize}, precopy.Config{})
	}()
	conn, _, err := transport.DialMulti(ctx, ln.Addr().String(), streams, transport.DialConfig{}, hello(src), transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res.rep, res.err = precopy.Migrate(ctx, conn, precopy.Source{Memory: src, Dirty: src, VM: src},
		precopy.Config{DowntimeTarget: 50 * time.Millisecond, MaxRounds: 10})
	<-done
	if res.err != nil || res.derr != nil {
		t.Fatalf("source: %v; destination: %v", res.err, res.derr)
	}
	if !bytes.Equal(src.Bytes(), dst.Bytes()) {
		t.Fatalf("destination differs from the source at pause time in %d pages", diffPages(src.Bytes(), dst.Bytes()))
	}
	if !res.rep.Verified || !res.drep.Verified || !res.drep.Resumed || total() == 0 {
		t.Fatalf("verified %v/%v, resumed %v, %d writes", res.rep.Verified, res.drep.Verified, res.drep.Resumed, total())
	}
	var applied uint64
	for s := range streams {
		n := counted.perStream[s].Load()
		if n == 0 {
			t.Errorf("stream %d applied no page", s)
		}
		applied += n
	}
	if applied != res.drep.PagesReceived || applied < pages {
		t.Fatalf("the streams applied %d pages, the report says %d received (guest of %d)", applied, res.drep.PagesReceived, pages)
	}
	t.Logf("%d rounds, %d pages applied on %d streams, %d writes", len(res.rep.Rounds), applied, streams, total())
}

// failingSink fails every write after some pages, as a destination whose
// memory gives out would; streams may write it at once.
type failingSink struct {
	*region.Region
	n, after atomic.Int64
}

var errSinkFull = errors.New("sink: out of memory")

func (s *failingSink) WritePage(n uint64, data []byte) error {
	if s.n.Add(1) > s.after.Load() {
		return errSinkFull
	}
	return s.Region.WritePage(n, data)
}

// openMulti opens n pipes with the handshake and returns the multi-stream
// Conns over them, stream cut's source link wrapped in a CutLink.
func openMulti(t *testing.T, n, cut int, pages uint64) (a, b transport.Conn, c *testkit.CutLink) {
	t.Helper()
	as, bs := make([]transport.Conn, n), make([]transport.Conn, n)
	for i := range n {
		x, y := transport.Pipe(1 << 20)
		var lx transport.Link = x
		if i == cut {
			c = testkit.NewCut(x)
			lx = c
		}
		hello := transport.Hello{PageSize: pageSize, PageCount: pages, Features: transport.FeatDigest, Streams: uint16(n), Stream: uint16(i)}
		var berr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			bs[i], _, berr = transport.Open(context.Background(), y, hello, transport.Config{})
		}()
		var err error
		as[i], _, err = transport.Open(context.Background(), lx, hello, transport.Config{})
		<-done
		if err != nil || berr != nil {
			t.Fatalf("stream %d: %v; %v", i, err, berr)
		}
	}
	return transport.NewMulti(as), transport.NewMulti(bs), c
}

// Faults on one stream of three, in each phase, and a destination that
// fails on its streams' goroutines (the pages are applied there): the
// source ends running and unchanged, the destination never resumes, each
// says what happened, and no goroutine leaks (TestMain).
func TestMultiStreamFailureIsClean(t *testing.T) {
	const pages, streams = 2048, 3
	type knobs struct {
		cut      *testkit.CutLink
		cancel   context.CancelFunc
		dst      *region.Region
		sink     livemig.PageSink
		onEvents func(e precopy.Event)
	}
	tests := []struct {
		name   string
		setup  func(k *knobs)
		srcErr []error
		dstErr []error
	}{
		{"cut in the bulk round", func(k *knobs) { k.cut.Arm(1 << 20) },
			[]error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"cut in a later round", func(k *knobs) {
			k.onEvents = func(e precopy.Event) {
				if e.Kind == precopy.RoundStarted && e.Round == 2 {
					k.cut.Arm(100 << 10)
				}
			}
		}, []error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"cut in stop-and-copy", func(k *knobs) {
			k.onEvents = func(e precopy.Event) {
				if e.Kind == precopy.Stopping {
					k.cut.Arm(16 << 10)
				}
			}
		}, []error{io.ErrClosedPipe, livemig.ErrClosed}, []error{livemig.ErrIncomplete}},
		{"corrupt frame", func(k *knobs) { k.cut.Flip = true; k.cut.Arm(1 << 20) },
			[]error{livemig.ErrPeer, livemig.ErrClosed, io.ErrClosedPipe, io.EOF, io.ErrUnexpectedEOF}, []error{livemig.ErrCorrupt}},
		{"sink fails on a stream", func(k *knobs) {
			fs := &failingSink{Region: k.dst}
			fs.after.Store(700)
			k.sink = fs
		}, []error{livemig.ErrPeer, livemig.ErrClosed, io.ErrClosedPipe, io.EOF, io.ErrUnexpectedEOF}, []error{errSinkFull}},
		{"destination gone", func(k *knobs) { k.sink = &cancellingSink{Region: k.dst, after: 500, cancel: k.cancel} },
			[]error{livemig.ErrPeer, livemig.ErrClosed, io.ErrClosedPipe, io.EOF, io.ErrUnexpectedEOF}, []error{context.Canceled}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := newSource(t, pages)
			before := bytes.Clone(src.Bytes())
			srcVM := &vm{VM: src}
			dst := newDest(t, pages)
			dstVM := &vm{VM: dst}
			a, b, cut := openMulti(t, streams, 1, pages)
			dctx, cancelDst := context.WithCancel(context.Background())
			defer cancelDst()
			k := &knobs{cut: cut, cancel: cancelDst, dst: dst, sink: dst}
			tc.setup(k)
			cfg := precopy.Config{
				DowntimeTarget: time.Nanosecond, MaxRounds: 4,
				OnEvent: dirtyRounds(src, pages, func(e precopy.Event) {
					if k.onEvents != nil {
						k.onEvents(e)
					}
				}),
			}
			var res result
			done := make(chan struct{})
			go func() {
				defer close(done)
				res.drep, res.derr = precopy.Receive(dctx, b, precopy.Destination{Sink: k.sink, VM: dstVM, Pages: pages, PageSize: pageSize}, precopy.Config{})
			}()
			res.rep, res.err = precopy.Migrate(context.Background(), a, precopy.Source{Memory: src, Dirty: src, VM: srcVM}, cfg)
			<-done
			if k.sink == livemig.PageSink(dst) && !cut.Armed() {
				t.Fatal("a case of the link whose cut was never armed tests nothing")
			}
			checkClean(t, res, tc.srcErr, tc.dstErr, src, before, dstVM)
		})
	}
}

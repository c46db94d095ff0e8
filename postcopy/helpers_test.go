package postcopy_test

import (
	"github.com/livemig/livemig/hybrid"

	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pageSize = livemig.DefaultPageSize

func newSource(t testing.TB, pages uint64) *region.Region {
	return testkit.NewSource(t, pageSize, pages)
}

// srcVM counts what the engine does to the source's control.
type srcVM struct {
	*region.Region
	pauses, resumes atomic.Int32
}

func (v *srcVM) Pause(ctx context.Context) error { v.pauses.Add(1); return v.Region.Pause(ctx) }
func (v *srcVM) Resume(ctx context.Context) error {
	v.resumes.Add(1)
	return v.Region.Resume(ctx)
}

// dstVM is the destination's control: Resume lets the guest goroutines go.
type dstVM struct {
	mu      sync.Mutex
	state   []byte
	resumes atomic.Int32
	loads   atomic.Int32
	started chan struct{}
	// firstFault, if set, is closed at the guests' first fault: Resume
	// waits for it, so that a test of demand faults has some whatever the
	// scheduling (the push may otherwise finish before a guest runs).
	firstFault chan struct{}
}

func newDstVM() *dstVM { return &dstVM{started: make(chan struct{})} }

func (v *dstVM) Pause(context.Context) error { return nil }
func (v *dstVM) Resume(context.Context) error {
	if v.resumes.Add(1) == 1 {
		close(v.started)
		if v.firstFault != nil {
			<-v.firstFault
		}
	}
	return nil
}
func (v *dstVM) SaveState(_ context.Context, dst []byte) ([]byte, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append(dst, v.state...), nil
}
func (v *dstVM) LoadState(_ context.Context, s []byte) error {
	v.loads.Add(1)
	v.mu.Lock()
	v.state = append(v.state[:0], s...)
	v.mu.Unlock()
	return nil
}

// guestMem is the destination memory as the test's guest sees it.
type guestMem interface {
	postcopy.Memory
	// store is a guest write of v at offset off of page n; it blocks while
	// the page is missing.
	store(ctx context.Context, n uint64, off int, v uint64) error
	// contents returns the memory once nothing runs.
	contents() []byte
	// release lets guests blocked on missing pages go on, after a failure.
	release()
}

type heapMem struct{ *postcopy.HeapMemory }

func (h heapMem) store(ctx context.Context, n uint64, off int, v uint64) error {
	return h.Access(ctx, n, func(p []byte) { binary.LittleEndian.PutUint64(p[off:], v) })
}
func (h heapMem) contents() []byte { return h.Bytes() }
func (h heapMem) release()         {}

// guests runs n goroutines standing in for the destination's vCPUs: from
// the resume on, each writes writes values at its own offset of random
// pages and remembers the last value it wrote to each page.
type guests struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
	last   []map[uint64]uint64
	errs   []error
}

func startGuests(mem guestMem, vm *dstVM, pages uint64, n, writes int, seed uint64) *guests {
	ctx, cancel := context.WithCancel(context.Background())
	g := &guests{cancel: cancel, last: make([]map[uint64]uint64, n), errs: make([]error, n)}
	for i := 0; i < n; i++ {
		g.last[i] = make(map[uint64]uint64)
		g.wg.Add(1)
		go func(i int) {
			defer g.wg.Done()
			select {
			case <-vm.started:
			case <-ctx.Done():
				return
			}
			x := seed + uint64(i+1)*0x9E3779B97F4A7C15
			for k := 0; k < writes && ctx.Err() == nil; k++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				page := x % pages
				v := uint64(i+1)<<48 | uint64(k+1)
				if err := mem.store(ctx, page, 8*i, v); err != nil {
					if ctx.Err() == nil {
						g.errs[i] = err
					}
					return
				}
				g.last[i][page] = v
			}
		}(i)
	}
	return g
}

// wait waits for the guests to finish their writes.
func (g *guests) wait() error {
	g.wg.Wait()
	g.cancel()
	return errors.Join(g.errs...)
}

func (g *guests) stop() { g.cancel(); g.wg.Wait() }

// expected is the source at pause time plus the guests' writes.
func (g *guests) expected(atPause []byte) []byte {
	want := bytes.Clone(atPause)
	for i, m := range g.last {
		for page, v := range m {
			binary.LittleEndian.PutUint64(want[int(page)*pageSize+8*i:], v)
		}
	}
	return want
}

func diffPages(a, b []byte) (n, first int) { return testkit.DiffPages(a, b, pageSize) }

type cutLink = testkit.CutLink

var newCut = testkit.NewCut

// setup is one migration to run: the knobs of a test.
type setup struct {
	pages      uint64
	urgent     bool
	preRounds  int
	srcWriters int
	guests     int
	writes     int
	recover    bool
	tcp        bool
	prepage    int
	// streams > 1 runs the main connection over that many streams
	// (transport.NewMulti), without cuts.
	streams int
	// With urgent and recover, a reconnection opens a new urgent
	// connection too, unless noUrgentAfterCut (the source has no
	// RedialUrgent; the destination has ReacceptUrgent all the same).
	noUrgentAfterCut bool
	// lz4 compresses the pages the source sends.
	lz4 bool
	// pushBandwidth caps the push (Config.PushBandwidth).
	pushBandwidth int64
	// dirtyAtPause pages are written at the source just before it pauses.
	dirtyAtPause int
	order        precopy.Order
	mem          func(t *testing.T, pages uint64, onFault func(uint64)) guestMem
	// cut, if set, is called at each source event with the source's link
	// (writes from the source) and the destination's (the return path).
	cut func(e postcopy.Event, src, dst *cutLink)
	// onDstEvent is called at each destination event.
	onDstEvent func(e postcopy.Event, src, dst *cutLink)
}

type outcome struct {
	rep      *livemig.Report
	err      error
	drep     *postcopy.ReceiveReport
	derr     error
	src      *region.Region
	srcVM    *srcVM
	dstVM    *dstVM
	atPause  []byte // the source's memory at pause time
	paused   bool   // the source was paused when the migration ended
	want     []byte // atPause plus the guests' writes
	got      []byte
	guestErr error
	// urgentRedials counts the source's RedialUrgent calls.
	urgentRedials *atomic.Int64
}

func heapMemory(t *testing.T, pages uint64, onFault func(uint64)) guestMem {
	h, err := postcopy.NewHeapMemory(pageSize, pages, onFault)
	if err != nil {
		t.Fatal(err)
	}
	return heapMem{h}
}

var linkPair = testkit.LinkPair

// openPair handshakes both ends of a link.
func openPair(ctx context.Context, a, b transport.Link, pages uint64) (ca, cb transport.Conn, err error) {
	return testkit.OpenPair(ctx, a, b, transport.Hello{PageSize: pageSize, PageCount: pages, Features: transport.FeatPostCopy | transport.FeatDigest})
}

// ends is what Migrate and Receive returned.
type ends struct {
	rep  *livemig.Report
	err  error
	drep *postcopy.ReceiveReport
	derr error
}

// ok fails tb unless both sides succeeded.
func (e ends) ok(tb testing.TB) {
	tb.Helper()
	if e.err != nil || e.derr != nil {
		tb.Fatalf("source: %v\ndestination: %v", e.err, e.derr)
	}
}

// migrateAsync runs Receive on cb and Migrate on ca, each in a goroutine;
// wait waits for both.
func migrateAsync(ctx context.Context, ca, cb transport.Conn, src precopy.Source, dst postcopy.Destination,
	scfg, dcfg postcopy.Config) (wait func() ends) {
	var e ends
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		e.drep, e.derr = postcopy.Receive(ctx, cb, dst, dcfg)
	}()
	go func() {
		defer wg.Done()
		e.rep, e.err = postcopy.Migrate(ctx, ca, src, scfg)
	}()
	return func() ends { wg.Wait(); return e }
}

// run migrates a fresh source to a fresh destination as s says, with
// guests at the destination writing from the resume, and returns what
// happened.
func run(t *testing.T, s setup) outcome {
	t.Helper()
	if s.mem == nil {
		s.mem = heapMemory
	}
	if s.writes == 0 {
		s.writes = 300
	}
	ctx := context.Background()
	src := newSource(t, s.pages)
	o := outcome{src: src, srcVM: &srcVM{Region: src}, dstVM: newDstVM(), urgentRedials: new(atomic.Int64)}
	stopWriters, _ := testkit.Writers(src, s.srcWriters)
	faults := postcopy.NewFaultQueue(s.pages, nil)
	first := make(chan struct{})
	var firstOnce sync.Once
	mem := s.mem(t, s.pages, func(n uint64) {
		faults.Fault(n)
		firstOnce.Do(func() { close(first) })
	})
	if s.preRounds == 0 && s.guests > 0 {
		// Every page is missing at the resume: the first guest access
		// faults.
		o.dstVM.firstFault = first
	}
	g := startGuests(mem, o.dstVM, s.pages, s.guests, s.writes, 42)

	a, b := linkPair(t, s.tcp)
	var cutMu sync.Mutex
	srcCut, dstCut := newCut(a), newCut(b)
	cuts := func() (*cutLink, *cutLink) {
		cutMu.Lock()
		defer cutMu.Unlock()
		return srcCut, dstCut
	}
	mainA, mainB, err := openPair(ctx, srcCut, dstCut, s.pages)
	if err != nil {
		t.Fatal(err)
	}
	if s.streams > 1 {
		as, bs := []transport.Conn{mainA}, []transport.Conn{mainB}
		for range s.streams - 1 {
			la, lb := linkPair(t, s.tcp)
			ca, cb, err := openPair(ctx, la, lb, s.pages)
			if err != nil {
				t.Fatal(err)
			}
			as, bs = append(as, ca), append(bs, cb)
		}
		mainA, mainB = transport.NewMulti(as), transport.NewMulti(bs)
	}
	scfg := postcopy.Config{Prepage: s.prepage, Order: s.order, LZ4: s.lz4, PushBandwidth: s.pushBandwidth}
	dcfg := postcopy.Config{}
	if s.urgent {
		ua, ub := linkPair(t, s.tcp)
		scfg.Urgent, dcfg.Urgent, err = openPair(ctx, ua, ub, s.pages)
		if err != nil {
			t.Fatal(err)
		}
	}
	dstDone, srcDone := make(chan struct{}), make(chan struct{})
	if s.recover && s.urgent {
		// New urgent connections after a reconnection, unless the test
		// wants the main connection alone after it.
		redial, reaccept := handoff(t, s, dstDone, srcDone, nil)
		if !s.noUrgentAfterCut {
			scfg.RedialUrgent = func(ctx context.Context) (transport.Conn, error) {
				o.urgentRedials.Add(1)
				return redial(ctx)
			}
		}
		dcfg.ReacceptUrgent = reaccept
	}
	if s.recover {
		// The new main link can be cut too.
		scfg.Redial, dcfg.Reaccept = handoff(t, s, dstDone, srcDone, func(la, lb transport.Link) (transport.Link, transport.Link) {
			ca, cb := newCut(la), newCut(lb)
			cutMu.Lock()
			srcCut, dstCut = ca, cb
			cutMu.Unlock()
			return ca, cb
		})
	}
	scfg.OnEvent = func(e postcopy.Event) {
		if e.Kind == postcopy.Pausing {
			for i := 0; i < s.dirtyAtPause; i++ {
				_ = src.Write(uint64(i*7)%s.pages, 16, []byte{0xEE, byte(i)})
			}
		}
		if s.cut != nil {
			sc, dc := cuts()
			s.cut(e, sc, dc)
		}
	}
	if s.onDstEvent != nil {
		dcfg.OnEvent = func(e postcopy.Event) { sc, dc := cuts(); s.onDstEvent(e, sc, dc) }
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(dstDone)
		o.drep, o.derr = postcopy.Receive(ctx, mainB, postcopy.Destination{
			Memory: mem, VM: o.dstVM, Faults: faults, Pages: s.pages, PageSize: pageSize,
		}, dcfg)
	}()
	o.rep, o.err = migrate(ctx, mainA, precopy.Source{Memory: src, Dirty: src, VM: o.srcVM}, scfg, s.preRounds)
	close(srcDone)
	wg.Wait()
	// The source stays paused after a hand-over: its memory is the guest
	// at pause time.
	o.atPause = bytes.Clone(src.Bytes())
	o.paused = src.Paused()
	if o.err == nil && o.derr == nil {
		o.guestErr = g.wait()
	} else {
		mem.release()
		g.stop()
	}
	stopWriters()
	o.want = g.expected(o.atPause)
	o.got = bytes.Clone(mem.contents())
	return o
}

// handoff returns a Redial and a Reaccept that hand a fresh link pair from
// the source to the destination and open it there; wrap, if set, replaces
// the pair first. They give up when the other side has finished.
func handoff(t *testing.T, s setup, dstDone, srcDone <-chan struct{},
	wrap func(a, b transport.Link) (transport.Link, transport.Link)) (redial, reaccept func(context.Context) (transport.Conn, error)) {
	links := make(chan transport.Link)
	hello := transport.Hello{PageSize: pageSize, PageCount: s.pages}
	redial = func(ctx context.Context) (transport.Conn, error) {
		a, b := linkPair(t, s.tcp)
		if wrap != nil {
			a, b = wrap(a, b)
		}
		select {
		case links <- b:
		case <-dstDone:
			a.Close()
			b.Close()
			return nil, errors.New("test: the destination is gone")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		conn, _, err := transport.Open(ctx, a, hello, transport.Config{})
		return conn, err
	}
	reaccept = func(ctx context.Context) (transport.Conn, error) {
		select {
		case b := <-links:
			conn, _, err := transport.Open(ctx, b, hello, transport.Config{})
			return conn, err
		case <-srcDone:
			return nil, errors.New("test: the source is gone")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return redial, reaccept
}

// checkComplete asserts a successful migration: both sides succeeded, the
// destination is the source at pause time plus its guests' writes, byte
// for byte, and the figures add up.
func checkComplete(t *testing.T, s setup, o outcome) {
	t.Helper()
	if o.err != nil || o.derr != nil {
		t.Fatalf("source: %v\ndestination: %v", o.err, o.derr)
	}
	if o.guestErr != nil {
		t.Fatalf("guest: %v", o.guestErr)
	}
	if n, first := diffPages(o.want, o.got); n != 0 {
		t.Fatalf("destination differs from the source at pause plus the guests' writes in %d pages (first %d)", n, first)
	}
	if o.srcVM.pauses.Load() != 1 || o.srcVM.resumes.Load() != 0 {
		t.Fatalf("source paused %d times, resumed %d times", o.srcVM.pauses.Load(), o.srcVM.resumes.Load())
	}
	if o.dstVM.resumes.Load() != 1 || o.dstVM.loads.Load() != 1 || !bytes.Equal(o.dstVM.state, o.src.State()) {
		t.Fatalf("destination resumed %d times, loaded state %d times: %q", o.dstVM.resumes.Load(), o.dstVM.loads.Load(), o.dstVM.state)
	}
	rep, drep := o.rep, o.drep
	if !rep.Verified || !drep.Verified || !drep.Resumed || !drep.Complete {
		t.Fatalf("verified %v/%v, resumed %v, complete %v", rep.Verified, drep.Verified, drep.Resumed, drep.Complete)
	}
	pc := rep.PostCopy
	if pc == nil {
		t.Fatal("no post-copy figures")
	}
	if pc.PagesPushed+pc.PagesPulled != rep.Rounds[len(rep.Rounds)-1].PagesSent {
		t.Fatalf("pushed %d + pulled %d != %d pages sent after the switchover", pc.PagesPushed, pc.PagesPulled, rep.Rounds[len(rep.Rounds)-1].PagesSent)
	}
	if rep.Downtime <= 0 || rep.Downtime > rep.TotalTime || rep.Algorithm == "" {
		t.Fatalf("downtime %v of %v, algorithm %q", rep.Downtime, rep.TotalTime, rep.Algorithm)
	}
	if pc.DemandFaults != drep.PostCopy.DemandFaults || pc.FaultMax < pc.FaultP99 || pc.FaultP99 < pc.FaultP50 {
		t.Fatalf("fault figures: source %+v, destination %+v", pc, drep.PostCopy)
	}
}

// migrate runs postcopy.Migrate, or with rounds > 0 hybrid.Migrate with
// that many pre-copy rounds: the same engine, whose rounds setting is
// package hybrid's.
func migrate(ctx context.Context, conn transport.Conn, src livemig.Source, cfg postcopy.Config, rounds int) (*livemig.Report, error) {
	if rounds > 0 {
		return hybrid.Migrate(ctx, conn, src, hybrid.Config{Rounds: rounds, Config: cfg})
	}
	return postcopy.Migrate(ctx, conn, src, cfg)
}

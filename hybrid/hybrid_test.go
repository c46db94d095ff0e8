package hybrid_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pageSize = livemig.DefaultPageSize

// guestMem is the destination memory as the guests see it.
type guestMem interface {
	postcopy.Memory
	store(ctx context.Context, n uint64, off int, v uint64) error // blocks while page n is missing
	contents() []byte
	release() // lets blocked guests go after a failure
}

type heapMem struct{ *postcopy.HeapMemory }

func (h heapMem) store(ctx context.Context, n uint64, off int, v uint64) error {
	return h.Access(ctx, n, func(p []byte) { binary.LittleEndian.PutUint64(p[off:], v) })
}
func (h heapMem) contents() []byte { return h.Bytes() }
func (h heapMem) release()         {}

// dstVM lets the guests go at the resume.
type dstVM struct {
	resumes atomic.Int32
	started chan struct{}
	mu      sync.Mutex
	state   []byte
}

func (v *dstVM) Pause(context.Context) error { return nil }
func (v *dstVM) Resume(context.Context) error {
	if v.resumes.Add(1) == 1 {
		close(v.started)
	}
	return nil
}
func (v *dstVM) SaveState(_ context.Context, dst []byte) ([]byte, error) { return dst, nil }
func (v *dstVM) LoadState(_ context.Context, s []byte) error {
	v.mu.Lock()
	v.state = append(v.state[:0], s...)
	v.mu.Unlock()
	return nil
}

// world is one hybrid migration with writers at the source during the
// pre-copy rounds and guests at the destination from the resume.
type world struct {
	pages  uint64
	rounds int
	tcp    bool
	urgent bool
	mem    func(t *testing.T, pages uint64, f *postcopy.FaultQueue) guestMem
	// cutAt arms a cut of the source's link at a source event.
	cutAt func(e postcopy.Event) int64
}

type result struct {
	rep      *livemig.Report
	drep     *hybrid.ReceiveReport
	err      error
	derr     error
	want     []byte
	got      []byte
	srcState []byte
	dstState []byte
}

func (w world) run(t *testing.T) result {
	t.Helper()
	ctx := context.Background()
	src, err := region.New(pageSize, w.pages)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for n := uint64(0); n < w.pages; n += 2 {
		binary.LittleEndian.PutUint64(src.Bytes()[int(n)*pageSize:], n|1<<40)
	}
	src.SetState([]byte("cpu state"))
	// Writers run through the pre-copy rounds and stop at the pause.
	wctx, stopWriters := context.WithCancel(ctx)
	var wwg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wwg.Add(1)
		go func(i int) {
			defer wwg.Done()
			x := uint64(i+7) * 0x9E3779B97F4A7C15
			for k := uint64(0); wctx.Err() == nil && !src.Paused(); k++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				var b [8]byte
				binary.LittleEndian.PutUint64(b[:], k)
				if src.Write(x%(w.pages/4), 8*(i+4), b[:]) != nil { // a hot quarter
					return
				}
			}
		}(i)
	}
	faults := postcopy.NewFaultQueue(w.pages, nil)
	mem := w.mem(t, w.pages, faults)
	vm := &dstVM{started: make(chan struct{})}
	const guests, writes = 4, 1500
	last := make([]map[uint64]uint64, guests)
	gctx, stopGuests := context.WithCancel(ctx)
	var gwg sync.WaitGroup
	for i := 0; i < guests; i++ {
		last[i] = make(map[uint64]uint64)
		gwg.Add(1)
		go func(i int) {
			defer gwg.Done()
			select {
			case <-vm.started:
			case <-gctx.Done():
				return
			}
			x := uint64(i+1) * 0xBF58476D1CE4E5B9
			for k := 0; k < writes && gctx.Err() == nil; k++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				n, v := x%w.pages, uint64(i+1)<<48|uint64(k)
				if mem.store(gctx, n, 8*i, v) != nil {
					return
				}
				last[i][n] = v
			}
		}(i)
	}

	var cut *testkit.CutLink
	link := func() (transport.Link, transport.Link) {
		a, b := linkPair(t, w.tcp)
		if cut == nil {
			cut = testkit.NewCut(a)
			return cut, b
		}
		return a, b
	}
	a, b := link()
	ca, cb := openPair(t, a, b, w.pages)
	scfg := hybrid.Config{Rounds: w.rounds}
	dcfg := hybrid.Config{}
	if w.urgent {
		ua, ub := linkPair(t, w.tcp)
		scfg.Urgent, dcfg.Urgent = openPair(t, ua, ub, w.pages)
	}
	srcDone := make(chan struct{})
	if w.cutAt != nil {
		scfg.OnEvent = func(e postcopy.Event) {
			if after := w.cutAt(e); after >= 0 {
				cut.Arm(after)
			}
		}
		links := make(chan transport.Conn)
		scfg.Redial = func(ctx context.Context) (transport.Conn, error) {
			a, b := link()
			ca, cb := openPair(t, a, b, w.pages)
			select {
			case links <- cb:
				return ca, nil
			case <-ctx.Done():
				ca.Close()
				cb.Close()
				return nil, ctx.Err()
			}
		}
		dcfg.Reaccept = func(ctx context.Context) (transport.Conn, error) {
			select {
			case c := <-links:
				return c, nil
			case <-srcDone:
				return nil, errors.New("test: the source is gone")
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	var res result
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.drep, res.derr = hybrid.Receive(ctx, cb, hybrid.Destination{
			Memory: mem, VM: vm, Faults: faults, Pages: w.pages, PageSize: pageSize,
		}, dcfg)
	}()
	res.rep, res.err = hybrid.Migrate(ctx, ca, precopy.Source{Memory: src, Dirty: src, VM: src}, scfg)
	close(srcDone)
	wg.Wait()
	atPause := bytes.Clone(src.Bytes())
	if res.err != nil || res.derr != nil {
		mem.release()
		stopGuests()
	}
	gwg.Wait()
	stopGuests()
	stopWriters()
	_ = src.Resume(ctx)
	wwg.Wait()
	res.want = atPause
	for i, m := range last {
		for n, v := range m {
			binary.LittleEndian.PutUint64(res.want[int(n)*pageSize+8*i:], v)
		}
	}
	res.got = bytes.Clone(mem.contents())
	res.srcState = src.State()
	vm.mu.Lock()
	res.dstState = bytes.Clone(vm.state)
	vm.mu.Unlock()
	return res
}

func (r result) check(t *testing.T, pages uint64) {
	t.Helper()
	if r.err != nil || r.derr != nil {
		t.Fatalf("source: %v\ndestination: %v", r.err, r.derr)
	}
	for off := 0; off < len(r.want); off += pageSize {
		if !bytes.Equal(r.want[off:off+pageSize], r.got[off:off+pageSize]) {
			t.Fatalf("page %d differs from the source at pause plus the guests' writes", off/pageSize)
		}
	}
	if !bytes.Equal(r.srcState, r.dstState) {
		t.Fatalf("state %q, want %q", r.dstState, r.srcState)
	}
	rep := r.rep
	if rep.Algorithm != "hybrid" || len(rep.Rounds) < 2 || !rep.Verified || !r.drep.Verified || rep.PostCopy == nil {
		t.Fatalf("algorithm %q, %d rounds, verified %v/%v", rep.Algorithm, len(rep.Rounds), rep.Verified, r.drep.Verified)
	}
	final := rep.Rounds[len(rep.Rounds)-1]
	if r.drep.Discarded != final.DirtyPages {
		t.Fatalf("destination discarded %d pages, %d were stale", r.drep.Discarded, final.DirtyPages)
	}
	if rep.PostCopy.PagesPushed+rep.PostCopy.PagesPulled != final.PagesSent || final.PagesSent < final.DirtyPages {
		t.Fatalf("post-copy phase: %d pushed + %d pulled, %d sent, %d to send", rep.PostCopy.PagesPushed,
			rep.PostCopy.PagesPulled, final.PagesSent, final.DirtyPages)
	}
}

func heapMemory(t *testing.T, pages uint64, f *postcopy.FaultQueue) guestMem {
	h, err := postcopy.NewHeapMemory(pageSize, pages, f.Fault)
	if err != nil {
		t.Fatal(err)
	}
	return heapMem{h}
}

// Hybrid into the in-process memory.
func TestHybridHeap(t *testing.T) {
	w := world{pages: 2048, rounds: 3, mem: heapMemory}
	r := w.run(t)
	r.check(t, w.pages)
	t.Logf("%v", r.rep)
}

// A destination memory that cannot discard is refused.
func TestNeedsDiscarder(t *testing.T) {
	a, b := transport.Pipe(1 << 16)
	ca, cb := openPair(t, a, b, 64)
	defer ca.Close()
	_, err := hybrid.Receive(context.Background(), cb, hybrid.Destination{Memory: struct{ postcopy.Memory }{}, VM: &dstVM{}, Pages: 64, PageSize: pageSize}, hybrid.Config{})
	if !errors.Is(err, livemig.ErrNotSupported) {
		t.Fatalf("Receive = %v", err)
	}
	if _, err := hybrid.Migrate(context.Background(), ca, precopy.Source{}, hybrid.Config{Rounds: -1}); err == nil {
		t.Fatal("negative Rounds accepted")
	}
}

var linkPair = testkit.LinkPair

func openPair(t *testing.T, a, b transport.Link, pages uint64) (transport.Conn, transport.Conn) {
	t.Helper()
	ca, cb, err := testkit.OpenPair(context.Background(), a, b, transport.Hello{PageSize: pageSize, PageCount: pages})
	if err != nil {
		t.Fatal(err)
	}
	return ca, cb
}

package precopy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/faultproxy"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// lyingVM's Pause returns without pausing: its vCPU writes a page during
// stop-and-copy (when the state is saved), as a guest that was not stopped
// would, whatever the scheduling.
type lyingVM struct {
	*vm
	mem *region.Region
}

func (lyingVM) Pause(context.Context) error { return nil }
func (v lyingVM) SaveState(ctx context.Context, dst []byte) ([]byte, error) {
	if err := v.mem.Write(5, 0, []byte{0xab}); err != nil {
		return nil, err
	}
	return v.vm.SaveState(ctx, dst)
}

// A Pause that lets the guest write on is found after stop-and-copy: the
// migration fails naming Pause, the destination does not resume.
func TestPauseThatLies(t *testing.T) {
	const pages = 1024
	src, dst := newSource(t, pages), newDest(t, pages)
	a, b := tcpPair(t)
	dstVM := &vm{VM: dst}
	res := migrate(t, context.Background(), a, b, src, lyingVM{&vm{VM: src}, src}, dst, dstVM,
		precopy.Config{MaxRounds: 2}, context.Background())
	if res.err == nil || !strings.Contains(res.err.Error(), "VM.Pause returned but the guest went on writing") {
		t.Fatalf("source error %v, want one naming Pause", res.err)
	}
	if res.derr == nil || dstVM.resumes.Load() != 0 {
		t.Fatalf("destination error %v, resumes %d: want a failure and no resume", res.derr, dstVM.resumes.Load())
	}
}

// noThrottle hides the region's Throttler, if any.
type noThrottle struct{ livemig.VM }

// The Throttle policy is refused at the start, not rounds later, when the
// VM cannot throttle.
func TestThrottleNeedsThrottler(t *testing.T) {
	src := newSource(t, 64)
	a, b := transport.Pipe(0)
	defer b.Close()
	conn := transport.NewConn(a, transport.Config{})
	_, err := precopy.Migrate(context.Background(), conn, precopy.Source{Memory: src, Dirty: src, VM: noThrottle{src}},
		precopy.Config{OnNonConvergence: precopy.Throttle})
	if !errors.Is(err, livemig.ErrNotSupported) || !strings.Contains(err.Error(), "Throttler") {
		t.Fatalf("Migrate with Throttle and no Throttler: %v, want ErrNotSupported naming Throttler", err)
	}
}

// A destination's error stops a source blocked in a send at once: the
// destination stops reading, then gives up; the source, whose writes fill
// the link, must not wait for the liveness bound.
func TestPeerErrorStopsBlockedSend(t *testing.T) {
	const pages = 4096
	src := newSource(t, pages)
	a, b := transport.Pipe(64 << 10)
	hello := transport.Hello{PageSize: pageSize, PageCount: pages}
	ca, cb, err := testkit.OpenPair(context.Background(), a, b, hello)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := precopy.Migrate(context.Background(), ca, precopy.Source{Memory: src, Dirty: src, VM: src}, precopy.Config{})
		errc <- err
	}()
	var m transport.Msg
	if err := cb.Recv(context.Background(), &m); err != nil { // the migration has begun
		t.Fatal(err)
	}
	start := time.Now()
	if err := cb.Send(context.Background(), transport.Msg{Kind: wire.KindError, Arg: wire.ErrorNotResumed, Data: []byte("disk full")}); err != nil {
		t.Fatal(err)
	}
	err = <-errc // cb never reads again: the source's sends block
	took := time.Since(start)
	cb.Close()
	if !errors.Is(err, livemig.ErrPeer) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("source error %v, want the destination's", err)
	}
	if took > transport.DefaultLiveness/2 {
		t.Errorf("the source took %v to stop after the destination's error", took)
	}
	if src.Paused() {
		t.Error("source left paused")
	}
}

// Without Redial, a link cut right after the Commit leaves the source in
// doubt: an *InDoubtError with the guest paused, not resumed here. The
// destination, still waiting in Reaccept, answers Resolve later: the guest
// runs there.
func TestCommitCutThenResolve(t *testing.T) {
	const pages = 256
	ctx := context.Background()
	src, dst := newSource(t, pages), newDest(t, pages)
	hello := transport.Hello{PageSize: pageSize, PageCount: pages, Features: transport.FeatDigest}
	tcfg := transport.Config{Liveness: time.Second}
	ln, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The link dies as the destination's AckResumed reaches the proxy: the
	// Commit went through, the answer never comes back.
	px, err := faultproxy.New(ln.Addr().String(), faultproxy.Rule{
		Trigger: faultproxy.Trigger{Dir: faultproxy.DstToSrc, Kind: faultproxy.KindAck, Arg: faultproxy.ArgIs(faultproxy.AckResumed)},
		Fault:   faultproxy.Close})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	dial := testkit.Dialer(px.Addr(), hello, tcfg)
	accept := func(ctx context.Context) (transport.Conn, error) {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, _, err := ln.AcceptConn(actx, hello, tcfg)
		return c, err
	}
	dstVM := &vm{VM: dst}
	type dres struct {
		rep *precopy.ReceiveReport
		err error
	}
	dc := make(chan dres, 1)
	go func() {
		conn, err := accept(ctx)
		if err != nil {
			dc <- dres{nil, err}
			return
		}
		rep, err := precopy.Receive(ctx, conn, precopy.Destination{Sink: dst, VM: dstVM, Pages: pages, PageSize: pageSize},
			precopy.Config{Reaccept: accept})
		dc <- dres{rep, err}
	}()
	conn, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = precopy.Migrate(ctx, conn, precopy.Source{Memory: src, Dirty: src, VM: src}, precopy.Config{})
	var doubt *precopy.InDoubtError
	if !errors.As(err, &doubt) || !errors.Is(err, livemig.ErrInDoubt) {
		t.Fatalf("source error %v, want an *InDoubtError", err)
	}
	if !src.Paused() {
		t.Fatal("a source in doubt resumed its guest")
	}
	// Ask again, as an operator would.
	c2, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := precopy.Resolve(ctx, c2, doubt.Session)
	c2.Close()
	if err != nil || !resumed {
		t.Fatalf("Resolve = %v, %v; want resumed at the destination", resumed, err)
	}
	d := <-dc
	if d.err != nil || !d.rep.Resumed || dstVM.resumes.Load() != 1 || d.rep.Reconnects != 1 {
		t.Fatalf("destination: %v, report %+v, resumes %d", d.err, d.rep, dstVM.resumes.Load())
	}
	if n := diffPages(src.Bytes(), dst.Bytes()); n != 0 {
		t.Fatalf("%d pages differ", n)
	}
}

// A source whose AckResumed is lost and whose redial reaches a new Receive
// (a destination serving one migration per connection), not the one that
// resumed the guest, must not take that Receive's refusal for a promise:
// it stays paused, in doubt, instead of running the guest a second time.
func TestRedialReachesAnotherReceive(t *testing.T) {
	const pages = 256
	ctx := context.Background()
	src := newSource(t, pages)
	hello := transport.Hello{PageSize: pageSize, PageCount: pages, Features: transport.FeatDigest}
	tcfg := transport.Config{Liveness: time.Second}
	ln, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	px, err := faultproxy.New(ln.Addr().String(), faultproxy.Rule{
		Trigger: faultproxy.Trigger{Dir: faultproxy.DstToSrc, Kind: faultproxy.KindAck, Arg: faultproxy.ArgIs(faultproxy.AckResumed)},
		Fault:   faultproxy.Close})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	// The destination: a Receive per connection, no Reaccept.
	var resumes []*vm
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			conn, _, err := ln.AcceptConn(ctx, hello, tcfg)
			if err != nil {
				return
			}
			dst := newDest(t, pages)
			v := &vm{VM: dst}
			resumes = append(resumes, v)
			_, _ = precopy.Receive(ctx, conn, precopy.Destination{Sink: dst, VM: v, Pages: pages, PageSize: pageSize}, precopy.Config{})
		}
	}()
	dial := testkit.Dialer(px.Addr(), hello, tcfg)
	conn, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = precopy.Migrate(ctx, conn, precopy.Source{Memory: src, Dirty: src, VM: src},
		precopy.Config{Redial: dial, HandoverTimeout: 500 * time.Millisecond})
	ln.Close()
	<-served
	if !errors.Is(err, livemig.ErrInDoubt) || !src.Paused() {
		t.Fatalf("source error %v, paused %v: want in doubt and paused (the first destination resumed the guest)", err, src.Paused())
	}
	if len(resumes) < 2 || resumes[0].resumes.Load() != 1 {
		t.Fatalf("%d destinations served; the first resumed %d times", len(resumes), resumes[0].resumes.Load())
	}
	for _, v := range resumes[1:] {
		if v.resumes.Load() != 0 {
			t.Fatal("a later Receive resumed a guest")
		}
	}
}

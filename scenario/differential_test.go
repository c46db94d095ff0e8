package scenario

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	hybridpkg "github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/reorder"
	"github.com/livemig/livemig/sim"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// detConn is the deterministic link of the differential test, at the
// source. A hybrid migration's rounds are pre-copy's engine in both worlds,
// over the scenario's simulated link: there detConn wraps a
// transport.SimLink on clocks of its own and carries their time over to
// the source's clock (link), until the hand-off's barrier is answered.
// From then on (and always for post-copy, over a real in-memory pipe) it
// advances the source's virtual clock as PostCopy's model of the link does (every record
// the source writes takes its size at the bandwidth; an answer the source
// waits for, a round trip's record), records the pages written, and plays
// the script's requests: after the k-th page written since the switchover
// it hands the source's return-path reader a request and returns only once
// the reader has taken it in, so the request lands between the same two
// steps as in the simulator.
type detConn struct {
	transport.Conn
	clock  *livemig.VirtualClock
	bw     float64
	mu     *sync.Mutex
	pages  *[]uint64
	script map[int]uint64

	link   *livemig.VirtualClock // the SimLink's source clock, for the rounds
	mirror atomic.Bool           // the link times the source (the rounds)
	paused bool                  // the switchover went
	writes int                   // pages written since
	inject chan injected
	taken  chan struct{} // the reader's next Recv after an injected request (its Recv goroutine's alone)
	pump   chan recvd
	closed chan struct{}
	once   sync.Once
}

// injected is a scripted request and the channel closed when the reader
// has taken it in (it is in Recv again).
type injected struct {
	m     transport.Msg
	taken chan struct{}
}

type recvd struct {
	m   transport.Msg
	err error
}

func newDetConn(c transport.Conn, clock *livemig.VirtualClock, bw float64, mu *sync.Mutex, pages *[]uint64, script map[int]uint64) *detConn {
	d := &detConn{Conn: c, clock: clock, bw: bw, mu: mu, pages: pages, script: script,
		inject: make(chan injected), pump: make(chan recvd), closed: make(chan struct{})}
	go func() {
		for {
			var m transport.Msg
			err := c.Recv(context.Background(), &m)
			m.Data = slices.Clone(m.Data)
			select {
			case d.pump <- recvd{m, err}:
			case <-d.closed:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return d
}

func (c *detConn) tx(n int) time.Duration { return time.Duration(float64(n) * 8 * 1e9 / c.bw) }

func (c *detConn) Flush(ctx context.Context) error {
	if !c.mirror.Load() {
		return c.Conn.Flush(ctx)
	}
	c.link.AdvanceTo(c.clock.Now())
	err := c.Conn.Flush(ctx)
	c.clock.AdvanceTo(c.link.Now())
	return err
}

func (c *detConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *detConn) Send(ctx context.Context, m transport.Msg) error {
	if c.mirror.Load() {
		c.link.AdvanceTo(c.clock.Now())
		err := c.Conn.Send(ctx, m)
		c.clock.AdvanceTo(c.link.Now())
		if m.Kind == wire.KindPage {
			c.mu.Lock()
			*c.pages = append(*c.pages, m.Page)
			c.mu.Unlock()
		}
		return err
	}
	if err := c.Conn.Send(ctx, m); err != nil {
		return err
	}
	if m.Kind == wire.KindSwitchover {
		c.paused = true
	}
	if m.Kind == wire.KindPage {
		c.mu.Lock()
		*c.pages = append(*c.pages, m.Page)
		c.mu.Unlock()
		if c.paused {
			c.writes++
			if p, ok := c.script[c.writes]; ok {
				taken := make(chan struct{})
				select {
				case c.inject <- injected{transport.Msg{Kind: wire.KindRequest, Page: p, Arg: 1}, taken}:
				case <-c.closed:
					return net.ErrClosed
				}
				select {
				case <-taken:
				case <-c.closed:
					return net.ErrClosed
				}
			}
		}
	}
	// Before the pause the source's clock is the link's; after it the guest
	// stands still and the model times the push by events instead.
	switch m.Kind {
	case wire.KindPage, wire.KindEndRound:
		c.clock.Advance(c.tx(transport.RecordOverhead + len(m.Data)))
	case wire.KindDiscard: // the simulator times discards by their frames
		fr := transport.NewFraming(0, 0)
		fr.Control(len(m.Data), 0)
		c.clock.Advance(c.tx(int(fr.Written())))
	}
	return nil
}

func (c *detConn) Recv(ctx context.Context, m *transport.Msg) error {
	if c.taken != nil { // the reader is back: it has handed the request to the Core
		close(c.taken)
		c.taken = nil
	}
	select {
	case in := <-c.inject:
		*m, c.taken = in.m, in.taken
		return nil
	case r := <-c.pump:
		*m = r.m
		if r.err == nil && m.Kind == wire.KindAck && m.Arg == wire.AckRound {
			if c.mirror.Swap(false) { // the hand-off's barrier: the rounds end
				c.clock.AdvanceTo(c.link.Now())
			} else {
				c.clock.Advance(c.tx(transport.RecordOverhead)) // the Ack's record
			}
		}
		return r.err
	case <-c.closed:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// recorder is a Conn that records the pages written on it.
type recorder struct {
	transport.Conn
	mu    *sync.Mutex
	pages *[]uint64
}

func (c recorder) Send(ctx context.Context, m transport.Msg) error {
	if err := c.Conn.Send(ctx, m); err != nil {
		return err
	}
	if m.Kind == wire.KindPage {
		c.mu.Lock()
		*c.pages = append(*c.pages, m.Page)
		c.mu.Unlock()
	}
	return nil
}

// TestDifferentialPostCopy runs one migration twice, by package postcopy's
// driver (goroutines, real in-memory connections, postcopy.Receive at the
// destination) over a deterministic link and by this package's simulator,
// and checks both send the same pages in the same order on each connection
// and report the same counters: both run postcopy.Core, and neither
// decides anything else. The destination's guest does not run: its demand
// faults would come at times the two worlds model differently (a real
// scheduler, a modelled vCPU). Requests come from a script instead, at the
// same step in both.
func TestDifferentialPostCopy(t *testing.T) {
	const pages = 2048
	freq := func(pages uint64) (precopy.Order, error) {
		return reorder.NewFrequency(pages, reorder.FrequencyConfig{})
	}
	// Requests for pages the push has not reached, for one it has, one
	// twice, and neighbours of pages asked for.
	script := map[int]uint64{3: 1500, 4: 1501, 10: 2, 40: 700, 41: 1500, 300: 699, 900: 2047}
	// A downtime target no round meets: the hybrid runs all its rounds
	// (with the default, the first round converges and hands off).
	short := precopy.Config{DowntimeTarget: time.Microsecond}
	cases := []struct {
		name string
		pc   PostCopy
		w    Workload
	}{
		{"post-copy", PostCopy{}, Workload{Kind: "hotcold", Rate: 20000}},
		{"post-copy requests", PostCopy{script: script}, Workload{Kind: "hotcold", Rate: 20000}},
		{"post-copy urgent requests", PostCopy{Urgent: true, script: script, Prepage: 4}, Workload{Kind: "hotcold", Rate: 20000}},
		{"post-copy lz4 capped", PostCopy{LZ4: true, PushBandwidth: 16 << 20, script: script}, Workload{Kind: "mix", Rate: 20000}},
		{"hybrid", PostCopy{PreCopyRounds: 3, PreCopy: short}, Workload{Kind: "hotcold", Rate: 30000}},
		{"hybrid converged", PostCopy{PreCopyRounds: 3}, Workload{Kind: "hotcold", Rate: 30000}},
		{"hybrid lz4 ordered urgent", PostCopy{PreCopyRounds: 4, PreCopy: short, LZ4: true, Order: freq, Urgent: true, script: script},
			Workload{Kind: "mix", Rate: 30000}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Free CPUs: the deterministic link charges bytes only.
			sc := Scenario{Name: c.name, GuestBytes: pages * 4096, Workload: c.w, Bandwidth: 1e9, Seed: 7, Cost: &codec.CostModel{}}
			var simMain, simUrgent []uint64
			pc := c.pc
			pc.trace = func(n uint64, urgent bool) {
				if urgent {
					simUrgent = append(simUrgent, n)
				} else {
					simMain = append(simMain, n)
				}
			}
			pc.noVCPU = true
			res, err := Run(context.Background(), sc, Algorithm{Name: c.name, Migrate: pc.Migrate})
			if err != nil || res.Err != nil || !res.Verified {
				t.Fatalf("simulator: %v, %v, verified %v", err, res.Err, res.Verified)
			}
			rep, realMain, realUrgent := runDriver(t, sc, c.pc)
			if len(simMain) == 0 || !reflect.DeepEqual(simMain, realMain) {
				t.Fatalf("page order differs: simulator %d records, driver %d; first difference at %d",
					len(simMain), len(realMain), firstDiff(simMain, realMain))
			}
			if !reflect.DeepEqual(simUrgent, realUrgent) || (c.pc.Urgent && len(realUrgent) == 0) {
				t.Fatalf("urgent pages differ: simulator %v, driver %v", simUrgent, realUrgent)
			}
			if c.pc.Urgent {
				urgentBatches(t, rep, res.Report, len(realUrgent))
			}
			if got, want := counters(rep), counters(res.Report); got != want {
				t.Fatalf("counters differ:\ndriver    %s\nsimulator %s", got, want)
			}
			t.Logf("%d + %d urgent page records, %s", len(realMain), len(realUrgent), counters(rep))
		})
	}
}

// runDriver migrates sc's guest with postcopy.Migrate and Receive over a
// detConn (and a recorded urgent connection with pc.Urgent), and returns the
// source's report and the pages it wrote on each connection.
func runDriver(t *testing.T, sc Scenario, pc PostCopy) (rep *livemig.Report, main, urgent []uint64) {
	t.Helper()
	ctx := context.Background()
	pages := sc.GuestBytes / 4096
	w, err := sc.Workload.build(pages, 4096)
	if err != nil {
		t.Fatal(err)
	}
	clock := livemig.NewVirtualClock()
	var conn, dconn transport.Conn
	var link *livemig.VirtualClock
	if pc.PreCopyRounds > 0 {
		conn, dconn, link = openSim(t, sc, pages, clock)
	} else {
		conn, dconn = openPipe(t, pages)
	}
	guest, err := sim.NewGuest(sim.GuestConfig{Pages: pages, PageSize: 4096, Seed: sc.Seed, StateSize: 256 << 10}, w, clock)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := sim.NewSink(guest.Config())
	if err != nil {
		t.Fatal(err)
	}
	mem, err := postcopy.NewHeapMemory(4096, pages, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	src := newDetConn(conn, clock, sc.Bandwidth, &mu, &main, pc.script)
	if link != nil {
		src.link = link
		src.mirror.Store(true)
	}
	cfg := postcopy.Config{Clock: clock, LZ4: pc.LZ4, PushBandwidth: pc.PushBandwidth, Prepage: pc.Prepage}
	var dcfg postcopy.Config
	if pc.Urgent {
		u, du := openPipe(t, pages)
		cfg.Urgent, dcfg.Urgent = recorder{u, &mu, &urgent}, du
	}
	if pc.Order != nil {
		if cfg.Order, err = pc.Order(pages); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	var drep *postcopy.ReceiveReport
	var derr error
	go func() {
		defer close(done)
		drep, derr = postcopy.Receive(ctx, dconn, postcopy.Destination{Memory: mem, VM: sink, Pages: pages, PageSize: 4096}, dcfg)
	}()
	gsrc := livemig.Source{Memory: guest, Dirty: guest, VM: guest}
	if pc.PreCopyRounds > 0 {
		hc := hybridpkg.Config{Rounds: pc.PreCopyRounds, Config: cfg, PreCopy: pc.PreCopy}
		hc.PreCopy.Codec.Cost = sc.Cost
		rep, err = hybridpkg.Migrate(ctx, src, gsrc, hc)
	} else {
		rep, err = postcopy.Migrate(ctx, src, gsrc, cfg)
	}
	<-done
	if err != nil || derr != nil || !rep.Verified || !drep.Complete {
		t.Fatalf("driver: source %v, destination %v, verified %v", err, derr, rep != nil && rep.Verified)
	}
	mu.Lock()
	defer mu.Unlock()
	return rep, main, urgent
}

// openPipe returns the two ends of an in-memory connection, handshaken.
func openPipe(t *testing.T, pages uint64) (a, b transport.Conn) {
	t.Helper()
	la, lb := transport.Pipe(1 << 20)
	return handshake(t, la, lb, pages)
}

// handshake opens Conns on the two ends of a link, without heartbeats.
func handshake(t *testing.T, la, lb transport.Link, pages uint64) (a, b transport.Conn) {
	t.Helper()
	hello := transport.Hello{PageSize: 4096, PageCount: pages, Features: transport.FeatPostCopy | transport.FeatDigest}
	var berr error
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		b, _, berr = transport.Open(context.Background(), lb, hello, transport.Config{Liveness: -1})
	}()
	a, _, err := transport.Open(context.Background(), la, hello, transport.Config{Liveness: -1})
	<-opened
	if err != nil || berr != nil {
		t.Fatalf("handshake: %v, %v", err, berr)
	}
	return a, b
}

// openSim returns the two ends of a simulated link as Run makes it,
// handshaken, with clocks of its own (the source's is returned) at the
// instant Run's guest starts, which clock is taken to too.
func openSim(t *testing.T, sc Scenario, pages uint64, clock *livemig.VirtualClock) (a, b transport.Conn, link *livemig.VirtualClock) {
	t.Helper()
	link, dclock := livemig.NewVirtualClock(), livemig.NewVirtualClock()
	la, lb := transport.SimLink(transport.SimConfig{Bandwidth: sc.Bandwidth, Latency: sc.Latency}, link, dclock)
	a, b = handshake(t, la, lb, pages)
	t0 := livemig.VirtualEpoch.Add(handshakeTime)
	for _, c := range []*livemig.VirtualClock{link, dclock, clock} {
		c.AdvanceTo(t0)
	}
	return a, b, link
}

// urgentBatches checks that the two reports' bytes differ by whole batch
// frames' overhead, at most one per urgent page record, and then makes
// them equal. Where the urgent connection's batches end depends on when
// requests reach its sender, a goroutine of the driver: a request that
// comes while the sender has pages of an earlier one in hand joins their
// batch. Every other byte is the same in the two worlds.
func urgentBatches(t *testing.T, real, sim *livemig.Report, urgent int) {
	t.Helper()
	d := int64(sim.BytesSent) - int64(real.BytesSent)
	if d%transport.FrameOverhead != 0 || max(d, -d) > int64(urgent*transport.FrameOverhead) {
		t.Fatalf("bytes sent: simulator %d, driver %d: not %d urgent batches' frames apart at most",
			sim.BytesSent, real.BytesSent, urgent)
	}
	real.BytesSent = sim.BytesSent
	last := len(real.Rounds) - 1
	real.Rounds[last].Bytes = uint64(int64(real.Rounds[last].Bytes) + d)
}

// counters prints a report's figures that do not depend on how the link
// after the pause is timed.
func counters(r *livemig.Report) string {
	s := fmt.Sprintf("sent %d bytes %d zero %d resent %d state %d", r.PagesSent, r.BytesSent, r.ZeroPages, r.PagesResent, r.StateBytes)
	if r.Codec != nil {
		s += fmt.Sprintf(" codec %+v", *r.Codec)
	}
	if r.PostCopy != nil {
		s += fmt.Sprintf(" pushed %d pulled %d", r.PostCopy.PagesPushed, r.PostCopy.PagesPulled)
	}
	for _, rd := range r.Rounds {
		s += fmt.Sprintf(" | round %d final %v start %v took %v dirty %d sent %d bytes %d zero %d", rd.Index, rd.Final,
			rd.Start, roundTime(rd), rd.DirtyPages, rd.PagesSent, rd.Bytes, rd.ZeroPages)
	}
	return s
}

// roundTime is a round's duration, but the post-copy phase's, which the
// simulator times by its events.
func roundTime(r livemig.Round) time.Duration {
	if r.Final {
		return 0
	}
	return r.Duration
}

func firstDiff(a, b []uint64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Written is the wrapped connection's count of the bytes it wrote.
func (c *detConn) Written() uint64 { n, _ := transport.Written(c.Conn); return n }

// Written is the wrapped connection's count of the bytes it wrote.
func (c recorder) Written() uint64 { n, _ := transport.Written(c.Conn); return n }

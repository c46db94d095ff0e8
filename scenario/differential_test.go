package scenario

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/reorder"
	"github.com/livemig/livemig/sim"
	"github.com/livemig/livemig/transport"
)

// detConn is the deterministic link of the differential test, at the
// source: a transport.Conn over a real in-memory pipe that advances the
// source's virtual clock as PostCopy's model of the link does (every record
// the source writes takes its size at the bandwidth; an answer the source
// waits for, a round trip's record) and records the pages written.
type detConn struct {
	transport.Conn
	clock *livemig.VirtualClock
	bw    float64
	mu    *sync.Mutex
	pages *[]uint64
}

func (c *detConn) tx(n int) time.Duration { return time.Duration(float64(n) * 8 * 1e9 / c.bw) }

func (c *detConn) Send(ctx context.Context, m transport.Msg) error {
	if err := c.Conn.Send(ctx, m); err != nil {
		return err
	}
	if m.Kind == transport.KindPage {
		c.mu.Lock()
		*c.pages = append(*c.pages, m.Page)
		c.mu.Unlock()
	}
	// Before the pause the source's clock is the link's; after it the guest
	// stands still and the model times the push by events instead.
	switch m.Kind {
	case transport.KindPage, transport.KindEndRound, transport.KindDiscard:
		c.clock.Advance(c.tx(transport.RecordOverhead + len(m.Data)))
	}
	return nil
}

func (c *detConn) Recv(ctx context.Context, m *transport.Msg) error {
	err := c.Conn.Recv(ctx, m)
	if err == nil && m.Kind == transport.KindAck && m.Arg == transport.AckRound {
		c.clock.Advance(c.tx(transport.RecordOverhead)) // the Ack's record
	}
	return err
}

// TestDifferentialPostCopy runs one migration twice, by package postcopy's
// driver (goroutines, a real in-memory connection, postcopy.Receive at the
// destination) over a deterministic link and by this package's simulator,
// and checks both send the same pages in the same order and report the same
// counters: both run postcopy.Core, and neither decides anything else. The
// destination's guest does not run (no demand faults, whose timing the two
// worlds model differently), so every page arrives by the rounds or the
// push.
func TestDifferentialPostCopy(t *testing.T) {
	const pages = 2048
	freq := func(pages uint64) (precopy.Order, error) {
		return reorder.NewFrequency(pages, reorder.FrequencyConfig{})
	}
	cases := []struct {
		name string
		pc   PostCopy
		w    Workload
	}{
		{"post-copy", PostCopy{}, Workload{Kind: "hotcold", Rate: 20000}},
		{"post-copy lz4 capped", PostCopy{LZ4: true, PushBandwidth: 16 << 20}, Workload{Kind: "mix", Rate: 20000}},
		{"hybrid", PostCopy{PreCopyRounds: 3}, Workload{Kind: "hotcold", Rate: 30000}},
		{"hybrid lz4 ordered", PostCopy{PreCopyRounds: 4, LZ4: true, Order: freq}, Workload{Kind: "mix", Rate: 30000}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sc := Scenario{Name: c.name, GuestBytes: pages * 4096, Workload: c.w, Bandwidth: 1e9, Seed: 7}
			var simPages []uint64
			pc := c.pc
			pc.trace = func(n uint64) { simPages = append(simPages, n) }
			pc.noVCPU = true
			res, err := Run(context.Background(), sc, Algorithm{Name: c.name, Migrate: pc.Migrate})
			if err != nil || res.Err != nil || !res.Verified {
				t.Fatalf("simulator: %v, %v, verified %v", err, res.Err, res.Verified)
			}
			rep, realPages := runDriver(t, sc, c.pc)
			if len(simPages) == 0 || !reflect.DeepEqual(simPages, realPages) {
				t.Fatalf("page order differs: simulator %d records, driver %d; first difference at %d",
					len(simPages), len(realPages), firstDiff(simPages, realPages))
			}
			if got, want := counters(rep), counters(res.Report); got != want {
				t.Fatalf("counters differ:\ndriver    %s\nsimulator %s", got, want)
			}
			t.Logf("%d page records, %s", len(realPages), counters(rep))
		})
	}
}

// runDriver migrates sc's guest with postcopy.Migrate and Receive over a
// detConn, and returns the source's report and the pages it wrote.
func runDriver(t *testing.T, sc Scenario, pc PostCopy) (*livemig.Report, []uint64) {
	t.Helper()
	ctx := context.Background()
	pages := sc.GuestBytes / 4096
	w, err := sc.Workload.build(pages, 4096)
	if err != nil {
		t.Fatal(err)
	}
	clock := livemig.NewVirtualClock()
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
	a, b := transport.Pipe(1 << 20)
	hello := transport.Hello{PageSize: 4096, PageCount: pages, Features: transport.FeatPostCopy | transport.FeatDigest}
	var dconn transport.Conn
	var derr error
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		dconn, _, derr = transport.Open(ctx, b, hello, transport.Config{Liveness: -1})
	}()
	conn, _, err := transport.Open(ctx, a, hello, transport.Config{Liveness: -1})
	<-opened
	if err != nil || derr != nil {
		t.Fatalf("handshake: %v, %v", err, derr)
	}
	var mu sync.Mutex
	var sent []uint64
	src := &detConn{Conn: conn, clock: clock, bw: sc.Bandwidth, mu: &mu, pages: &sent}
	cfg := postcopy.Config{Clock: clock, PreCopyRounds: pc.PreCopyRounds, LZ4: pc.LZ4, PushBandwidth: pc.PushBandwidth, Prepage: pc.Prepage}
	if pc.Order != nil {
		if cfg.Order, err = pc.Order(pages); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	var drep *postcopy.ReceiveReport
	go func() {
		defer close(done)
		drep, derr = postcopy.Receive(ctx, dconn, postcopy.Destination{Memory: mem, VM: sink, Pages: pages, PageSize: 4096},
			postcopy.Config{})
	}()
	rep, err := postcopy.Migrate(ctx, src, precopy.Source{Memory: guest, Dirty: guest, VM: guest}, cfg)
	<-done
	if err != nil || derr != nil || !rep.Verified || !drep.Complete {
		t.Fatalf("driver: source %v, destination %v, verified %v", err, derr, rep != nil && rep.Verified)
	}
	mu.Lock()
	defer mu.Unlock()
	return rep, sent
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

// Package scenario runs migration algorithms on simulated guests over
// simulated links, in virtual time: the evaluation of examples/compare and of
// the simulated benchmarks.
//
// A Scenario is a guest (size, workload, seed), a link (bandwidth,
// latency) and what the hosts' CPUs take to encode and decode pages (a
// codec.CostModel). Run migrates it with an Algorithm between a sim.Guest and a
// sim.Sink, and returns the engine's report and whether the destination
// verified every page against the paused source. Everything is
// deterministic: the same scenario gives the same figures on every run.
//
// Pre-copy runs the same engine code that migrates real memory over TCP
// (package precopy), over a transport.SimLink. Post-copy and hybrid run
// PostCopy, an event loop that drives package postcopy's Core (every
// decision of the engine: rounds, discards, push, requests, pre-paging,
// counters) over a model of the link and runs the destination's vCPU on
// the workload, faults costing a round trip: the engine's goroutines
// around the same Core would make virtual-time figures depend on
// scheduling. TestDifferentialPostCopy checks that the two worlds send the
// same pages in the same order and count the same.
package scenario

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/sim"
	"github.com/livemig/livemig/transport"
)

// Workload describes a simulated guest's writes, in a form that prints and
// parses from flags.
type Workload struct {
	// Kind is idle, uniform, hotcold, stream, video or mix.
	Kind string `json:"kind"`
	// Rate is the pages the guest writes per second of its running time.
	Rate float64 `json:"rate,omitempty"`
	// HotBytes is the hot set of hotcold and video and the buffer of
	// stream (and of the stream part of mix); default a 64th of the guest.
	HotBytes uint64 `json:"hot_bytes,omitempty"`
	// HotFraction is the share of hotcold's writes that go to the hot set
	// (default 0.9), and of video's (default 0.1).
	HotFraction float64 `json:"hot_fraction,omitempty"`
	// Whole makes every write rewrite the whole page instead of a few words.
	Whole bool `json:"whole,omitempty"`
	// BufferBytes is video's buffer, written sequentially in whole pages;
	// default a quarter of the guest.
	BufferBytes uint64 `json:"buffer_bytes,omitempty"`
}

func (w Workload) String() string {
	switch w.Kind {
	case "idle":
		return "idle"
	case "hotcold":
		return fmt.Sprintf("hotcold %.0f pages/s, %d%% to %s", w.Rate, int(100*w.HotFraction+0.5), livemig.FormatBytes(w.HotBytes))
	case "stream":
		return fmt.Sprintf("stream %.0f pages/s over %s", w.Rate, livemig.FormatBytes(w.HotBytes))
	case "video":
		f, buf, hot := w.videoHot(), "a quarter of the guest", "a 64th"
		if w.BufferBytes > 0 {
			buf = livemig.FormatBytes(w.BufferBytes)
		}
		if w.HotBytes > 0 {
			hot = livemig.FormatBytes(w.HotBytes)
		}
		return fmt.Sprintf("video %.0f pages/s: %d%% whole pages through %s, %d%% to %s", w.Rate,
			int(100*(1-f)+0.5), buf, int(100*f+0.5), hot)
	}
	return fmt.Sprintf("%s %.0f pages/s", w.Kind, w.Rate)
}

// build returns the sim workload for a guest of pages pages of pageSize.
func (w Workload) build(pages uint64, pageSize int) (sim.Workload, error) {
	hot := w.HotBytes / uint64(pageSize)
	if hot == 0 {
		hot = pages / 64
	}
	if hot > pages {
		hot = pages
	}
	switch w.Kind {
	case "idle", "":
		return sim.Idle(), nil
	case "uniform":
		return sim.Uniform(w.Rate, w.Whole), nil
	case "hotcold":
		f := w.HotFraction
		if f == 0 {
			f = 0.9
		}
		return sim.HotCold(w.Rate, hot, f, w.Whole), nil
	case "stream":
		// A streaming server fills a buffer sequentially (whole pages of new
		// data) while a little bookkeeping dirties pages anywhere.
		return sim.Mix(sim.Sequential(w.Rate*0.95, pages/4, hot, true), sim.Uniform(w.Rate*0.05, false)), nil
	case "video":
		// A video-streaming server: a large buffer written sequentially in
		// whole pages of new frames, and a small hot set of a few words
		// per write (connection state, counters, the player's indexes).
		buf := w.BufferBytes / uint64(pageSize)
		if buf == 0 {
			buf = pages / 4
		}
		buf = min(buf, pages-pages/4)
		f := w.videoHot()
		return sim.Mix(sim.Sequential(w.Rate*(1-f), pages/4, buf, true), sim.HotCold(w.Rate*f, hot, 1, false)), nil
	case "mix":
		return sim.Mix(sim.HotCold(w.Rate*0.6, hot, 0.9, w.Whole), sim.Sequential(w.Rate*0.3, pages/2, hot, true),
			sim.Uniform(w.Rate*0.1, w.Whole)), nil
	}
	return nil, fmt.Errorf("scenario: unknown workload %q (want idle, uniform, hotcold, stream, video or mix)", w.Kind)
}

// videoHot is the share of video's writes that go to its hot set: HotFraction,
// 0.1 by default.
func (w Workload) videoHot() float64 {
	if w.HotFraction > 0 {
		return w.HotFraction
	}
	return 0.1
}

// Scenario is a guest and a link.
type Scenario struct {
	Name       string        `json:"name"`
	GuestBytes uint64        `json:"guest_bytes"`
	PageSize   int           `json:"page_size,omitempty"` // default 4096
	Workload   Workload      `json:"workload"`
	Bandwidth  float64       `json:"bandwidth_bps"` // bits per second
	Latency    time.Duration `json:"latency"`       // one way
	Seed       uint64        `json:"seed"`
	// StateBytes is the CPU/device state; default 256 KiB, about what a
	// small QEMU guest's device sections take.
	StateBytes int `json:"state_bytes,omitempty"`
	// Cost is what encoding and decoding pages costs the two hosts' CPUs,
	// charged in virtual time (see codec.CostModel): nil means
	// codec.DefaultCost(), &codec.CostModel{} free CPUs. Pre-copy's codec
	// pipeline charges it unless the Algorithm's PreCopy.Codec.Cost is
	// set; a Migrator of another kind reads it from Endpoints.Scenario
	// (its methods take a nil model as the default).
	Cost *codec.CostModel `json:"cost,omitempty"`
}

// handshakeTime is when, in virtual time, a scenario's guest starts: after
// the handshake, whatever the link's latency (up to this bound).
const handshakeTime = time.Second

// Algorithm is a migration algorithm with its options.
//
// By default an Algorithm is pre-copy (precopy.Migrate at the source,
// precopy.Receive at the destination) configured by PreCopy, with the page
// order made by Order. An algorithm of another kind (post-copy, hybrid) sets
// Migrate, which then runs instead, on the same prepared endpoints: adding
// one is a Migrator, not a change to Run.
type Algorithm struct {
	Name    string
	PreCopy precopy.Config // Clock is set by Run; Order is set from Order
	// Order, if set, makes the page order of one run for a guest of pages
	// pages. It is called once per Run, because an order such as
	// reorder.ByFrequency keeps per-migration history and must not be
	// shared between migrations. Nil: PreCopy.Order (usually nil, the
	// standard ascending order).
	Order func(pages uint64) (precopy.Order, error)
	// Migrate, if set, replaces pre-copy: it migrates e.Guest to e.Sink
	// over e.Source and e.Dest. PreCopy and Order are then ignored unless
	// Migrate reads them.
	Migrate Migrator
}

// Endpoints is a scenario made ready to migrate: the guest running on the
// source's clock, the destination's sink, and the two ends of a simulated
// link whose handshake is done. A Migrator owns the two Conns from the call
// on, and must end with both sides finished (the engines close them).
type Endpoints struct {
	Scenario Scenario
	Pages    uint64
	PageSize int
	// Source and Dest are the source's and the destination's ends of the
	// link, both handshaken with the digest feature agreed.
	Source, Dest transport.Conn
	// SourceClock and DestClock are the two sides' virtual clocks; the
	// link advances them as bytes cross it.
	SourceClock, DestClock *livemig.VirtualClock
	// Guest is the source: livemig.Memory, DirtySource (and DirtyPeeker),
	// VM (and Throttler).
	Guest *sim.Guest
	// Sink is the destination: livemig.PageSink and VM.
	Sink *sim.Sink
}

// Outcome is what a Migrator reports of one migration.
type Outcome struct {
	// Report is the source's report; it may be partial, or nil, when Err
	// is set.
	Report *livemig.Report
	// Err is the source's error: the migration aborted (the source guest
	// must then still be running).
	Err error
	// DestErr is the destination's error, if any.
	DestErr error
	// DestResumed is whether the destination resumed the guest.
	DestResumed bool
	// Receive is the pre-copy destination's report; nil for other kinds.
	Receive *precopy.ReceiveReport
}

// Migrator runs one migration between prepared endpoints, in both roles
// (the destination in a goroutine of its own), and returns when both are
// done. It is called from the goroutine that called Run.
type Migrator func(ctx context.Context, e Endpoints) Outcome

// preCopy is the Migrator of a pre-copy Algorithm.
func (alg Algorithm) preCopy(ctx context.Context, e Endpoints) Outcome {
	cfg := alg.PreCopy
	cfg.Clock = e.SourceClock
	if cfg.Codec.Cost == nil {
		cfg.Codec.Cost = e.Scenario.Cost
	}
	if alg.Order != nil {
		o, err := alg.Order(e.Pages)
		if err != nil {
			e.Source.Close()
			e.Dest.Close()
			return Outcome{Err: fmt.Errorf("scenario: %s: page order: %w", alg.Name, err), DestErr: err}
		}
		cfg.Order = o
	}
	var out Outcome
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out.Receive, out.DestErr = precopy.Receive(ctx, e.Dest,
			precopy.Destination{Sink: e.Sink, VM: e.Sink, Pages: e.Pages, PageSize: e.PageSize},
			precopy.Config{Clock: e.DestClock})
	}()
	out.Report, out.Err = precopy.Migrate(ctx, e.Source, precopy.Source{Memory: e.Guest, Dirty: e.Guest, VM: e.Guest}, cfg)
	wg.Wait()
	out.DestResumed = out.Receive != nil && out.Receive.Resumed
	return out
}

// Result is one scenario run by one algorithm.
type Result struct {
	Scenario  Scenario
	Algorithm string
	Report    *livemig.Report
	Receive   *precopy.ReceiveReport
	// Verified is true when the engine's end-to-end digest matched and the
	// sink, checked page by page against the paused source, agreed.
	Verified bool
	// Err is the migration's error, if it failed (an aborted migration is a
	// result, not a failure of the evaluation).
	Err error
	// Guest is the source guest's figures at the end.
	Guest sim.Stats
}

// Row is a Result as the flat record examples/compare prints.
type Row struct {
	Scenario    string  `json:"scenario"`
	Algorithm   string  `json:"algorithm"`
	TotalMS     float64 `json:"total_ms"`
	DowntimeMS  float64 `json:"downtime_ms"`
	BytesSent   uint64  `json:"bytes_sent"`
	PagesSent   uint64  `json:"pages_sent"`
	PagesResent uint64  `json:"pages_resent"`
	Rounds      int     `json:"rounds"`
	Verified    bool    `json:"verified"`
	Converged   bool    `json:"converged"`
	// Codec figures, on rows whose algorithm uses a codec.
	CodecRatio   float64 `json:"codec_ratio,omitempty"`    // page bytes before / after encoding
	CacheHitRate float64 `json:"cache_hit_rate,omitempty"` // XBZRLE cache hits / lookups
	// Codecs are the optional codecs on at the end, on pre-copy rows with
	// a codec: "xbzrle+lz4", "xbzrle", "lz4", or "none" when adaptation
	// turned them all off.
	Codecs string `json:"codecs,omitempty"`
	// Post-copy figures, on post-copy and hybrid rows when not zero: the
	// destination's demand faults, the pages sent because the destination
	// asked (requested pages and their pre-paged neighbours), and the
	// guest time lost waiting on faults, in total and at the 99th
	// percentile of one fault (the degradation post-copy trades for its
	// downtime).
	// PostCopy says the guest resumed at the destination before all its
	// memory was there: post-copy, hybrid, or the adaptive engine's
	// hand-off.
	PostCopy     bool    `json:"post_copy,omitempty"`
	DemandFaults uint64  `json:"demand_faults,omitempty"`
	PagesPulled  uint64  `json:"pages_pulled,omitempty"`
	FaultWaitMS  float64 `json:"fault_wait_ms,omitempty"`
	FaultP99MS   float64 `json:"fault_p99_ms,omitempty"`
	Error        string  `json:"error,omitempty"`
}

// Row flattens r.
func (r Result) Row() Row {
	row := Row{Scenario: r.Scenario.Name, Algorithm: r.Algorithm, Verified: r.Verified}
	if rep := r.Report; rep != nil {
		row.TotalMS = float64(rep.TotalTime) / float64(time.Millisecond)
		row.DowntimeMS = float64(rep.Downtime) / float64(time.Millisecond)
		row.BytesSent, row.PagesSent, row.PagesResent = rep.BytesSent, rep.PagesSent, rep.PagesResent
		row.Rounds, row.Converged = len(rep.Rounds), rep.Converged
		if rep.Codec != nil {
			row.CodecRatio = rep.Codec.Ratio()
			row.CacheHitRate = rep.Codec.HitRate()
			row.Codecs = rep.Codec.Codecs
		}
		if pc := rep.PostCopy; pc != nil {
			row.PostCopy = true
			row.DemandFaults, row.PagesPulled = pc.DemandFaults, pc.PagesPulled
			row.FaultWaitMS = float64(pc.WaitTotal) / float64(time.Millisecond)
			row.FaultP99MS = float64(pc.FaultP99) / float64(time.Millisecond)
		}
	}
	if r.Err != nil {
		row.Error = r.Err.Error()
	}
	return row
}

// NewGuest returns the guest sc's migration starts from, running on clock
// from now: the same pages, contents and workload as Run's source, for a
// caller that observes it before (a profiler, package advisor). It shares
// nothing with a Run.
func (sc Scenario) NewGuest(clock livemig.Clock) (*sim.Guest, error) {
	g, err := sc.geometry()
	if err != nil {
		return nil, err
	}
	return g.guest(sc.Seed, clock)
}

// geometry is a scenario's guest as Run and NewGuest build it.
type geometry struct {
	pages uint64
	ps    int // page size
	state int // device state's bytes
	w     sim.Workload
}

// geometry checks sc's guest and fills in its defaults.
func (sc Scenario) geometry() (geometry, error) {
	ps := sc.PageSize
	if ps == 0 {
		ps = livemig.DefaultPageSize
	}
	if sc.GuestBytes < uint64(ps) {
		return geometry{}, fmt.Errorf("scenario %s: guest of %d bytes", sc.Name, sc.GuestBytes)
	}
	g := geometry{pages: sc.GuestBytes / uint64(ps), ps: ps, state: sc.StateBytes}
	if g.state == 0 {
		g.state = 256 << 10
	}
	var err error
	g.w, err = sc.Workload.build(g.pages, ps)
	return g, err
}

// guest is the source guest of the geometry, on clock.
func (g geometry) guest(seed uint64, clock livemig.Clock) (*sim.Guest, error) {
	return sim.NewGuest(sim.GuestConfig{Pages: g.pages, PageSize: g.ps, Seed: seed, StateSize: g.state}, g.w, clock)
}

// Run migrates the scenario's guest with alg in virtual time. It returns an
// error only when the scenario cannot be set up or the destination's check
// fails; a migration that ends in an error of its own (an abort) is reported
// in Result.Err.
func Run(ctx context.Context, sc Scenario, alg Algorithm) (Result, error) {
	res := Result{Scenario: sc, Algorithm: alg.Name}
	g, err := sc.geometry()
	if err != nil {
		return res, err
	}
	pages, ps := g.pages, g.ps
	srcClock, dstClock := livemig.NewVirtualClock(), livemig.NewVirtualClock()
	a, b := transport.SimLink(transport.SimConfig{Bandwidth: sc.Bandwidth, Latency: sc.Latency}, srcClock, dstClock)
	hello := transport.Hello{PageSize: uint32(ps), PageCount: pages, Features: transport.FeatDigest}

	// The handshake writes each side's hello while it reads the peer's, so
	// the two may order either way in virtual time. Take both clocks past it
	// to a fixed instant before the guest starts, so that nothing after
	// depends on how the goroutines ran.
	var dconn transport.Conn
	var derr error
	opened := make(chan struct{})
	go func() {
		defer close(opened)
		if dconn, _, derr = transport.Open(ctx, b, hello, transport.Config{}); derr != nil {
			b.Close()
		}
	}()
	conn, _, err := transport.Open(ctx, a, hello, transport.Config{})
	<-opened
	if err != nil || derr != nil {
		a.Close()
		if dconn != nil {
			dconn.Close()
		}
		return res, fmt.Errorf("scenario %s: handshake: %w", sc.Name, errors.Join(err, derr))
	}
	t0 := livemig.VirtualEpoch.Add(handshakeTime)
	srcClock.AdvanceTo(t0)
	dstClock.AdvanceTo(t0)

	guest, err := g.guest(sc.Seed, srcClock)
	if err != nil {
		conn.Close()
		dconn.Close()
		return res, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	sink, err := sim.NewSink(guest.Config())
	if err != nil {
		conn.Close()
		dconn.Close()
		return res, fmt.Errorf("scenario %s: %w", sc.Name, err)
	}
	migrate := alg.Migrate
	if migrate == nil {
		migrate = alg.preCopy
	}
	out := migrate(ctx, Endpoints{Scenario: sc, Pages: pages, PageSize: ps, Source: conn, Dest: dconn,
		SourceClock: srcClock, DestClock: dstClock, Guest: guest, Sink: sink})
	res.Report, res.Err, res.Receive = out.Report, out.Err, out.Receive
	res.Guest = guest.Stats()
	if res.Err != nil {
		if out.DestResumed {
			return res, fmt.Errorf("scenario %s: %s failed (%v) but the destination resumed", sc.Name, alg.Name, res.Err)
		}
		return res, nil
	}
	if out.DestErr != nil {
		return res, fmt.Errorf("scenario %s: source succeeded, destination failed: %w", sc.Name, out.DestErr)
	}
	if res.Report == nil {
		return res, fmt.Errorf("scenario %s: %s returned no report", sc.Name, alg.Name)
	}
	if err := sink.Verify(guest); err != nil {
		return res, fmt.Errorf("scenario %s: %s: %w", sc.Name, alg.Name, err)
	}
	res.Verified = res.Report.Verified
	return res, nil
}

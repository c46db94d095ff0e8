package scenario

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
)

const mib = 1 << 20

func small(name string, w Workload) Scenario {
	// 256 MiB over 1 Gbit/s: about 2 s of virtual time for the bulk round.
	return Scenario{Name: name, GuestBytes: 256 * mib, Workload: w, Bandwidth: 1e9, Latency: 100 * time.Microsecond, Seed: 7}
}

var preCopy = Algorithm{Name: "pre-copy"}

// An idle guest migrates in one round plus a stop-and-copy that carries only
// the state: its downtime is the state over the link plus the hand-over's
// round trips.
func TestIdleGuest(t *testing.T) {
	sc := small("idle", Workload{Kind: "idle"})
	res, err := Run(context.Background(), sc, preCopy)
	if err != nil || res.Err != nil {
		t.Fatal(err, res.Err)
	}
	rep := res.Report
	if len(rep.Rounds) != 2 || rep.Rounds[1].PagesSent != 0 || rep.PagesResent != 0 || !rep.Converged || !res.Verified {
		t.Fatalf("idle guest: %v", rep)
	}
	stateTime := time.Duration(float64(rep.StateBytes+64) * 8 / sc.Bandwidth * float64(time.Second))
	lo, hi := stateTime, stateTime+4*sc.Latency+50*time.Microsecond
	if rep.Downtime < lo || rep.Downtime > hi {
		t.Fatalf("downtime %v, want within [%v, %v] (state %d bytes)", rep.Downtime, lo, hi, rep.StateBytes)
	}
	pages := sc.GuestBytes / livemig.DefaultPageSize
	if rep.PagesSent != pages {
		t.Fatalf("sent %d pages of %d", rep.PagesSent, pages)
	}
	// The bulk round moves the non-zero pages at the link's rate.
	bulk := time.Duration(float64(rep.Rounds[0].Bytes) * 8 / sc.Bandwidth * float64(time.Second))
	if d := rep.Rounds[0].Duration; d < bulk || d > bulk+bulk/50 {
		t.Fatalf("bulk round %v, %d bytes at the link's rate take %v", d, rep.Rounds[0].Bytes, bulk)
	}
}

// A guest that dirties pages faster than the link drains them never
// converges: stop-and-copy goes over the downtime target, abort fails with
// the source running, throttling brings it within the target.
func TestNonConvergencePolicies(t *testing.T) {
	if raceEnabled {
		t.Skip("simulated figures: run without -race (CI does)")
	}
	sc := small("uniform-high", Workload{Kind: "uniform", Rate: 40000})
	target := 300 * time.Millisecond

	res, err := Run(context.Background(), sc, Algorithm{Name: "stop", PreCopy: precopy.Config{DowntimeTarget: target}})
	if err != nil || res.Err != nil {
		t.Fatal(err, res.Err)
	}
	if res.Report.Converged || res.Report.Downtime <= target || !res.Verified {
		t.Fatalf("stop-and-copy: converged %v downtime %v verified %v", res.Report.Converged, res.Report.Downtime, res.Verified)
	}

	res, err = Run(context.Background(), sc, Algorithm{Name: "abort", PreCopy: precopy.Config{DowntimeTarget: target, OnNonConvergence: precopy.Abort}})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.Err, livemig.ErrNotConverged) || res.Guest.Paused || res.Receive.Resumed {
		t.Fatalf("abort: err %v, source paused %v, destination resumed %v", res.Err, res.Guest.Paused, res.Receive.Resumed)
	}

	res, err = Run(context.Background(), sc, Algorithm{Name: "throttle", PreCopy: precopy.Config{DowntimeTarget: target, OnNonConvergence: precopy.Throttle}})
	if err != nil || res.Err != nil {
		t.Fatal(err, res.Err)
	}
	if !res.Report.Converged || res.Report.Downtime > target || res.Report.Throttle < 0.2 || !res.Verified {
		t.Fatalf("throttle: converged %v downtime %v throttle %v", res.Report.Converged, res.Report.Downtime, res.Report.Throttle)
	}
}

// The same scenario gives the same figures, to the nanosecond and the byte.
func TestDeterministic(t *testing.T) {
	for _, w := range []Workload{
		{Kind: "hotcold", Rate: 20000, HotBytes: 16 * mib, HotFraction: 0.9},
		{Kind: "stream", Rate: 20000, HotBytes: 32 * mib},
		{Kind: "mix", Rate: 30000, HotBytes: 16 * mib},
	} {
		sc := small(w.Kind, w)
		if raceEnabled {
			sc.GuestBytes = 64 * mib // the race detector is slow; the guest size changes nothing here
		}
		alg := Algorithm{Name: "pre-copy", PreCopy: precopy.Config{DowntimeTarget: 20 * time.Millisecond}}
		a, err := Run(context.Background(), sc, alg)
		if err != nil || a.Err != nil {
			t.Fatal(err, a.Err)
		}
		b, err := Run(context.Background(), sc, alg)
		if err != nil || b.Err != nil {
			t.Fatal(err, b.Err)
		}
		if a.Row() != b.Row() || a.Report.String() != b.Report.String() {
			t.Fatalf("%s: two runs differ:\n%v\n%v", w.Kind, a.Report, b.Report)
		}
		if !a.Verified || len(a.Report.Rounds) < 3 || a.Report.PagesResent == 0 {
			t.Fatalf("%s: a busy guest should take several rounds: %v", w.Kind, a.Report)
		}
	}
}

func TestUnknownWorkload(t *testing.T) {
	if _, err := Run(context.Background(), small("x", Workload{Kind: "bogus"}), preCopy); err == nil {
		t.Fatal("unknown workload accepted")
	}
}

func benchScenario(b *testing.B, sc Scenario, alg Algorithm) {
	b.ReportAllocs()
	var res Result
	for b.Loop() {
		var err error
		res, err = Run(context.Background(), sc, alg)
		if err != nil || res.Err != nil {
			b.Fatal(err, res.Err)
		}
	}
	rep := res.Report
	b.SetBytes(int64(sc.GuestBytes))
	b.ReportMetric(float64(rep.Downtime)/float64(time.Millisecond), "downtime-ms")
	b.ReportMetric(float64(rep.TotalTime)/float64(time.Millisecond), "total-ms")
	b.ReportMetric(float64(rep.BytesSent)/1e6, "MB-sent")
	b.ReportMetric(float64(rep.PagesResent), "pages-resent")
	if pc := rep.PostCopy; pc != nil {
		b.ReportMetric(float64(pc.DemandFaults), "faults")
		b.ReportMetric(float64(pc.WaitTotal)/float64(time.Millisecond), "fault-wait-ms")
	}
}

// BenchmarkSimulated runs 1 GiB guests over 1 Gbit/s in virtual time, by
// pre-copy (the engine), post-copy with preemption and hybrid (the model):
// the custom metrics are the simulated figures (exact), ns/op and MB/s the
// cost of simulating.
func BenchmarkSimulated(b *testing.B) {
	base := Scenario{GuestBytes: 1 << 30, Bandwidth: 1e9, Latency: 100 * time.Microsecond, Seed: 2012}
	for _, w := range []Workload{
		{Kind: "idle"},
		{Kind: "uniform", Rate: 5000},
		{Kind: "hotcold", Rate: 20000, HotBytes: 64 * mib, HotFraction: 0.9},
		{Kind: "stream", Rate: 10000, HotBytes: 128 * mib},
	} {
		sc := base
		sc.Name, sc.Workload = w.Kind, w
		for _, alg := range []Algorithm{preCopy, preempt, hybridAlg} {
			b.Run(w.Kind+"/"+alg.Name, func(b *testing.B) { benchScenario(b, sc, alg) })
		}
	}
}

// A guest that rewrites a few words of many pages faster than the link can
// carry whole pages does not converge with plain pre-copy, and does with
// XBZRLE: the re-sent pages go as deltas of a few dozen bytes, and the
// downtime falls by an order of magnitude or more.
func TestXBZRLEConverges(t *testing.T) {
	if raceEnabled {
		t.Skip("simulated figures: run without -race (CI does)")
	}
	sc := small("hot-words", Workload{Kind: "hotcold", Rate: 50000, HotBytes: 64 * mib, HotFraction: 0.95})
	target := 100 * time.Millisecond
	plain, err := Run(context.Background(), sc, Algorithm{Name: "pre-copy", PreCopy: precopy.Config{DowntimeTarget: target}})
	if err != nil || plain.Err != nil {
		t.Fatal(err, plain.Err)
	}
	xcfg := precopy.Config{DowntimeTarget: target}
	xcfg.Codec.XBZRLE = true
	xcfg.Codec.Cache.Bytes = 128 * mib
	x, err := Run(context.Background(), sc, Algorithm{Name: "pre-copy+xbzrle", PreCopy: xcfg})
	if err != nil || x.Err != nil {
		t.Fatal(err, x.Err)
	}
	if plain.Report.Converged || !x.Report.Converged || !x.Verified {
		t.Fatalf("converged: plain %v, xbzrle %v (verified %v)\n%v\n%v", plain.Report.Converged, x.Report.Converged, x.Verified, plain.Report, x.Report)
	}
	if ratio := float64(plain.Report.Downtime) / float64(x.Report.Downtime); ratio < 10 {
		t.Fatalf("downtime %v without XBZRLE, %v with: only %.1fx lower", plain.Report.Downtime, x.Report.Downtime, ratio)
	}
	c := x.Report.Codec
	if c == nil || c.DeltaPages == 0 || x.Report.BytesSent >= plain.Report.BytesSent {
		t.Fatalf("codec figures %+v; %d bytes sent with XBZRLE, %d without", c, x.Report.BytesSent, plain.Report.BytesSent)
	}
	t.Logf("downtime %v -> %v (%.0fx), data %s -> %s, codec ratio %.2f, hit rate %.0f%%",
		plain.Report.Downtime, x.Report.Downtime, float64(plain.Report.Downtime)/float64(x.Report.Downtime),
		livemig.FormatBytes(plain.Report.BytesSent), livemig.FormatBytes(x.Report.BytesSent), c.Ratio(), 100*c.HitRate())
}

// The scenario's CPU cost model is charged in virtual time: LZ4 on one
// modelled core is slower than a 10 Gbit/s link, so the bulk round takes
// the encoder's time, page by page as the model says; with free CPUs it
// takes the link's. An Algorithm's own model wins over the scenario's.
func TestCPUCost(t *testing.T) {
	sc := small("idle", Workload{Kind: "idle"})
	sc.GuestBytes, sc.Bandwidth = 16*mib, 10e9 // cheap under -race
	lz4 := precopy.Config{}
	lz4.Codec.LZ4, lz4.Codec.NoAdapt = true, true
	bulk := func(sc Scenario, cfg precopy.Config) (time.Duration, *livemig.Report) {
		t.Helper()
		res, err := Run(context.Background(), sc, Algorithm{Name: "pre-copy+lz4", PreCopy: cfg})
		if err != nil || res.Err != nil || !res.Verified {
			t.Fatal(err, res.Err)
		}
		return res.Report.Rounds[0].Duration, res.Report
	}
	d, rep := bulk(sc, lz4)
	r := rep.Rounds[0]
	def := codec.DefaultCost()
	lzPages := rep.Codec.LZ4Pages
	want := time.Duration(lzPages)*def.Encode(codec.Outcome{LZ4: codec.LZ4Sent}, 4096) +
		time.Duration(r.ZeroPages)*def.Encode(codec.Outcome{Zero: true}, 4096) +
		time.Duration(r.PagesSent-r.ZeroPages-lzPages)*def.Encode(codec.Outcome{LZ4: codec.LZ4Rejected}, 4096)
	link := time.Duration(float64(r.Bytes) * 8 / sc.Bandwidth * float64(time.Second))
	t.Logf("bulk round: %v; the encoder's time %v, the link's %v (%d pages, %d LZ4, %d zero)", d, want, link,
		r.PagesSent, lzPages, r.ZeroPages)
	if d < want || d > want+want/50 || want < 2*link {
		t.Errorf("bulk round took %v, the default model's encoding %v, the link %v", d, want, link)
	}

	free := sc
	free.Cost = &codec.CostModel{}
	if d, _ := bulk(free, lz4); d < link || d > link+link/50 {
		t.Errorf("free CPUs: bulk round took %v, the link %v", d, link)
	}
	own := lz4
	own.Codec.Cost = &codec.CostModel{}
	if d, _ := bulk(sc, own); d < link || d > link+link/50 {
		t.Errorf("the algorithm's free CPUs: bulk round took %v, the link %v", d, link)
	}
}

// NewGuest builds the guest Run migrates: its pages, page size and
// workload, running on the clock given.
func TestNewGuest(t *testing.T) {
	sc := Scenario{Name: "g", GuestBytes: 8 << 20, Workload: Workload{Kind: "hotcold", Rate: 1000, HotBytes: 1 << 20}, Seed: 3}
	clock := livemig.NewVirtualClock()
	g, err := sc.NewGuest(clock)
	if err != nil {
		t.Fatal(err)
	}
	if g.PageCount() != 2048 || g.PageSize() != livemig.DefaultPageSize || g.Config().StateSize != 256<<10 {
		t.Fatalf("guest %+v", g.Config())
	}
	clock.Advance(time.Second)
	if s := g.Stats(); s.Writes != 1000 {
		t.Errorf("%d writes in a second of a 1000 pages/s workload", s.Writes)
	}
	if _, err := (Scenario{GuestBytes: 100}).NewGuest(clock); err == nil {
		t.Error("a guest smaller than a page")
	}
	if _, err := (Scenario{GuestBytes: 1 << 20, Workload: Workload{Kind: "nope"}}).NewGuest(clock); err == nil {
		t.Error("an unknown workload")
	}
}

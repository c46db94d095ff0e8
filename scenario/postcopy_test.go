package scenario

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/reorder"
)

var (
	postCopy  = Algorithm{Name: "post-copy", Migrate: PostCopy{}.Migrate}
	preempt   = Algorithm{Name: "post-copy+preempt", Migrate: PostCopy{Urgent: true}.Migrate}
	hybridAlg = Algorithm{Name: "hybrid", Migrate: PostCopy{PreCopyRounds: 1, Urgent: true}.Migrate}
)

// tiny is a 64 MiB guest: cheap enough under the race detector.
func tiny(name string, w Workload) Scenario {
	sc := small(name, w)
	sc.GuestBytes = 64 * mib
	return sc
}

func mustRun(t *testing.T, sc Scenario, alg Algorithm) Result {
	t.Helper()
	res, err := Run(context.Background(), sc, alg)
	if err != nil || res.Err != nil {
		t.Fatalf("%s on %s: %v, %v", alg.Name, sc.Name, err, res.Err)
	}
	if !res.Verified {
		t.Fatalf("%s on %s: not verified", alg.Name, sc.Name)
	}
	return res
}

func within(got, want time.Duration, frac float64) bool {
	d := float64(got - want)
	return d <= frac*float64(want) && -d <= frac*float64(want)
}

// On an idle guest the model and the pre-copy engine over the simulated
// link move the same bytes over the same link: their total times and
// downtimes agree, which checks the model's link and hand-over timing
// against the engine's. The hybrid's rounds end at a barrier the
// destination answers: one round trip more.
func TestPostCopyIdleMatchesEngine(t *testing.T) {
	sc := tiny("idle", Workload{Kind: "idle"})
	sc.GuestBytes = 16 * mib
	sc.Latency = 500 * time.Microsecond
	pre := mustRun(t, sc, preCopy).Report
	for _, alg := range []Algorithm{postCopy, preempt, hybridAlg} {
		rep := mustRun(t, sc, alg).Report
		total := pre.TotalTime
		if alg.Name == hybridAlg.Name {
			total += 2 * sc.Latency
		}
		if !within(rep.TotalTime, total, 0.001) || !within(rep.Downtime, pre.Downtime, 0.01) {
			t.Errorf("%s: total %v downtime %v; pre-copy engine %v %v", alg.Name, rep.TotalTime, rep.Downtime,
				pre.TotalTime, pre.Downtime)
		}
		pages := sc.GuestBytes / livemig.DefaultPageSize
		if rep.PagesSent != pages || rep.PagesResent != 0 || rep.PostCopy == nil || rep.PostCopy.DemandFaults != 0 {
			t.Errorf("%s: %d pages sent (%d again), want %d once, no faults: %+v", alg.Name, rep.PagesSent,
				rep.PagesResent, pages, rep.PostCopy)
		}
	}
}

// Post-copy's downtime is one round trip and the state whatever the dirty
// rate, and every page crosses once; pre-copy's downtime grows with the
// rate. Post-copy pays in faults instead, and they grow with the rate.
func TestPostCopyDowntimeFlat(t *testing.T) {
	if raceEnabled {
		t.Skip("figures of simulated migrations; CI runs them without the race detector")
	}
	var down time.Duration
	var lastWait time.Duration
	var lastPre time.Duration
	for i, rate := range []float64{0, 5000, 20000, 60000} {
		sc := tiny("hotcold", Workload{Kind: "hotcold", Rate: rate, HotBytes: 8 * mib, HotFraction: 0.95})
		res := mustRun(t, sc, postCopy)
		rep := res.Report
		pages := sc.GuestBytes / livemig.DefaultPageSize
		if rep.PagesSent != pages || rep.PagesResent != 0 {
			t.Fatalf("rate %v: %d pages sent, %d again; want %d once", rate, rep.PagesSent, rep.PagesResent, pages)
		}
		if pc := rep.PostCopy; pc.PagesPushed+pc.PagesPulled != pages {
			t.Fatalf("rate %v: pushed %d + pulled %d != %d", rate, pc.PagesPushed, pc.PagesPulled, pages)
		}
		if i == 0 {
			down = rep.Downtime
		} else if rep.Downtime != down {
			t.Fatalf("rate %v: post-copy downtime %v, at rate 0 %v: it should not depend on the rate", rate, rep.Downtime, down)
		}
		wait := rep.PostCopy.WaitTotal
		if rate > 0 && (rep.PostCopy.DemandFaults == 0 || wait <= lastWait) {
			t.Fatalf("rate %v: %d faults, wait %v (previous rate %v): faults should cost more as the rate rises",
				rate, rep.PostCopy.DemandFaults, wait, lastWait)
		}
		lastWait = wait
		pre := mustRun(t, sc, preCopy).Report
		if rate >= 20000 && (pre.Downtime < 10*down || pre.Downtime <= lastPre) {
			t.Fatalf("rate %v: pre-copy downtime %v (previous rate %v), post-copy %v: want pre-copy's above 10x and rising",
				rate, pre.Downtime, lastPre, down)
		}
		lastPre = pre.Downtime
		t.Logf("rate %6.0f: pre-copy downtime %v, post-copy %v with %d faults, %v waited", rate, pre.Downtime, down,
			rep.PostCopy.DemandFaults, wait)
	}
}

// On a hot/cold guest whose hot set does not fit the downtime target, hybrid
// sends fewer pages than pre-copy (one round, then each page dirtied since
// once, where pre-copy sends the hot set round after round) and takes
// fewer faults than post-copy (only the stale pages are missing at the
// resume).
func TestHybridBetween(t *testing.T) {
	if raceEnabled {
		t.Skip("figures of simulated migrations; CI runs them without the race detector")
	}
	sc := tiny("hotcold", Workload{Kind: "hotcold", Rate: 20000, HotBytes: 8 * mib, HotFraction: 0.95})
	tight := Algorithm{Name: "pre-copy", PreCopy: precopy.Config{DowntimeTarget: 30 * time.Millisecond}}
	pre := mustRun(t, sc, tight).Report
	post := mustRun(t, sc, preempt).Report
	hyb := mustRun(t, sc, hybridAlg).Report
	if hyb.PagesSent*21 >= pre.PagesSent*20 || hyb.PostCopy.DemandFaults*2 > post.PostCopy.DemandFaults ||
		hyb.Downtime >= pre.Downtime || len(hyb.Rounds) != 2 {
		t.Fatalf("hybrid: %d pages, %d faults, downtime %v, %d rounds; pre-copy %d pages, downtime %v; post-copy %d faults",
			hyb.PagesSent, hyb.PostCopy.DemandFaults, hyb.Downtime, len(hyb.Rounds), pre.PagesSent, pre.Downtime,
			post.PostCopy.DemandFaults)
	}
	// The switchover discards the pages dirtied since round 1; the
	// post-copy phase pushes or pulls each of them (and again the few
	// already on their way when the urgent connection took them): every
	// page it sends is a second copy.
	pc, last := hyb.PostCopy, hyb.Rounds[1]
	if pc.PagesPushed+pc.PagesPulled != last.PagesSent || last.PagesSent < last.DirtyPages ||
		hyb.PagesResent != last.PagesSent || last.PagesSent > last.DirtyPages+last.DirtyPages/10 {
		t.Fatalf("post-copy phase: %+v, %d re-sent in all, stats %+v", last, hyb.PagesResent, pc)
	}
	t.Logf("pre-copy %d pages downtime %v; post-copy %d faults; hybrid %d pages %d faults downtime %v",
		pre.PagesSent, pre.Downtime, post.PostCopy.DemandFaults, hyb.PagesSent, hyb.PostCopy.DemandFaults, hyb.Downtime)
}

// A fault costs a round trip and the page's transmission with an urgent
// connection; on the main connection the page also waits behind the push
// the source has queued (QueueBytes), which is why QEMU added
// postcopy-preempt.
func TestPostCopyFaultCost(t *testing.T) {
	if raceEnabled {
		t.Skip("figures of simulated migrations; CI runs them without the race detector")
	}
	for _, lat := range []time.Duration{100 * time.Microsecond, 5 * time.Millisecond} {
		sc := tiny("hotcold", Workload{Kind: "hotcold", Rate: 20000, HotBytes: 8 * mib, HotFraction: 0.95})
		sc.Latency = lat
		page := time.Duration(float64(livemig.DefaultPageSize+64) * 8 / sc.Bandwidth * float64(time.Second))
		rtt := 2 * lat
		urg := mustRun(t, sc, preempt).Report.PostCopy
		if urg.FaultP50 < rtt || urg.FaultP50 > rtt+4*page {
			t.Errorf("latency %v, urgent: fault p50 %v, want within [%v, %v]", lat, urg.FaultP50, rtt, rtt+4*page)
		}
		main := mustRun(t, sc, postCopy).Report.PostCopy
		queue := time.Duration(float64(DefaultQueueBytes) * 8 / sc.Bandwidth * float64(time.Second))
		if main.FaultP50 < rtt+queue-page || main.FaultP50 > rtt+queue+20*page {
			t.Errorf("latency %v, main connection: fault p50 %v, want about %v + %v queued", lat, main.FaultP50, rtt, queue)
		}
		t.Logf("latency %v: urgent p50 %v (%d faults, %v waited), main p50 %v (%d faults, %v waited)", lat,
			urg.FaultP50, urg.DemandFaults, urg.WaitTotal, main.FaultP50, main.DemandFaults, main.WaitTotal)
	}
}

// Pre-paging brings a sequential writer's next pages before it faults on
// them: a video server filling its buffer.
func TestPostCopyPrepaging(t *testing.T) {
	if raceEnabled {
		t.Skip("figures of simulated migrations; CI runs them without the race detector")
	}
	sc := tiny("video", Workload{Kind: "video", Rate: 20000, BufferBytes: 32 * mib, HotBytes: 1 * mib})
	none := mustRun(t, sc, Algorithm{Name: "none", Migrate: PostCopy{Urgent: true, Prepage: -1}.Migrate}).Report.PostCopy
	def := mustRun(t, sc, preempt).Report.PostCopy
	if none.PagesPulled > none.DemandFaults {
		t.Fatalf("no pre-paging: %d pulled for %d faults", none.PagesPulled, none.DemandFaults)
	}
	if def.DemandFaults*2 > none.DemandFaults || def.WaitTotal*2 > none.WaitTotal {
		t.Fatalf("pre-paging: %d faults, %v waited; without: %d, %v", def.DemandFaults, def.WaitTotal,
			none.DemandFaults, none.WaitTotal)
	}
}

// The model is deterministic, takes the Order (once per run), and fails
// cleanly: an order that cannot be made leaves the source running; a
// cancelled migration after the hand-over says the memory is split.
func TestPostCopyModelRuns(t *testing.T) {
	sc := tiny("hotcold", Workload{Kind: "hotcold", Rate: 20000, HotBytes: 2 * mib, HotFraction: 0.95})
	sc.GuestBytes = 16 * mib
	for _, alg := range []Algorithm{postCopy, preempt, hybridAlg} {
		a, b := mustRun(t, sc, alg).Row(), mustRun(t, sc, alg).Row()
		if a != b {
			t.Fatalf("%s differs between runs:\n%+v\n%+v", alg.Name, a, b)
		}
	}
	freq := func(pages uint64) (precopy.Order, error) {
		return reorder.NewFrequency(pages, reorder.FrequencyConfig{})
	}
	ordered := mustRun(t, sc, Algorithm{Name: "ordered", Migrate: PostCopy{PreCopyRounds: 2, Order: freq}.Migrate}).Row()
	plain := mustRun(t, sc, Algorithm{Name: "ordered", Migrate: PostCopy{PreCopyRounds: 2}.Migrate}).Row()
	if ordered == plain {
		t.Fatalf("the order was not used: %+v", ordered)
	}

	bad := Algorithm{Name: "bad", Migrate: PostCopy{Order: func(uint64) (precopy.Order, error) { return nil, reorder.ErrTooLarge }}.Migrate}
	res, err := Run(context.Background(), sc, bad)
	if err != nil || !errors.Is(res.Err, reorder.ErrTooLarge) || res.Guest.Paused {
		t.Fatalf("bad order: %v, %v, paused %v", err, res.Err, res.Guest.Paused)
	}

	// Cancelled once the push is planned, after the hand-over.
	late := Algorithm{Name: "late", Migrate: func(ctx context.Context, e Endpoints) Outcome {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		return PostCopy{Order: func(uint64) (precopy.Order, error) {
			return cancelOrder{reorder.Sequential(), cancel}, nil
		}}.Migrate(ctx, e)
	}}
	res, err = Run(context.Background(), sc, late)
	if err == nil || !errors.Is(res.Err, context.Canceled) || !errors.Is(res.Err, livemig.ErrIncomplete) {
		t.Fatalf("cancelled after the hand-over: %v, %v", err, res.Err)
	}
	// Cancelled before it starts: the source runs on.
	early := Algorithm{Name: "early", Migrate: func(ctx context.Context, e Endpoints) Outcome {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		return PostCopy{PreCopyRounds: 1}.Migrate(ctx, e)
	}}
	res, err = Run(context.Background(), sc, early)
	if err != nil || !errors.Is(res.Err, context.Canceled) || res.Guest.Paused {
		t.Fatalf("cancelled before the pre-copy round: %v, %v, paused %v", err, res.Err, res.Guest.Paused)
	}
}

// cancelOrder cancels a context when the push is planned.
type cancelOrder struct {
	precopy.Order
	cancel func()
}

func (o cancelOrder) Plan(dst, dirty []uint64) []uint64 {
	o.cancel()
	return o.Order.Plan(dst, dirty)
}

// A model with a negative parameter is refused before anything moves.
func TestPostCopyModelRefusesBadConfig(t *testing.T) {
	sc := tiny("idle", Workload{Kind: "idle"})
	sc.GuestBytes = mib
	for _, p := range []PostCopy{{QueueBytes: -1}, {Quantum: -1}, {PreCopyRounds: -1}, {PushBandwidth: -1}} {
		res, err := Run(context.Background(), sc, Algorithm{Name: "bad", Migrate: p.Migrate})
		if err != nil || res.Err == nil || res.Guest.Paused {
			t.Fatalf("%+v: run error %v, result error %v, paused %v", p, err, res.Err, res.Guest.Paused)
		}
	}
}

// With LZ4 (the engine's codec.PageEncoder) post-copy sends the simulated guest's
// pages in about half the bytes; on a slow link the migration and the
// guest's waits shrink with them.
func TestPostCopyLZ4(t *testing.T) {
	if raceEnabled {
		t.Skip("figures of simulated migrations; CI runs them without the race detector")
	}
	sc := tiny("hotcold", Workload{Kind: "hotcold", Rate: 5000, HotBytes: 8 * mib, HotFraction: 0.9})
	sc.Bandwidth = 1e8
	plain := mustRun(t, sc, preempt).Report
	lz := mustRun(t, sc, Algorithm{Name: "lz4", Migrate: PostCopy{Urgent: true, LZ4: true}.Migrate}).Report
	if plain.Codec != nil || lz.Codec == nil || lz.Codec.LZ4Pages == 0 || lz.Codec.Ratio() < 1.5 {
		t.Fatalf("codec figures: plain %+v, lz4 %+v", plain.Codec, lz.Codec)
	}
	if lz.PagesSent != plain.PagesSent-plain.PagesResent+lz.PagesResent ||
		float64(lz.BytesSent) > 0.7*float64(plain.BytesSent) || float64(lz.TotalTime) > 0.7*float64(plain.TotalTime) ||
		lz.PostCopy.WaitTotal >= plain.PostCopy.WaitTotal {
		t.Fatalf("lz4: %d pages, %d bytes, total %v, waited %v; plain: %d pages, %d bytes, total %v, waited %v",
			lz.PagesSent, lz.BytesSent, lz.TotalTime, lz.PostCopy.WaitTotal,
			plain.PagesSent, plain.BytesSent, plain.TotalTime, plain.PostCopy.WaitTotal)
	}
	t.Logf("100 Mbit/s: total %v -> %v, %d -> %d bytes (ratio %.2f), guest waited %v -> %v", plain.TotalTime, lz.TotalTime,
		plain.BytesSent, lz.BytesSent, lz.Codec.Ratio(), plain.PostCopy.WaitTotal, lz.PostCopy.WaitTotal)
}

// With PushBandwidth the model's push keeps to the cap, as the engine's
// does (TestPushBandwidth in package postcopy): an idle guest's pages take
// their bytes over the cap, not over the link.
func TestPostCopyPushBandwidth(t *testing.T) {
	sc := tiny("idle", Workload{Kind: "idle"})
	sc.GuestBytes = 16 * mib
	const limit = 25e6 // bytes/s, a fifth of the 1 Gbit/s link
	rep := mustRun(t, sc, Algorithm{Name: "capped", Migrate: PostCopy{PushBandwidth: limit}.Migrate}).Report
	push := rep.Rounds[len(rep.Rounds)-1]
	want := time.Duration(float64(push.Bytes) / limit * float64(time.Second))
	if got := push.Duration; !within(got, want, 0.05) {
		t.Fatalf("push of %d bytes took %v, want about %v at %g B/s", push.Bytes, got, want, float64(limit))
	}
}

// An adaptive hybrid (hybrid.Config.Adaptive) ends as pre-copy does when
// pre-copy converges, and goes on by post-copy when it does not: both ends
// verified against the source.
func TestAdaptiveHybrid(t *testing.T) {
	adaptive := func(target time.Duration) Algorithm {
		return Algorithm{Name: "adaptive", Migrate: PostCopy{PreCopyRounds: 30, Adaptive: true, Urgent: true,
			PreCopy: precopy.Config{DowntimeTarget: target}}.Migrate}
	}
	res := mustRun(t, tiny("idle", Workload{Kind: "idle"}), adaptive(0))
	if rep := res.Report; rep.Algorithm != "pre-copy" || rep.PostCopy != nil || res.Receive == nil || !res.Receive.Resumed || !res.Verified {
		t.Fatalf("idle guest: %v, destination %+v; want pre-copy's end, verified", rep, res.Receive)
	}
	hot := tiny("hot", Workload{Kind: "hotcold", Rate: 60000, HotBytes: 8 * mib, HotFraction: 0.95})
	res = mustRun(t, hot, adaptive(time.Millisecond))
	if rep := res.Report; rep.Algorithm != "hybrid" || rep.PostCopy == nil || !res.Verified || len(rep.Rounds) < 2 {
		t.Fatalf("hot guest, 1 ms target: %v; want pre-copy rounds, then post-copy, verified", rep)
	}
	t.Logf("hot guest: %d rounds before post-copy, %d pages pushed", len(res.Report.Rounds)-1, res.Report.PostCopy.PagesPushed)
}

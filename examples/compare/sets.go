package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/reorder"
	"github.com/livemig/livemig/scenario"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

// algorithm is an entry of the registry: a scenario.Algorithm under the
// short name -algorithms takes. Pre-copy variants differ by their Config
// and Order; an algorithm of another kind (post-copy, hybrid) sets
// Algorithm.Migrate and joins the registry the same way.
type algorithm struct {
	key string // the -algorithms name
	alg scenario.Algorithm
}

// registry returns every algorithm compare knows, in the order "all" runs
// them.
func registry(downtime time.Duration, maxRounds int) []algorithm {
	pc := precopy.Config{DowntimeTarget: downtime, MaxRounds: maxRounds}
	// The XBZRLE cache holds 512 MiB (QEMU's default is 64 MiB): an eighth
	// of the default guest, enough for the hot sets of the default
	// scenarios, as the thesis sizes it to the working set.
	cache := delta.CacheConfig{Bytes: 512 << 20}
	with := func(f func(c *precopy.Config)) precopy.Config {
		c := pc
		f(&c)
		return c
	}
	xbzrle := func(c *precopy.Config) { c.Codec.XBZRLE, c.Codec.Cache = true, cache }
	// Reordering needs deferral to pay off: an engine that sends every
	// planned page finds, at the next sync, exactly the pages written
	// during the round whatever their order (see package reorder).

	deferral := func(c *precopy.Config) { c.Defer = true }
	byFrequency := func(pages uint64) (precopy.Order, error) {
		return reorder.NewFrequency(pages, reorder.FrequencyConfig{})
	}
	return []algorithm{
		{"precopy", scenario.Algorithm{Name: "pre-copy", PreCopy: pc}},
		{"precopy-throttle", scenario.Algorithm{Name: "pre-copy+auto-converge",
			PreCopy: with(func(c *precopy.Config) { c.OnNonConvergence = precopy.Throttle })}},
		{"precopy-defer", scenario.Algorithm{Name: "pre-copy+defer", PreCopy: with(deferral)}},
		{"precopy-reorder", scenario.Algorithm{Name: "pre-copy+reorder", PreCopy: with(deferral), Order: byFrequency}},
		{"precopy-xbzrle", scenario.Algorithm{Name: "pre-copy+xbzrle", PreCopy: with(xbzrle)}},
		{"precopy-xbzrle-reorder", scenario.Algorithm{Name: "pre-copy+xbzrle+reorder",
			PreCopy: with(func(c *precopy.Config) { xbzrle(c); deferral(c) }), Order: byFrequency}},
		// LZ4 is turned off by adaptation when it slows the migration
		// (the cost model makes it slower than a link of 10 Gbit/s);
		// -noadapt keeps it on whatever the link.
		{"precopy-lz4", scenario.Algorithm{Name: "pre-copy+lz4",
			PreCopy: with(func(c *precopy.Config) { c.Codec.LZ4 = true })}},
		{"precopy-lz4-noadapt", scenario.Algorithm{Name: "pre-copy+lz4-noadapt",
			PreCopy: with(func(c *precopy.Config) { c.Codec.LZ4, c.Codec.NoAdapt = true, true })}},
		{"precopy-xbzrle-lz4", scenario.Algorithm{Name: "pre-copy+xbzrle+lz4",
			PreCopy: with(func(c *precopy.Config) { xbzrle(c); c.Codec.LZ4 = true })}},
		// Post-copy and hybrid run scenario.PostCopy: package postcopy's
		// Core over a model of the link and the destination: requested pages
		// on the main connection behind the push, or on an urgent one
		// (QEMU's postcopy-preempt); hybrid is one pre-copy round (the
		// bulk copy) and then post-copy, as Hines and Gopalan's.
		{"postcopy", scenario.Algorithm{Name: "post-copy", Migrate: scenario.PostCopy{}.Migrate}},
		{"postcopy-preempt", scenario.Algorithm{Name: "post-copy+preempt", Migrate: scenario.PostCopy{Urgent: true}.Migrate}},
		{"hybrid", scenario.Algorithm{Name: "hybrid", Migrate: scenario.PostCopy{PreCopyRounds: 1, Urgent: true}.Migrate}},
		{"postcopy-preempt-lz4", scenario.Algorithm{Name: "post-copy+preempt+lz4",
			Migrate: scenario.PostCopy{Urgent: true, LZ4: true}.Migrate}},
		// The adaptive engine: pre-copy whose rounds package advisor's
		// Adaptive decides from the guest's profile (taken first, as
		// -advise takes it), switching in time to codecs, throttle, or
		// post-copy for the rest; ending as pre-copy when it converges.
		{"adaptive", scenario.Algorithm{Name: "adaptive", Migrate: func(ctx context.Context, e scenario.Endpoints) scenario.Outcome {
			return adaptiveRun(ctx, e, downtime, maxRounds, cache)
		}}},
	}
}

// adaptiveRun migrates e by the adaptive engine: the guest profiled
// (profileScenario), then hybrid.Config.Adaptive's rounds with
// advisor.Adaptive deciding, the codecs allowed and starting off, the
// default objective.
func adaptiveRun(ctx context.Context, e scenario.Endpoints, downtime time.Duration, maxRounds int, cache delta.CacheConfig) scenario.Outcome {
	sc := e.Scenario
	p, err := profileScenario(ctx, sc, advisor.ObserveConfig{Seed: sc.Seed})
	if err != nil {
		e.Source.Close()
		e.Dest.Close()
		return scenario.Outcome{Err: fmt.Errorf("adaptive: profile: %w", err), DestErr: err}
	}
	codecs := codec.Codecs{XBZRLE: true, LZ4: true}
	dec := advisor.NewAdaptive(advisor.AdaptiveConfig{Profile: p,
		Link:   advisor.Link{Bandwidth: sc.Bandwidth, Latency: sc.Latency, Cost: sc.Cost},
		Target: advisor.Target{Downtime: downtime, MaxRounds: maxRounds, CacheBytes: uint64(cache.Bytes)}, Codecs: codecs, Throttle: true})
	pc := precopy.Config{DowntimeTarget: downtime, MaxRounds: maxRounds, Decider: dec,
		Codec: codec.Config{XBZRLE: true, LZ4: true, StartOff: true, Cache: cache}}
	return scenario.PostCopy{PreCopyRounds: maxRounds, Adaptive: true, Urgent: true, PreCopy: pc}.Migrate(ctx, e)
}

// chooseAlgorithms resolves a comma-separated list of names, or "all".
func chooseAlgorithms(list string, known []algorithm) ([]scenario.Algorithm, error) {
	var out []scenario.Algorithm
	if list == "all" {
		for _, a := range known {
			out = append(out, a.alg)
		}
		return out, nil
	}
	for _, name := range strings.Split(list, ",") {
		i := slices.IndexFunc(known, func(a algorithm) bool { return a.key == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("unknown algorithm %q (known: %s)", name, algorithmNames(known))
		}
		out = append(out, known[i].alg)
	}
	return out, nil
}

func algorithmNames(known []algorithm) string {
	var names []string
	for _, a := range known {
		names = append(names, a.key)
	}
	return strings.Join(names, ",")
}

// Sweep axes: what varies along a sweep set's scenarios.
const (
	sweepNone      = ""
	sweepBandwidth = "bandwidth"
	sweepDirty     = "dirty-rate"
	sweepLatency   = "latency"
)

// entry is a scenario of a set; in a sweep, series names the line it
// belongs to and x its place on the sweep's axis (bits per second, or pages
// written per second).
type entry struct {
	sc     scenario.Scenario
	series string
	x      float64
}

// set is a named evaluation: scenarios and the algorithms that run them.
type set struct {
	name       string
	about      string
	sweep      string // sweepNone, sweepBandwidth, sweepDirty
	algorithms string // default -algorithms of the set
	entries    []entry
}

// defaultAlgorithms run the default set without -algorithms. LZ4 costs real
// CPU even in virtual time (about 0.7 GB/s here), and each further 4 GiB
// pre-copy row some 2-5 s, so the default set keeps three pre-copy
// algorithms, post-copy with preemption and hybrid, and finishes in about
// a minute; -set thesis adds reordering.
const defaultAlgorithms = "precopy,precopy-throttle,precopy-xbzrle,postcopy-preempt,hybrid"

// thesisAlgorithms are the thesis' comparison: standard pre-copy, + delta
// compression, + reordering, + both; Clark's deferral alone, which
// reordering builds on, to tell the order's share from deferral's; and the
// third paper's post-copy (with preemption) and hybrid.
const thesisAlgorithms = "precopy,precopy-defer,precopy-reorder,precopy-xbzrle,precopy-xbzrle-reorder,postcopy-preempt,hybrid"

// sweepAlgorithms run the sweeps: pre-copy and its three improvements, and
// post-copy (with and without preemption) and hybrid.
const sweepAlgorithms = "precopy,precopy-reorder,precopy-xbzrle,precopy-xbzrle-reorder,postcopy,postcopy-preempt,hybrid"

// bandwidthAlgorithms run the bandwidth sweep: the sweeps' algorithms, and
// LZ4, which pays on slow links and not on fast ones: pre-copy with LZ4
// (adaptation on, and off), with XBZRLE and LZ4, and post-copy with LZ4.
const bandwidthAlgorithms = sweepAlgorithms + ",precopy-lz4,precopy-lz4-noadapt,precopy-xbzrle-lz4,postcopy-preempt-lz4"

// latencyAlgorithms run the latency sweep: where post-copy's faults cost a
// round trip each, against pre-copy and its best improvement.
const latencyAlgorithms = "precopy,precopy-xbzrle,postcopy,postcopy-preempt,hybrid"

// The thesis' workloads, as sim workloads; docs/EVALUATION.md describes
// each. Rates are pages of 4 KiB written per second of guest time.
var (
	// membench is a memory-intensive synthetic benchmark: it updates a
	// few words of pages at a high rate, most of them in a working set.
	membench = scenario.Workload{Kind: "hotcold", Rate: 60000, HotBytes: 512 * mib, HotFraction: 0.95}
	// video is a video-streaming server: whole pages of new frames through
	// a large buffer, sequentially, and a small hot set.
	video = scenario.Workload{Kind: "video", Rate: 10000, BufferBytes: 1 * gib, HotBytes: 16 * mib, HotFraction: 0.1}
	// enterprise is a large enterprise application (an ERP system): big
	// memory, a skewed hot set and a large, rarely written cold set.
	enterprise = scenario.Workload{Kind: "hotcold", Rate: 25000, HotBytes: 1 * gib, HotFraction: 0.8}
	// webserver is Clark et al.'s SPECweb case: about 12,000 pages/s.
	webserver = scenario.Workload{Kind: "hotcold", Rate: 12000, HotBytes: 128 * mib, HotFraction: 0.9}
	idle      = scenario.Workload{Kind: "idle"}
)

// sets returns every named set.
func sets() []set {
	base := scenario.Scenario{GuestBytes: 4 * gib, Bandwidth: 1e9, Latency: 100 * time.Microsecond, Seed: 2012}
	mk := func(name string, guest uint64, w scenario.Workload) entry {
		s := base
		s.Name, s.Workload = name, w
		if guest != 0 {
			s.GuestBytes = guest
		}
		return entry{sc: s, series: name}
	}
	def := set{name: "default", algorithms: defaultAlgorithms,
		about: "a 4 GiB guest over 1 Gbit/s, idle and under uniform, hot/cold and streaming workloads at a low and a high dirty rate",
		entries: []entry{
			mk("idle", 0, scenario.Workload{Kind: "idle"}),
			mk("uniform-low", 0, scenario.Workload{Kind: "uniform", Rate: 2000}),
			mk("uniform-high", 0, scenario.Workload{Kind: "uniform", Rate: 40000}),
			mk("hotcold-low", 0, scenario.Workload{Kind: "hotcold", Rate: 5000, HotBytes: 64 * mib, HotFraction: 0.9}),
			mk("hotcold-high", 0, scenario.Workload{Kind: "hotcold", Rate: 50000, HotBytes: 256 * mib, HotFraction: 0.95}),
			mk("stream-low", 0, scenario.Workload{Kind: "stream", Rate: 5000, HotBytes: 256 * mib}),
			mk("stream-high", 0, scenario.Workload{Kind: "stream", Rate: 25000, HotBytes: 512 * mib}),
		}}
	thesis := set{name: "thesis", algorithms: thesisAlgorithms,
		about: "the thesis' workloads over 1 Gbit/s: memory benchmark, video server, enterprise application, web server, idle; and a uniform control",
		entries: []entry{
			mk("membench", 4*gib, membench),
			mk("video", 4*gib, video),
			mk("enterprise", 8*gib, enterprise),
			mk("webserver", 1*gib, webserver),
			mk("idle", 4*gib, idle),
			mk("uniform", 1*gib, scenario.Workload{Kind: "uniform", Rate: 10000}),
		}}

	// The sweeps run 1 GiB guests, so that 6 links x 3 workloads x 11
	// algorithms finish in minutes; the workloads keep their rates and
	// scale their hot sets and buffers to the guest. The links go to
	// 25 Gbit/s, past where LZ4 on one core stops paying (about 7 Gbit/s
	// under the default cost model).
	small := func(w scenario.Workload) scenario.Workload {
		w.HotBytes /= 4
		w.BufferBytes /= 4
		return w
	}
	bw := set{name: "sweep-bandwidth", sweep: sweepBandwidth, algorithms: bandwidthAlgorithms,
		about: "1 GiB guests over links from 100 Mbit/s to 25 Gbit/s"}
	for _, l := range []struct {
		name string
		bps  float64
	}{{"100M", 1e8}, {"1G", 1e9}, {"2.5G", 2.5e9}, {"5G", 5e9}, {"10G", 1e10}, {"25G", 2.5e10}} {
		for _, w := range []struct {
			name string
			w    scenario.Workload
		}{{"membench", small(membench)}, {"video", small(video)}, {"webserver", webserver}} {
			e := mk(w.name+"@"+l.name, 1*gib, w.w)
			e.sc.Bandwidth, e.series, e.x = l.bps, w.name, l.bps
			bw.entries = append(bw.entries, e)
		}
	}
	dirty := set{name: "sweep-dirty", sweep: sweepDirty, algorithms: sweepAlgorithms,
		about: "a 1 GiB memory benchmark over 1 Gbit/s (about 30,000 pages/s) at rising dirty rates"}
	for _, r := range []float64{2500, 5000, 10000, 20000, 30000, 45000, 60000} {
		w := small(membench)
		w.Rate = r
		e := mk(fmt.Sprintf("membench@%.0f", r), 1*gib, w)
		e.series, e.x = "membench", r
		dirty.entries = append(dirty.entries, e)
	}
	lat := set{name: "sweep-latency", sweep: sweepLatency, algorithms: latencyAlgorithms,
		about: "1 GiB guests over 1 Gbit/s links of one-way latency 0.1 ms (a rack) to 50 ms (across a continent)"}
	for _, l := range []time.Duration{100 * time.Microsecond, time.Millisecond, 5 * time.Millisecond,
		20 * time.Millisecond, 50 * time.Millisecond} {
		for _, w := range []struct {
			name string
			w    scenario.Workload
		}{{"membench", small(membench)}, {"webserver", webserver}} {
			e := mk(fmt.Sprintf("%s@%v", w.name, l), 1*gib, w.w)
			e.sc.Latency, e.series, e.x = l, w.name, float64(l)/float64(time.Millisecond)
			lat.entries = append(lat.entries, e)
		}
	}
	return []set{def, thesis, bw, dirty, lat}
}

// chooseSets resolves a comma-separated list of set names.
func chooseSets(list string) ([]set, error) {
	all := sets()
	var out []set
	for _, name := range strings.Split(list, ",") {
		i := slices.IndexFunc(all, func(s set) bool { return s.name == strings.TrimSpace(name) })
		if i < 0 {
			var names []string
			for _, s := range all {
				names = append(names, s.name)
			}
			return nil, fmt.Errorf("unknown set %q (known: %s)", name, strings.Join(names, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

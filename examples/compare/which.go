package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/scenario"
)

// situation is a row of docs/EVALUATION.md's "Which approach when": a
// scenario standing for a situation of the thesis' recommendations, and
// what the thesis recommends there.
type situation struct {
	name       string
	sc         scenario.Scenario
	target     time.Duration
	thesis     string   // the thesis' recommendation, paraphrased
	thesisAlgs []string // the algorithms that recommendation names
}

// situations are the rows of the table: 1 GiB guests.
func situations() []situation {
	base := scenario.Scenario{GuestBytes: 1 * gib, Bandwidth: 1e9, Latency: 100 * time.Microsecond, Seed: 2012}
	mk := func(name string, w scenario.Workload, bw float64, lat, target time.Duration, thesis string, algs ...string) situation {
		sc := base
		sc.Name, sc.Workload = name, w
		if bw != 0 {
			sc.Bandwidth = bw
		}
		if lat != 0 {
			sc.Latency = lat
		}
		return situation{name: name, sc: sc, target: target, thesis: thesis, thesisAlgs: algs}
	}
	web := scenario.Workload{Kind: "hotcold", Rate: 5000, HotBytes: 64 * mib, HotFraction: 0.9}
	mem := scenario.Workload{Kind: "hotcold", Rate: 40000, HotBytes: 128 * mib, HotFraction: 0.95}
	whole := scenario.Workload{Kind: "hotcold", Rate: 40000, HotBytes: 256 * mib, HotFraction: 0.9, Whole: true}
	vid := scenario.Workload{Kind: "video", Rate: 10000, BufferBytes: 256 * mib, HotBytes: 4 * mib, HotFraction: 0.1}
	ms := time.Millisecond
	return []situation{
		mk("idle guest", scenario.Workload{Kind: "idle"}, 0, 0, 300*ms,
			"pre-copy: one round and an empty stop", "precopy", "precopy-lz4"),
		mk("dirty rate well under the link", web, 0, 0, 300*ms,
			"pre-copy (+ XBZRLE when pages are re-dirtied)", "precopy", "precopy-xbzrle", "precopy-xbzrle-lz4", "precopy-lz4"),
		mk("dirty rate near the link, few words a write, skewed", mem, 0, 0, 300*ms,
			"pre-copy + delta compression (XBZRLE)", "precopy-xbzrle", "precopy-xbzrle-lz4"),
		mk("dirty rate above the link, whole pages, skewed", whole, 0, 0, 300*ms,
			"hybrid (pre-copy does not converge)", "hybrid"),
		mk("downtime must be minimal (10 ms), busy guest", mem, 0, 0, 10*ms,
			"post-copy with preemption", "postcopy-preempt", "postcopy-preempt-lz4"),
		mk("high latency (10 ms), light guest", web, 0, 10*ms, 300*ms,
			"pre-copy + XBZRLE (a fault costs a round trip)", "precopy-xbzrle", "precopy-xbzrle-lz4", "precopy", "precopy-lz4"),
		mk("high latency (10 ms), busy guest", mem, 0, 10*ms, 300*ms,
			"pre-copy + XBZRLE; hybrid if it does not converge", "precopy-xbzrle", "precopy-xbzrle-lz4", "hybrid"),
		mk("slow link (300 Mbit/s), video server", vid, 300e6, 0, 300*ms,
			"post-copy with preemption and LZ4 (whole new pages: XBZRLE cannot help)", "postcopy-preempt-lz4"),
		mk("slow link (300 Mbit/s), few words a write", mem, 300e6, 0, 300*ms,
			"pre-copy with XBZRLE and LZ4", "precopy-xbzrle-lz4"),
		mk("fast link (10 Gbit/s), busy guest", mem, 10e9, 0, 300*ms,
			"no LZ4 (one core compresses slower than the link); XBZRLE kept", "precopy-xbzrle", "precopy"),
	}
}

// which prints "Which approach when" as the advisor makes it: for each
// situation, its advice (balanced, and never post-copy), and the best
// algorithm by the same objective in the simulator, beside the thesis'
// recommendation.
func which(ctx context.Context, maxRounds int, cost *codec.CostModel, parallel int, w io.Writer, progress io.Writer) error {
	sits := situations()
	var jobs []job
	advs := make([][2]advisor.Advice, len(sits))
	for i := range sits {
		s := &sits[i]
		s.sc.Cost = cost
		t := advisor.Target{Downtime: s.target, MaxRounds: maxRounds}
		for k, o := range []advisor.Objective{advisor.Balanced, advisor.NoPostCopy} {
			adv, _, err := adviseScenario(ctx, s.sc, t, o)
			if err != nil {
				return err
			}
			advs[i][k] = adv
		}
		algs, err := chooseAlgorithms(strings.Join(advisor.Algorithms, ","), registry(s.target, maxRounds))
		if err != nil {
			return err
		}
		for _, a := range algs {
			jobs = append(jobs, job{set: i, entry: entry{sc: s.sc, series: s.name}, alg: a})
		}
	}
	results, err := execute(ctx, jobs, parallel, progress)
	if err != nil {
		return err
	}
	keyOf := map[string]string{}
	for _, a := range registry(time.Second, maxRounds) {
		keyOf[a.alg.Name] = a.key
	}
	fmt.Fprintln(w, "| situation (1 GiB guest) | the thesis recommends | the advisor picks (predicted; measured) | never post-copy | best in the simulator (measured) | agree? |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	for i, s := range sits {
		var best, picked measured
		first := true
		for j, jb := range jobs {
			if jb.set != i {
				continue
			}
			row := results[j].Row()
			m := measured{alg: keyOf[row.Algorithm], row: row, ok: row.Error == "" && row.Verified,
				cost: row.TotalMS + row.FaultWaitMS, downtime: row.DowntimeMS}
			m.meets = m.ok && row.DowntimeMS <= ms2(s.target)
			if first || better(m, best) {
				best, first = m, false
			}
			if m.alg == advs[i][0].Algorithm {
				picked = m
			}
		}
		adv, np := advs[i][0], advs[i][1]
		p := adv.Predicted
		agree := "yes"
		switch {
		case !contains(s.thesisAlgs, adv.Algorithm) && !contains(s.thesisAlgs, best.alg):
			agree = "no: the measurements say " + best.alg
		case !contains(s.thesisAlgs, adv.Algorithm):
			agree = "the measurements agree with the thesis; the advisor does not"
		case !contains(s.thesisAlgs, best.alg):
			agree = "the advisor agrees with the thesis; the measurements say " + best.alg
		}
		desc := fmt.Sprintf("%s: %s, %s, %v latency, target %v", s.name, s.sc.Workload, formatBandwidth(s.sc.Bandwidth), s.sc.Latency, s.target)
		fmt.Fprintf(w, "| %s | %s | **%s** (%s + %s faults, downtime %s; measured %s + %s, %s) | %s | %s (%s + %s faults, downtime %s) | %s |\n",
			desc, s.thesis, adv.Algorithm, fmtMS(ms2(p.Total)), fmtMS(ms2(p.FaultWait)), fmtMS(ms2(p.Downtime)),
			fmtMS(picked.row.TotalMS), fmtMS(picked.row.FaultWaitMS), fmtMS(picked.row.DowntimeMS),
			np.Algorithm, best.alg, fmtMS(best.row.TotalMS), fmtMS(best.row.FaultWaitMS), fmtMS(best.row.DowntimeMS), agree)
	}
	fmt.Fprintln(w)
	for i, s := range sits {
		fmt.Fprintf(w, "- *%s*: %s\n", s.name, strings.Join(advs[i][0].Reasons, "; "))
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

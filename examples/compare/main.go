// Command compare reproduces the evaluation of P. Svärd's thesis "Live VM
// Migration Principles and Performance" in livemig's simulated world: each
// scenario (a guest, its workload, a link) is migrated by each algorithm in
// virtual time, and the results print as a table or as JSON, and as plots.
// Pre-copy rows run package precopy's engine over a simulated link, its
// codecs charged the CPU time of a cost model (codec.CostModel; -cost);
// post-copy and hybrid rows run scenario.PostCopy, package postcopy's own
// Core in an event loop over a model of the link (each page charged the same
// cost model, one core per connection at each end) and of the destination's
// vCPU, which runs the workload and waits a round trip on each page it
// touches before the page arrives.
//
// With no flags it runs the embedded default set: a 4 GiB guest over
// 1 Gbit/s, idle and under uniform, hot/cold and streaming workloads at a low
// and a high dirty rate, by pre-copy, pre-copy with auto-converge, pre-copy
// with XBZRLE delta compression, post-copy with preemption (requested pages
// on their own connection, as QEMU's postcopy-preempt) and hybrid (one
// pre-copy round, then post-copy), in about a minute on 2 cores. -set picks
// other named sets, comma-separated:
//
//   - thesis: the thesis' workloads (a memory-intensive benchmark, a
//     video-streaming server, an enterprise application, Clark et al.'s
//     SPECweb server, an idle guest, a uniform control) by standard
//     pre-copy, + deferral, + reordering, + XBZRLE, + both, post-copy and
//     hybrid;
//   - sweep-bandwidth: 1 GiB guests over 100 Mbit/s to 25 Gbit/s, with
//     LZ4 too: pre-copy with LZ4 (adaptation on and off), with XBZRLE and
//     LZ4, and post-copy+preempt+lz4;
//   - sweep-dirty: a 1 GiB memory benchmark at rising dirty rates;
//   - sweep-latency: 1 GiB guests over links of 0.1 ms to 50 ms latency.
//
// -algorithms overrides a set's algorithms (all: every one); -plots DIR
// writes PNG and SVG figures: pages dirty and sent per round for each
// scenario of a plain set, downtime (and post-copy's time lost to faults)
// against dirty rate for sweep-dirty, total time, downtime and time lost to
// faults against bandwidth or latency for the other sweeps, and for the
// bandwidth sweep each codec row's total time over its twin's without the
// codec.
//
// -cost FILE takes the CPU cost model from a JSON file (as -calibrate
// prints it: this machine's costs, measured by codec.Calibrate), -cost free
// charges no CPU, and -cost-workers N models N cores encoding at the source
// and decoding at the destination; by default the model is
// codec.DefaultCost, measured on the project's machines, on one core.
// docs/EVALUATION.md is made from
//
//	go run ./examples/compare -set thesis,sweep-dirty,sweep-bandwidth,sweep-latency -plots docs/plots > docs/plots/tables.txt
//
// -advise profiles the custom scenario's guest (package advisor: through
// livemig.Memory and livemig.DirtySource, in virtual time, never reading the
// scenario's parameters) and prints the advisor's pick among the
// algorithms it knows, with its predictions and reasons, instead of running
// it; -objective picks the objective (balanced, no-postcopy,
// min-downtime); with -json it prints one object with the keys
// scenario, algorithm, objective, predicted (total_ms, downtime_ms,
// bytes_sent, fault_wait_ms, ...), candidates, profile and reasons.
// -validate N draws N random scenarios (seed -validate-seed, 14 by
// default), advises on each and runs it by every algorithm the advisor
// knows, and prints how often the advice is within 10 % of the best and how
// close its predictions are; -which prints docs/EVALUATION.md's "Which
// approach when" from the advisor, each situation run by every algorithm
// too.
//
//	go run ./examples/compare -advise -guest 1GiB -workload hotcold -rate 30000 -hot 64MiB -downtime 50ms
//	go run ./examples/compare -validate 40 > docs/plots/advisor-validation.txt
//	go run ./examples/compare -which -q > docs/plots/advisor-which.md
//
// The JSON rows have the keys scenario, algorithm, total_ms, downtime_ms,
// bytes_sent, pages_sent, pages_resent, rounds, verified and converged;
// rows of algorithms with a codec add codec_ratio and cache_hit_rate, and
// pre-copy's codecs (those on at the end: adaptation may have turned some
// off);
// post-copy and hybrid rows add demand_faults, pages_pulled, fault_wait_ms
// (the guest's time lost waiting on faults) and fault_p99_ms when not zero;
// an aborted migration adds error. The rows are the same on every run.
//
//	go run ./examples/compare
//	go run ./examples/compare -json
//	go run ./examples/compare -set thesis -plots /tmp/plots
//	go run ./examples/compare -guest 16GiB -workload hotcold -rate 40000 -bandwidth 10Gbit
//	go run ./examples/compare -algorithms precopy,precopy-reorder -downtime 30ms
//	go run ./examples/compare -algorithms precopy,postcopy,postcopy-preempt,hybrid -latency 20ms
//	go run ./examples/compare -calibrate > cost.json
//	go run ./examples/compare -set sweep-bandwidth -cost cost.json -cost-workers 4
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/scenario"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

// job is one scenario run by one algorithm, and where its result goes.
type job struct {
	set   int
	entry entry
	alg   scenario.Algorithm
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		setNames  = fs.String("set", "default", "comma-separated scenario sets: default, thesis, sweep-bandwidth, sweep-dirty, sweep-latency")
		guest     = fs.String("guest", "", "guest memory, e.g. 4GiB, 512MiB (a custom scenario)")
		workload  = fs.String("workload", "", "workload: idle, uniform, hotcold, stream, video, mix (a custom scenario)")
		rate      = fs.Float64("rate", 0, "pages written per second (custom scenario)")
		hot       = fs.String("hot", "", "hot set (hotcold, video) or buffer (stream) size, e.g. 64MiB")
		buffer    = fs.String("buffer", "", "video's sequentially written buffer, e.g. 1GiB")
		hotFrac   = fs.Float64("hot-fraction", 0, "share of writes to the hot set (default 0.9 for hotcold, 0.1 for video)")
		whole     = fs.Bool("whole", false, "writes rewrite whole pages (default: a few words)")
		bandwidth = fs.String("bandwidth", "", "link bandwidth of every scenario, e.g. 1Gbit, 100Mbit, 10Gbit (default: the set's)")
		latency   = fs.Duration("latency", 100*time.Microsecond, "one-way link latency (applied when given)")
		downtime  = fs.Duration("downtime", 300*time.Millisecond, "downtime target")
		maxRounds = fs.Int("max-rounds", 30, "round limit of pre-copy")
		algs      = fs.String("algorithms", "", "comma-separated algorithms, or all (default: the set's): ")
		seed      = fs.Uint64("seed", 2012, "seed of the simulated guests (applied when given)")
		asJSON    = fs.Bool("json", false, "print the results as a JSON array")
		plots     = fs.String("plots", "", "write plots (PNG and SVG) to this directory")
		quiet     = fs.Bool("q", false, "no progress on stderr")
		parallel  = fs.Int("parallel", 2, "runs at once (results do not depend on it)")
		costFile  = fs.String("cost", "", "CPU cost model: a JSON file as -calibrate prints, or free (default: codec.DefaultCost, measured on the project's machines)")
		costCores = fs.Int("cost-workers", 0, "modelled cores that encode at the source and decode at the destination (default: the model's, 1)")
		calibrate = fs.Bool("calibrate", false, "measure this machine's CPU cost model (codec.Calibrate), print it as JSON for -cost, and exit")
		advise    = fs.Bool("advise", false, "profile the custom scenario's guest (package advisor) and print the advice instead of running it")
		objective = fs.String("objective", "balanced", "-advise's objective: balanced, no-postcopy, min-downtime")
		validateN = fs.Int("validate", 0, "run the advisor's validation set of this many random scenarios (every algorithm it knows) and print its hit rates")
		valSeed   = fs.Uint64("validate-seed", validationSeed, "seed of -validate's scenarios")
		whichFlag = fs.Bool("which", false, "print docs/EVALUATION.md's \"Which approach when\" as the advisor makes it, each situation also run by every algorithm")
		valRows   = fs.String("validate-rows", "", "-validate keeps its simulated rows in this JSON file: read when present, written otherwise")
	)
	known := registry(300*time.Millisecond, 30)
	fs.Lookup("algorithms").Usage += algorithmNames(known)
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	known = registry(*downtime, *maxRounds)
	if *calibrate {
		m, err := codec.Calibrate(ctx)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}
	cost, err := costModel(*costFile, *costCores)
	if err != nil {
		return err
	}

	if *validateN > 0 {
		var progress io.Writer
		if !*quiet {
			progress = stderr
		}
		return validate(ctx, *validateN, *valSeed, *maxRounds, cost, *parallel, *valRows, stdout, progress)
	}
	if *whichFlag {
		var progress io.Writer
		if !*quiet {
			progress = stderr
		}
		return which(ctx, *maxRounds, cost, *parallel, stdout, progress)
	}
	chosenSets, err := chooseSets(*setNames)
	if err != nil {
		return err
	}
	custom := *guest != "" || *workload != "" || *rate != 0 || *hot != "" || *buffer != ""
	if custom {
		sc, err := customScenario(*guest, *workload, *rate, *hot, *buffer, *hotFrac, *whole)
		if err != nil {
			return err
		}
		chosenSets = []set{{name: "custom", algorithms: defaultAlgorithms, entries: []entry{{sc: sc, series: sc.Name}}}}
	}
	var bw float64
	if *bandwidth != "" {
		if bw, err = parseBandwidth(*bandwidth); err != nil {
			return err
		}
	}
	// override applies the link and seed flags given, and the cost model,
	// to a scenario.
	override := func(sc *scenario.Scenario) {
		if bw != 0 {
			sc.Bandwidth = bw
		}
		if given["latency"] {
			sc.Latency = *latency
		}
		if given["seed"] {
			sc.Seed = *seed
		}
		sc.Cost = cost
	}
	if *advise {
		o, err := advisor.ParseObjective(*objective)
		if err != nil {
			return err
		}
		sc, err := customScenario(*guest, *workload, *rate, *hot, *buffer, *hotFrac, *whole)
		if err != nil {
			return err
		}
		override(&sc)
		adv, p, err := adviseScenario(ctx, sc, advisor.Target{Downtime: *downtime, MaxRounds: *maxRounds}, o)
		if err != nil {
			return err
		}
		return writeAdvice(stdout, sc, adv, p, *asJSON)
	}
	for si := range chosenSets {
		for i := range chosenSets[si].entries {
			override(&chosenSets[si].entries[i].sc)
		}
	}
	jobs, err := planJobs(chosenSets, *algs, known)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	start := time.Now()
	var progress io.Writer
	if !*quiet {
		progress = stderr
	}
	results, err := execute(ctx, jobs, *parallel, progress)
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Fprintf(stderr, "compare: %d runs in %v\n", len(jobs), time.Since(start).Round(time.Millisecond))
	}
	if *plots != "" {
		files, err := writePlots(*plots, chosenSets, jobs, results)
		if err != nil {
			return err
		}
		if !*quiet {
			fmt.Fprintf(stderr, "compare: wrote %d plots to %s\n", len(files), *plots)
		}
	}
	if *asJSON {
		rows := make([]scenario.Row, len(results))
		for i, r := range results {
			rows[i] = r.Row()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	for si, s := range chosenSets {
		if si > 0 {
			fmt.Fprintln(stdout)
		}
		var rs []scenario.Result
		for i, j := range jobs {
			if j.set == si {
				rs = append(rs, results[i])
			}
		}
		if err := writeTable(stdout, s, rs); err != nil {
			return err
		}
	}
	return nil
}

// planJobs lists the runs of sets: every entry by every algorithm of its
// set, or of algs when it is not empty.
func planJobs(sets []set, algs string, known []algorithm) ([]job, error) {
	var jobs []job
	for si, s := range sets {
		list := s.algorithms
		if algs != "" {
			list = algs
		}
		chosen, err := chooseAlgorithms(list, known)
		if err != nil {
			return nil, err
		}
		for _, e := range s.entries {
			for _, alg := range chosen {
				jobs = append(jobs, job{set: si, entry: e, alg: alg})
			}
		}
	}
	return jobs, nil
}

// execute runs jobs, parallel at once, and returns their results in the
// order of jobs; a line per run goes to progress if it is not nil. The
// results do not depend on parallel: every run is in virtual time.
func execute(ctx context.Context, jobs []job, parallel int, progress io.Writer) ([]scenario.Result, error) {
	results := make([]scenario.Result, len(jobs))
	errs := make([]error, len(jobs))
	var mu sync.Mutex // progress lines
	sem := make(chan struct{}, max(1, parallel))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			sc := j.entry.sc
			results[i], errs[i] = scenario.Run(ctx, sc, j.alg)
			if progress == nil || errs[i] != nil || results[i].Report == nil {
				return
			}
			mu.Lock()
			fmt.Fprintf(progress, "compare: %-18s %-24s %s, %s over %s: %v virtual, %v real\n", sc.Name, j.alg.Name,
				livemig.FormatBytes(sc.GuestBytes), sc.Workload, formatBandwidth(sc.Bandwidth),
				results[i].Report.TotalTime.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return results, errors.Join(errs...)
}

// costModel returns the cost model -cost and -cost-workers ask for: nil
// (the default model) when neither is given.
func costModel(file string, workers int) (*codec.CostModel, error) {
	if file == "" && workers == 0 {
		return nil, nil
	}
	m := codec.DefaultCost()
	switch file {
	case "":
	case "free":
		m = codec.CostModel{}
	default:
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("-cost: %w", err)
		}
		m = codec.CostModel{}
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("-cost %s: %w", file, err)
		}
	}
	if workers < 0 {
		return nil, fmt.Errorf("-cost-workers %d", workers)
	}
	if workers > 0 {
		m.Workers, m.DecodeWorkers = workers, workers
	}
	return &m, nil
}

// customScenario builds the scenario the -guest, -workload, ... flags
// describe: 4 GiB over 1 Gbit/s unless told otherwise.
func customScenario(guest, workload string, rate float64, hot, buffer string, hotFrac float64, whole bool) (scenario.Scenario, error) {
	sc := scenario.Scenario{GuestBytes: 4 * gib, Bandwidth: 1e9, Latency: 100 * time.Microsecond, Seed: 2012}
	if guest != "" {
		v, err := parseBytes(guest)
		if err != nil {
			return sc, err
		}
		sc.GuestBytes = v
	}
	sc.Workload = scenario.Workload{Kind: workload, Rate: rate, HotFraction: hotFrac, Whole: whole}
	if sc.Workload.Kind == "" {
		sc.Workload.Kind = "uniform"
	}
	if sc.Workload.Kind == "hotcold" && hotFrac == 0 {
		sc.Workload.HotFraction = 0.9
	}
	for _, b := range []struct {
		s   string
		dst *uint64
	}{{hot, &sc.Workload.HotBytes}, {buffer, &sc.Workload.BufferBytes}} {
		if b.s == "" {
			continue
		}
		v, err := parseBytes(b.s)
		if err != nil {
			return sc, err
		}
		*b.dst = v
	}
	sc.Name = sc.Workload.Kind
	return sc, nil
}

func writeTable(w io.Writer, s set, results []scenario.Result) error {
	fmt.Fprintf(w, "set %s", s.name)
	if s.about != "" {
		fmt.Fprintf(w, ": %s", s.about)
	}
	fmt.Fprintln(w, " (virtual time; every page checked at the destination)")
	if len(s.entries) > 0 {
		fmt.Fprintf(w, "  CPU: %s (charged on every row; post-copy and hybrid: one core per connection at each end)\n", describeCost(s.entries[0].sc.Cost))
	}
	for _, e := range s.entries {
		fmt.Fprintf(w, "  %-18s %s, %s, link %s, latency %v\n", e.sc.Name, livemig.FormatBytes(e.sc.GuestBytes),
			e.sc.Workload, formatBandwidth(e.sc.Bandwidth), e.sc.Latency)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\talgorithm\ttotal\tdowntime\tMB sent\tpages sent\tre-sent\trounds\tconverged\tcodec ratio\tcache hits\tcodecs at end\tfaults\tfault wait\tp99 fault\tverified\t")
	for _, r := range results {
		row := r.Row()
		verified := fmt.Sprint(row.Verified)
		if r.Err != nil {
			verified = "aborted"
		}
		ratio, hits, codecs := "-", "-", "-"
		if row.Codecs != "" {
			codecs = row.Codecs
		}
		if row.CodecRatio > 0 {
			ratio = fmt.Sprintf("%.2f", row.CodecRatio)
		}
		if c := r.Report; c != nil && c.Codec != nil && c.Codec.CacheHits+c.Codec.CacheMisses > 0 {
			hits = fmt.Sprintf("%.1f%%", 100*row.CacheHitRate)
		}
		faults, wait, p99 := "-", "-", "-"
		if r.Report != nil && r.Report.PostCopy != nil {
			faults, wait, p99 = fmt.Sprint(row.DemandFaults), fmtMS(row.FaultWaitMS), fmtMS(row.FaultP99MS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f\t%d\t%d\t%d\t%v\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", row.Scenario, row.Algorithm,
			fmtMS(row.TotalMS), fmtMS(row.DowntimeMS), float64(row.BytesSent)/1e6, row.PagesSent, row.PagesResent,
			row.Rounds, row.Converged, ratio, hits, codecs, faults, wait, p99, verified)
	}
	return tw.Flush()
}

// describeCost names a scenario's CPU cost model for the tables.
func describeCost(m *codec.CostModel) string {
	cores := func(n int) int { return max(n, 1) }
	if m == nil {
		d := codec.DefaultCost()
		return fmt.Sprintf("the default cost model (codec.DefaultCost: LZ4 %.1f µs a page), 1 core at each end", d.LZ4Compress/1000)
	}
	if *m == (codec.CostModel{Workers: m.Workers, DecodeWorkers: m.DecodeWorkers}) {
		return "free (no CPU cost)"
	}
	return fmt.Sprintf("%s; %d cores at the source, %d at the destination", m, cores(m.Workers), cores(m.DecodeWorkers))
}

func fmtMS(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.2f s", ms/1000)
	}
	return fmt.Sprintf("%.1f ms", ms)
}

func formatBandwidth(bps float64) string {
	switch {
	case bps >= 1e9:
		return strconv.FormatFloat(bps/1e9, 'g', 4, 64) + " Gbit/s"
	case bps >= 1e6:
		return strconv.FormatFloat(bps/1e6, 'g', 4, 64) + " Mbit/s"
	}
	return strconv.FormatFloat(bps, 'g', 4, 64) + " bit/s"
}

// parseBandwidth reads 1Gbit, 100Mbit, 2.5Gbit, 1e9 (bits per second).
func parseBandwidth(s string) (float64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	t = strings.TrimSuffix(t, "bps")
	t = strings.TrimSuffix(t, "bit")
	mult := 1.0
	switch {
	case strings.HasSuffix(t, "g"):
		mult, t = 1e9, strings.TrimSuffix(t, "g")
	case strings.HasSuffix(t, "m"):
		mult, t = 1e6, strings.TrimSuffix(t, "m")
	case strings.HasSuffix(t, "k"):
		mult, t = 1e3, strings.TrimSuffix(t, "k")
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bandwidth %q: want e.g. 1Gbit, 100Mbit", s)
	}
	return v * mult, nil
}

// parseBytes reads 4GiB, 512MiB, 64KiB, 4096.
func parseBytes(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("size %q: want e.g. 4GiB, 512MiB", s)
	}
	return uint64(v * float64(mult)), nil
}

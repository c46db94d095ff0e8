// Command compare reproduces the evaluation of P. Svärd's thesis "Live VM
// Migration Principles and Performance" in livemig's simulated world: each
// scenario (a guest, its workload, a link) is migrated by each algorithm in
// virtual time, by the same engine code that migrates real memory, and the
// results print as a table or as JSON.
//
// With no flags it runs the embedded default set: a 4 GiB guest over
// 1 Gbit/s, idle and under uniform, hot/cold and streaming workloads at a low
// and a high dirty rate, by pre-copy, pre-copy with auto-converge and
// pre-copy with XBZRLE delta compression (-algorithms all adds LZ4 and
// XBZRLE+LZ4).
//
// The JSON rows have the keys scenario, algorithm, total_ms, downtime_ms,
// bytes_sent, pages_sent, pages_resent, rounds, verified and converged;
// rows of algorithms with a codec add codec_ratio and cache_hit_rate; an
// aborted migration adds error.
//
//	go run ./examples/compare
//	go run ./examples/compare -json
//	go run ./examples/compare -guest 16GiB -workload hotcold -rate 40000 -bandwidth 10Gbit
//	go run ./examples/compare -algorithms precopy -downtime 30ms
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
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/scenario"
)

// defaultScenarios is the embedded evaluation: Clark et al.'s and the
// thesis' classic cases, scaled to a 4 GiB guest on a 1 Gbit/s LAN (about
// 30,000 pages/s): below and above the rate the link drains.
func defaultScenarios() []scenario.Scenario {
	const gib = 1 << 30
	base := scenario.Scenario{GuestBytes: 4 * gib, Bandwidth: 1e9, Latency: 100 * time.Microsecond, Seed: 2012}
	mk := func(name string, w scenario.Workload) scenario.Scenario {
		s := base
		s.Name, s.Workload = name, w
		return s
	}
	return []scenario.Scenario{
		mk("idle", scenario.Workload{Kind: "idle"}),
		mk("uniform-low", scenario.Workload{Kind: "uniform", Rate: 2000}),
		mk("uniform-high", scenario.Workload{Kind: "uniform", Rate: 40000}),
		mk("hotcold-low", scenario.Workload{Kind: "hotcold", Rate: 5000, HotBytes: 64 << 20, HotFraction: 0.9}),
		mk("hotcold-high", scenario.Workload{Kind: "hotcold", Rate: 50000, HotBytes: 256 << 20, HotFraction: 0.95}),
		mk("stream-low", scenario.Workload{Kind: "stream", Rate: 5000, HotBytes: 256 << 20}),
		mk("stream-high", scenario.Workload{Kind: "stream", Rate: 25000, HotBytes: 512 << 20}),
	}
}

// algorithms are the algorithms compare knows, by name.
func algorithms(downtime time.Duration, maxRounds int) map[string]scenario.Algorithm {
	pc := precopy.Config{DowntimeTarget: downtime, MaxRounds: maxRounds}
	throttle := pc
	throttle.OnNonConvergence = precopy.Throttle
	xbzrle, lz4, both := pc, pc, pc
	// The XBZRLE cache holds 512 MiB (QEMU's default is 64 MiB): an eighth
	// of the default guest, enough for the hot sets of the default
	// scenarios, as the thesis sizes it to the working set.
	cache := delta.CacheConfig{Bytes: 512 << 20}
	xbzrle.Codec.XBZRLE, xbzrle.Codec.Cache = true, cache
	lz4.Codec.LZ4 = true
	both.Codec.XBZRLE, both.Codec.LZ4, both.Codec.Cache = true, true, cache
	return map[string]scenario.Algorithm{
		"precopy":            {Name: "pre-copy", PreCopy: pc},
		"precopy-throttle":   {Name: "pre-copy+auto-converge", PreCopy: throttle},
		"precopy-xbzrle":     {Name: "pre-copy+xbzrle", PreCopy: xbzrle},
		"precopy-lz4":        {Name: "pre-copy+lz4", PreCopy: lz4},
		"precopy-xbzrle-lz4": {Name: "pre-copy+xbzrle+lz4", PreCopy: both},
	}
}

// allAlgorithms is every algorithm, in the order -algorithms all runs them.
const allAlgorithms = "precopy,precopy-throttle,precopy-xbzrle,precopy-lz4,precopy-xbzrle-lz4"

// defaultAlgorithms run without -algorithms. LZ4 costs real CPU even in
// virtual time (about 0.7 GB/s here), so its rows run with -algorithms all
// or by name, which keeps the default set under a minute.
const defaultAlgorithms = "precopy,precopy-throttle,precopy-xbzrle"

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		guest     = fs.String("guest", "", "guest memory, e.g. 4GiB, 512MiB (a custom scenario)")
		workload  = fs.String("workload", "", "workload: idle, uniform, hotcold, stream, mix (a custom scenario)")
		rate      = fs.Float64("rate", 0, "pages written per second (custom scenario)")
		hot       = fs.String("hot", "", "hot set (hotcold) or buffer (stream) size, e.g. 64MiB")
		hotFrac   = fs.Float64("hot-fraction", 0.9, "share of hotcold's writes to the hot set")
		whole     = fs.Bool("whole", false, "writes rewrite whole pages (default: a few words)")
		bandwidth = fs.String("bandwidth", "", "link bandwidth, e.g. 1Gbit, 100Mbit, 10Gbit (default 1Gbit)")
		latency   = fs.Duration("latency", 100*time.Microsecond, "one-way link latency")
		downtime  = fs.Duration("downtime", 300*time.Millisecond, "downtime target")
		maxRounds = fs.Int("max-rounds", 30, "round limit of pre-copy")
		algs      = fs.String("algorithms", defaultAlgorithms, "comma-separated algorithms, or all: "+allAlgorithms)
		seed      = fs.Uint64("seed", 2012, "seed of the simulated guests")
		asJSON    = fs.Bool("json", false, "print the results as a JSON array")
		quiet     = fs.Bool("q", false, "no progress on stderr")
		parallel  = fs.Int("parallel", 2, "runs at once (results do not depend on it)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	known := algorithms(*downtime, *maxRounds)
	var chosen []scenario.Algorithm
	if *algs == "all" {
		*algs = allAlgorithms
	}
	for _, name := range strings.Split(*algs, ",") {
		a, ok := known[strings.TrimSpace(name)]
		if !ok {
			return fmt.Errorf("unknown algorithm %q", name)
		}
		chosen = append(chosen, a)
	}
	scenarios := defaultScenarios()
	bw := 1e9
	if *bandwidth != "" {
		v, err := parseBandwidth(*bandwidth)
		if err != nil {
			return err
		}
		bw = v
	}
	custom := *guest != "" || *workload != "" || *rate != 0 || *hot != ""
	if custom {
		sc := scenarios[0]
		sc.Name = "custom"
		if *guest != "" {
			v, err := parseBytes(*guest)
			if err != nil {
				return err
			}
			sc.GuestBytes = v
		}
		sc.Workload = scenario.Workload{Kind: *workload, Rate: *rate, HotFraction: *hotFrac, Whole: *whole}
		if sc.Workload.Kind == "" {
			sc.Workload.Kind = "uniform"
		}
		if *hot != "" {
			v, err := parseBytes(*hot)
			if err != nil {
				return err
			}
			sc.Workload.HotBytes = v
		}
		sc.Name = sc.Workload.Kind
		scenarios = []scenario.Scenario{sc}
	}
	for i := range scenarios {
		scenarios[i].Bandwidth, scenarios[i].Latency, scenarios[i].Seed = bw, *latency, *seed
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	type job struct {
		sc  scenario.Scenario
		alg scenario.Algorithm
	}
	var jobs []job
	for _, sc := range scenarios {
		for _, alg := range chosen {
			jobs = append(jobs, job{sc, alg})
		}
	}
	results := make([]scenario.Result, len(jobs))
	errs := make([]error, len(jobs))
	var mu sync.Mutex // progress lines
	sem := make(chan struct{}, max(1, *parallel))
	var wg sync.WaitGroup
	start := time.Now()
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			results[i], errs[i] = scenario.Run(ctx, j.sc, j.alg)
			if *quiet || errs[i] != nil {
				return
			}
			mu.Lock()
			fmt.Fprintf(stderr, "compare: %-13s %-24s %s, %s over %s: %v virtual, %v real\n", j.sc.Name, j.alg.Name,
				livemig.FormatBytes(j.sc.GuestBytes), j.sc.Workload, formatBandwidth(j.sc.Bandwidth),
				results[i].Report.TotalTime.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	rows := make([]scenario.Row, len(results))
	for i, r := range results {
		rows[i] = r.Row()
	}
	if !*quiet {
		fmt.Fprintf(stderr, "compare: %d runs in %v\n", len(rows), time.Since(start).Round(time.Millisecond))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	return writeTable(stdout, results)
}

func writeTable(w io.Writer, results []scenario.Result) error {
	if len(results) > 0 {
		sc := results[0].Scenario
		fmt.Fprintf(w, "guest %s, link %s, latency %v (virtual time; every page checked at the destination)\n\n",
			livemig.FormatBytes(sc.GuestBytes), formatBandwidth(sc.Bandwidth), sc.Latency)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\talgorithm\ttotal\tdowntime\tMB sent\tpages sent\tre-sent\trounds\tconverged\tcodec ratio\tcache hits\tverified\t")
	for _, r := range results {
		row := r.Row()
		verified := fmt.Sprint(row.Verified)
		if r.Err != nil {
			verified = "aborted"
		}
		ratio, hits := "-", "-"
		if row.CodecRatio > 0 {
			ratio = fmt.Sprintf("%.2f", row.CodecRatio)
			hits = fmt.Sprintf("%.1f%%", 100*row.CacheHitRate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f\t%d\t%d\t%d\t%v\t%s\t%s\t%s\t\n", row.Scenario, row.Algorithm,
			fmtMS(row.TotalMS), fmtMS(row.DowntimeMS), float64(row.BytesSent)/1e6, row.PagesSent, row.PagesResent,
			row.Rounds, row.Converged, ratio, hits, verified)
	}
	return tw.Flush()
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

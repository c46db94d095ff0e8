package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/scenario"
)

// writePlots draws the figures of the sets that ran into dir, each as a PNG
// and an SVG, and returns the files' names (without the directory):
//
//   - for every scenario of a set that is not a sweep, SET-rounds-SCENARIO:
//     the pages found dirty at each round's start and the pages sent in it,
//     one line per algorithm;
//   - for a dirty-rate sweep, SET-downtime: downtime against the rate the
//     guest writes pages, one line per algorithm, and below it (when
//     post-copy or hybrid ran) the guest time they lost to demand faults;
//   - for a bandwidth or latency sweep, SET-time: total time, downtime and
//     (when post-copy or hybrid ran) the guest time lost to demand faults
//     against the link's bandwidth or latency, one column per workload;
//   - for a bandwidth sweep with codec rows, SET-codecs: each codec row's
//     total time over its twin's without the codecs (pre-copy+lz4 over
//     pre-copy, post-copy+preempt+lz4 over post-copy+preempt), against
//     the bandwidth: below 1 the codec pays, above it it slows the
//     migration.
//
// Values of 0 on a logarithmic axis are drawn at the axis' floor.
func writePlots(dir string, sets []set, jobs []job, results []scenario.Result) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	save := func(name string, w, h vg.Length, grid [][]*plot.Plot) error {
		fs, err := saveGrid(dir, name, w, h, grid)
		files = append(files, fs...)
		return err
	}
	for si, s := range sets {
		var mine []int // jobs of this set, in order
		for i, j := range jobs {
			if j.set == si {
				mine = append(mine, i)
			}
		}
		switch s.sweep {
		case sweepNone:
			for _, e := range s.entries {
				p, err := roundsPlot(s, e, jobs, results, mine)
				if err != nil {
					return files, err
				}
				if err := save(fileName(s.name+"-rounds-"+e.sc.Name), 18*vg.Centimeter, 16*vg.Centimeter, p); err != nil {
					return files, err
				}
			}
		case sweepDirty:
			p, err := dirtyPlot(s, jobs, results, mine)
			if err != nil {
				return files, err
			}
			if err := save(fileName(s.name+"-downtime"), 18*vg.Centimeter, 12*vg.Centimeter*vg.Length(len(p)), p); err != nil {
				return files, err
			}
		case sweepBandwidth, sweepLatency:
			label := "link bandwidth (bit/s)"
			if s.sweep == sweepLatency {
				label = "one-way link latency (ms)"
			}
			p, err := sweepPlot(s, label, jobs, results, mine)
			if err != nil {
				return files, err
			}
			h := 9 * vg.Centimeter * vg.Length(len(p))
			w := max(30*vg.Centimeter, 9.5*vg.Centimeter*vg.Length(len(p[0])))
			if err := save(fileName(s.name+"-time"), w, h, p); err != nil {
				return files, err
			}
			if s.sweep != sweepBandwidth {
				continue
			}
			if p, err := codecPlot(s, jobs, results, mine); err != nil {
				return files, err
			} else if p != nil {
				if err := save(fileName(s.name+"-codecs"), 30*vg.Centimeter, 10*vg.Centimeter, p); err != nil {
					return files, err
				}
			}
		}
	}
	return files, nil
}

// fileName keeps letters, digits, '-', '_' and '.' of name.
func fileName(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, name)
}

// saveGrid draws a grid of plots, aligned, as name.png and name.svg.
func saveGrid(dir, name string, w, h vg.Length, grid [][]*plot.Plot) ([]string, error) {
	tiles := draw.Tiles{Rows: len(grid), Cols: len(grid[0]), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	var files []string
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	svg := vgsvg.New(w, h)
	for _, c := range []struct {
		canvas vg.CanvasWriterTo
		ext    string
	}{{vgimg.PngCanvas{Canvas: img}, ".png"}, {svg, ".svg"}} {
		dc := draw.New(c.canvas)
		dc.SetColor(plotWhite)
		dc.Fill(dc.Rectangle.Path())
		canvases := plot.Align(grid, tiles, dc)
		for i := range grid {
			for j := range grid[i] {
				if grid[i][j] != nil {
					grid[i][j].Draw(canvases[i][j])
				}
			}
		}
		f, err := os.Create(filepath.Join(dir, name+c.ext))
		if err != nil {
			return files, err
		}
		_, err = c.canvas.WriteTo(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return files, fmt.Errorf("plot %s: %w", name+c.ext, err)
		}
		files = append(files, name+c.ext)
	}
	return files, nil
}

// logFloor is where values at or below zero go on a logarithmic axis.
const logFloor = 1

func clampLog(v float64) float64 { return math.Max(v, logFloor) }

// newPlot is a plot with the house style: title, labels, grid, legend at
// the top right.
func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.XOffs = -vg.Millimeter
	return p
}

// addLines adds one line with points per series, in the order of names,
// with plotutil's default colours, dashes and glyphs (the same algorithm
// gets the same style in every plot of a run, since names come in registry
// order).
func addLines(p *plot.Plot, names []string, data map[string]plotter.XYs, legend bool) error {
	for i, n := range names {
		xy := data[n]
		if len(xy) == 0 {
			continue
		}
		l, s, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		styleLine(i, l, s)
		p.Add(l, s)
		if legend {
			p.Legend.Add(n, l, s)
		}
	}
	return nil
}

// styleLine gives the i-th series its line and glyph style.
func styleLine(i int, l *plotter.Line, s *plotter.Scatter) {
	l.Color = plotutil.Color(i)
	l.Dashes = plotutil.Dashes(i)
	l.Width = vg.Points(1.2)
	s.Color = plotutil.Color(i)
	s.Shape = plotutil.Shape(i)
	s.Radius = vg.Points(2.5)
}

// legendEntry is a legend line whose plot is chosen later.
type legendEntry struct {
	name   string
	thumbs []plot.Thumbnailer
}

// seriesLegend returns the legend entries of names in addLines' styles.
func seriesLegend(names []string) ([]legendEntry, error) {
	var out []legendEntry
	for i, n := range names {
		l, s, err := plotter.NewLinePoints(plotter.XYs{{X: 1, Y: 1}})
		if err != nil {
			return nil, err
		}
		styleLine(i, l, s)
		out = append(out, legendEntry{n, []plot.Thumbnailer{l, s}})
	}
	return out, nil
}

// algorithmOrder lists the algorithms of the given jobs in first-seen order.
func algorithmOrder(jobs []job, idx []int) []string {
	var names []string
	for _, i := range idx {
		if n := jobs[i].alg.Name; !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// roundsPlot draws, for one scenario, the pages dirty at each round's start
// (top) and the pages each round sent (bottom), per algorithm.
func roundsPlot(s set, e entry, jobs []job, results []scenario.Result, idx []int) ([][]*plot.Plot, error) {
	var mine []int
	for _, i := range idx {
		if jobs[i].entry.sc.Name == e.sc.Name {
			mine = append(mine, i)
		}
	}
	names := algorithmOrder(jobs, mine)
	dirty, sent := map[string]plotter.XYs{}, map[string]plotter.XYs{}
	for _, i := range mine {
		rep := results[i].Report
		if rep == nil {
			continue
		}
		n := jobs[i].alg.Name
		for k, r := range rep.Rounds {
			dirty[n] = append(dirty[n], plotter.XY{X: float64(k + 1), Y: clampLog(float64(r.DirtyPages))})
			sent[n] = append(sent[n], plotter.XY{X: float64(k + 1), Y: clampLog(float64(r.PagesSent))})
		}
	}
	title := fmt.Sprintf("%s: %s guest, %s, %s", e.sc.Name, livemig.FormatBytes(e.sc.GuestBytes), e.sc.Workload,
		formatBandwidth(e.sc.Bandwidth))
	top := newPlot(title, "", "pages dirty at round start")
	bottom := newPlot("", "round (1 = bulk round; the last is stop-and-copy)", "pages sent in round")
	for _, p := range []*plot.Plot{top, bottom} {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
		p.X.Tick.Marker = integerTicks{}
	}
	if err := addLines(top, names, dirty, true); err != nil {
		return nil, err
	}
	if err := addLines(bottom, names, sent, false); err != nil {
		return nil, err
	}
	for _, p := range []*plot.Plot{top, bottom} {
		decades(&p.Y)
	}
	top.Legend.Top, top.Legend.Left = false, true
	top.Legend.XOffs, top.Legend.YOffs = vg.Millimeter*3, vg.Millimeter*3
	top.Title.TextStyle.Font.Size = vg.Points(10)
	return [][]*plot.Plot{{top}, {bottom}}, nil
}

// dirtyPlot draws downtime against the guest's dirty rate, per algorithm.
func dirtyPlot(s set, jobs []job, results []scenario.Result, idx []int) ([][]*plot.Plot, error) {
	names := algorithmOrder(jobs, idx)
	data := map[string]plotter.XYs{}
	var sc scenario.Scenario
	for _, i := range idx {
		if results[i].Report == nil {
			continue
		}
		sc = jobs[i].entry.sc
		n := jobs[i].alg.Name
		ms := float64(results[i].Report.Downtime) / float64(time.Millisecond)
		data[n] = append(data[n], plotter.XY{X: jobs[i].entry.x, Y: clampLog(ms)})
	}
	p := newPlot(fmt.Sprintf("downtime against dirty rate: %s guest, hot/cold writes, %s link",
		livemig.FormatBytes(sc.GuestBytes), formatBandwidth(sc.Bandwidth)),
		"pages written per second by the guest", "downtime (ms)")
	p.Title.TextStyle.Font.Size = vg.Points(10)
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logTicks{}
	legend, err := seriesLegend(names)
	if err != nil {
		return nil, err
	}
	if err := addLines(p, names, data, false); err != nil {
		return nil, err
	}
	decades(&p.Y)
	// The link's capacity in 4 KiB pages per second, as a dashed line.
	if sc.Bandwidth > 0 {
		capacity := sc.Bandwidth / 8 / float64(livemig.DefaultPageSize)
		l, err := plotter.NewLine(plotter.XYs{{X: capacity, Y: p.Y.Min}, {X: capacity, Y: p.Y.Max}})
		if err != nil {
			return nil, err
		}
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		l.Color = plotGrey
		p.Add(l)
		legend = append(legend, legendEntry{fmt.Sprintf("link capacity (%.0f pages/s)", capacity), []plot.Thumbnailer{l}})
	}
	// The downtime target, as a dotted line.
	if target := downtimeTarget(jobs, idx); target > 0 {
		ms := float64(target) / float64(time.Millisecond)
		xmin, xmax := p.X.Min, p.X.Max
		l, err := plotter.NewLine(plotter.XYs{{X: xmin, Y: ms}, {X: xmax, Y: ms}})
		if err != nil {
			return nil, err
		}
		l.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
		l.Color = plotGrey
		p.Add(l)
		legend = append(legend, legendEntry{fmt.Sprintf("downtime target (%v)", target), []plot.Thumbnailer{l}})
	}
	// What post-copy pays instead: the guest's time lost to faults.
	wait := map[string]plotter.XYs{}
	for _, i := range idx {
		if rep := results[i].Report; rep != nil && rep.PostCopy != nil {
			n := jobs[i].alg.Name
			wait[n] = append(wait[n], plotter.XY{X: jobs[i].entry.x,
				Y: clampLog(float64(rep.PostCopy.WaitTotal) / float64(time.Millisecond))})
		}
	}
	// The legend goes at the bottom right of the lowest panel, where the
	// lines are not: the downtime panel's bottom holds post-copy's.
	setLegend := func(q *plot.Plot) {
		q.Legend.Left, q.Legend.Top = false, false
		q.Legend.XOffs, q.Legend.YOffs = -vg.Millimeter*2, vg.Millimeter*2
		for _, e := range legend {
			q.Legend.Add(e.name, e.thumbs...)
		}
	}
	if len(wait) == 0 {
		setLegend(p)
		return [][]*plot.Plot{{p}}, nil
	}
	q := newPlot("", "pages written per second by the guest", "guest time lost to demand faults (ms)")
	setLegend(q)
	q.Y.Scale = plot.LogScale{}
	q.Y.Tick.Marker = logTicks{}
	if err := addLines(q, names, wait, false); err != nil {
		return nil, err
	}
	decades(&q.Y)
	q.X.Min, q.X.Max = p.X.Min, p.X.Max
	p.X.Label.Text = ""
	return [][]*plot.Plot{{p}, {q}}, nil
}

// downtimeTarget is the pre-copy downtime target of the given jobs, if they
// share one.
func downtimeTarget(jobs []job, idx []int) time.Duration {
	var t time.Duration
	seen := false
	for _, i := range idx {
		if jobs[i].alg.Migrate != nil {
			continue // post-copy or hybrid: no target
		}
		d := jobs[i].alg.PreCopy.DowntimeTarget
		if seen && d != t {
			return 0
		}
		t, seen = d, true
	}
	return t
}

// sweepPlot draws total time (top row), downtime (middle row) and, when
// post-copy or hybrid ran, the guest time lost waiting on demand faults
// (bottom row) against the sweep's axis, one column per workload, per
// algorithm. Both axes are logarithmic.
func sweepPlot(s set, xLabel string, jobs []job, results []scenario.Result, idx []int) ([][]*plot.Plot, error) {
	names := algorithmOrder(jobs, idx)
	var series []string
	for _, e := range s.entries {
		if !slices.Contains(series, e.series) {
			series = append(series, e.series)
		}
	}
	withFaults := slices.ContainsFunc(idx, func(i int) bool {
		return results[i].Report != nil && results[i].Report.PostCopy != nil
	})
	rows := 2
	if withFaults {
		rows = 3
	}
	// With many algorithms the legend would cover the lines: it gets a
	// column of its own.
	legendCol := len(names) > 8
	cols := len(series)
	if legendCol {
		cols++
	}
	grid := make([][]*plot.Plot, rows)
	for r := range grid {
		grid[r] = make([]*plot.Plot, cols)
	}
	if legendCol {
		lp := plot.New()
		lp.HideAxes()
		entries, err := seriesLegend(names)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			lp.Legend.Add(e.name, e.thumbs...)
		}
		lp.Legend.Top, lp.Legend.Left = true, true
		lp.Legend.TextStyle.Font.Size = vg.Points(10)
		grid[0][cols-1] = lp
	}
	for c, ser := range series {
		total, down, wait := map[string]plotter.XYs{}, map[string]plotter.XYs{}, map[string]plotter.XYs{}
		var w scenario.Scenario
		for _, i := range idx {
			j := jobs[i]
			if j.entry.series != ser || results[i].Report == nil {
				continue
			}
			w = j.entry.sc
			rep := results[i].Report
			x := j.entry.x
			total[j.alg.Name] = append(total[j.alg.Name], plotter.XY{X: x, Y: rep.TotalTime.Seconds()})
			down[j.alg.Name] = append(down[j.alg.Name],
				plotter.XY{X: x, Y: clampLog(float64(rep.Downtime) / float64(time.Millisecond))})
			if rep.PostCopy != nil {
				wait[j.alg.Name] = append(wait[j.alg.Name],
					plotter.XY{X: x, Y: clampLog(float64(rep.PostCopy.WaitTotal) / float64(time.Millisecond))})
			}
		}
		col := []*plot.Plot{
			newPlot(fmt.Sprintf("%s\n%s, %s", ser, livemig.FormatBytes(w.GuestBytes), w.Workload), "", "total time (s)"),
			newPlot("", "", "downtime (ms)"),
		}
		data := []map[string]plotter.XYs{total, down}
		if withFaults {
			col = append(col, newPlot("", "", "guest time lost to faults (ms)"))
			data = append(data, wait)
		}
		col[0].Title.TextStyle.Font.Size = vg.Points(8)
		col[len(col)-1].X.Label.Text = xLabel
		for r, p := range col {
			p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
			p.X.Tick.Marker, p.Y.Tick.Marker = logTicks{}, logTicks{}
			if err := addLines(p, names, data[r], r == 0 && c == 0 && !legendCol); err != nil {
				return nil, err
			}
			decades(&p.X)
			decades(&p.Y)
			grid[r][c] = p
		}
		col[0].Legend.Top, col[0].Legend.Left = false, true
		col[0].Legend.XOffs, col[0].Legend.YOffs = vg.Millimeter*2, vg.Millimeter*2
	}
	return grid, nil
}

// codecTwin is the name of the algorithm name without its codecs
// (+xbzrle, +lz4, -noadapt), or "" when name has none.
func codecTwin(name string) string {
	twin := name
	for _, c := range []string{"+xbzrle", "+lz4", "-noadapt"} {
		twin = strings.ReplaceAll(twin, c, "")
	}
	if twin == name {
		return ""
	}
	return twin
}

// codecPlot draws, one column per workload, each codec row's total time
// over its twin's without codecs against the sweep's axis; nil when no
// codec row has its twin among the results.
func codecPlot(s set, jobs []job, results []scenario.Result, idx []int) ([][]*plot.Plot, error) {
	names := algorithmOrder(jobs, idx)
	total := map[string]float64{} // series, algorithm, x -> total time
	key := func(ser, alg string, x float64) string { return fmt.Sprintf("%s\x00%s\x00%g", ser, alg, x) }
	for _, i := range idx {
		if rep := results[i].Report; rep != nil && results[i].Err == nil {
			j := jobs[i]
			total[key(j.entry.series, j.alg.Name, j.entry.x)] = rep.TotalTime.Seconds()
		}
	}
	var series []string
	for _, e := range s.entries {
		if !slices.Contains(series, e.series) {
			series = append(series, e.series)
		}
	}
	var pairs []string // codec rows with a twin, in registry order
	for _, n := range names {
		if t := codecTwin(n); t != "" && slices.Contains(names, t) {
			pairs = append(pairs, n)
		}
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	grid := [][]*plot.Plot{make([]*plot.Plot, len(series))}
	for c, ser := range series {
		data := map[string]plotter.XYs{}
		var w scenario.Scenario
		for _, e := range s.entries {
			if e.series != ser {
				continue
			}
			w = e.sc
			for _, n := range pairs {
				with, ok1 := total[key(ser, n, e.x)]
				without, ok2 := total[key(ser, codecTwin(n), e.x)]
				if ok1 && ok2 && without > 0 {
					data[n] = append(data[n], plotter.XY{X: e.x, Y: with / without})
				}
			}
		}
		p := newPlot(fmt.Sprintf("%s\n%s, %s", ser, livemig.FormatBytes(w.GuestBytes), w.Workload),
			"link bandwidth (bit/s)", "total time: with codec / without")
		p.Title.TextStyle.Font.Size = vg.Points(8)
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, logTicks{}
		// The same styles as the time plot: the index in names.
		for i, n := range names {
			xy := data[n]
			if len(xy) == 0 {
				continue
			}
			l, sc, err := plotter.NewLinePoints(xy)
			if err != nil {
				return nil, err
			}
			styleLine(i, l, sc)
			p.Add(l, sc)
			if c == 0 {
				p.Legend.Add(n, l, sc)
			}
		}
		// The sweep's range, and a logarithmic ratio: twice as slow is as
		// far from 1 as twice as fast.
		p.X.Min, p.X.Max = p.X.Min/1.25, p.X.Max*1.25
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, ratioTicks{}
		p.Y.Min, p.Y.Max = min(p.Y.Min, 0.5), max(p.Y.Max, 2)
		one, err := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: 1}, {X: p.X.Max, Y: 1}})
		if err != nil {
			return nil, err
		}
		one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		one.Color = plotGrey
		p.Add(one)
		p.Legend.Top, p.Legend.Left = true, true
		p.Legend.XOffs, p.Legend.YOffs = vg.Millimeter*2, -vg.Millimeter*2
		grid[0][c] = p
	}
	return grid, nil
}

// ratioTicks marks the powers of two in [min, max]: ¼, ½, 1, 2, 4.
type ratioTicks struct{}

// Ticks returns the ticks of the powers of two in [min, max].
func (ratioTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	if min <= 0 || max <= min {
		return ticks
	}
	for e := math.Ceil(math.Log2(min) - 1e-9); e <= math.Floor(math.Log2(max)+1e-9); e++ {
		v := math.Exp2(e)
		label := strconv.FormatFloat(v, 'g', 3, 64)
		if e < 0 {
			label = "1/" + strconv.FormatFloat(1/v, 'g', 3, 64)
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: label})
	}
	return ticks
}

// logTicks marks the powers of ten in [min, max], labelled 1, 10, 100, 1k,
// 10k, ..., with unlabelled minor ticks at 2..9 times each power.
type logTicks struct{}

// Ticks returns the major and minor ticks of [min, max].
func (logTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	if min <= 0 || max <= min {
		return ticks
	}
	for e := math.Floor(math.Log10(min)); e <= math.Ceil(math.Log10(max)); e++ {
		base := math.Pow(10, e)
		for k := 1.0; k < 10; k++ {
			v := k * base
			if v < min*(1-1e-9) || v > max*(1+1e-9) {
				continue
			}
			t := plot.Tick{Value: v}
			if k == 1 {
				t.Label = siLabel(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// siLabel writes v with an SI suffix: 0.1, 1, 10, 1k, 10k, 1M.
func siLabel(v float64) string {
	switch {
	case v >= 1e9:
		return strconv.FormatFloat(v/1e9, 'g', 3, 64) + "G"
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// decades widens a logarithmic axis to whole powers of ten.
func decades(a *plot.Axis) {
	if a.Min > 0 {
		a.Min = math.Pow(10, math.Floor(math.Log10(a.Min)+1e-9))
	}
	if a.Max > 0 {
		a.Max = math.Pow(10, math.Ceil(math.Log10(a.Max)-1e-9))
	}
	// An axis whose values are all equal (an idle guest's fault wait, all
	// at the floor) would be widened by gonum to [v-1, v+1], through 0.
	if a.Min > 0 && a.Max <= a.Min {
		a.Max = 10 * a.Min
	}
}

// integerTicks marks whole numbers only, at most about 15 of them.
type integerTicks struct{}

// Ticks returns the ticks of the whole numbers in [min, max].
func (integerTicks) Ticks(min, max float64) []plot.Tick {
	step := math.Max(1, math.Ceil((max-min)/15))
	var ticks []plot.Tick
	for v := math.Ceil(min); v <= max; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: fmt.Sprint(v)})
	}
	return ticks
}

var (
	plotWhite = color.White
	plotGrey  = color.Gray{Y: 110}
)

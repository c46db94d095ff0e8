package advisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/delta"
)

// Guest is what the profiler reads of a running guest: its memory and its
// dirty log, nothing else. Observe syncs the dirty log, which clears it:
// profile a guest before its migration starts (every engine sends every
// page in its first round regardless), never during one.
type Guest interface {
	livemig.Memory
	livemig.DirtySource
}

// ObserveConfig tunes Observe. Its zero value is the default.
type ObserveConfig struct {
	// Window is how long the guest is watched. Default DefaultWindow.
	Window time.Duration
	// Interval is the time between two syncs of the dirty log: the
	// resolution of the dirtying rates measured. Default Window/100.
	Interval time.Duration
	// Samples is how many pages, drawn at random, are read for the share
	// of zero pages and LZ4's ratio. Default 1024.
	Samples int
	// DeltaPages is how many dirtied pages are kept to measure the XBZRLE
	// delta of their next write. Default 256.
	DeltaPages int
	// Seed seeds the sampling; the same guest, clock and seed give the
	// same profile.
	Seed uint64
	// Logger receives the profile at Debug; nil discards.
	Logger *slog.Logger
}

// DefaultWindow is ObserveConfig.Window's default: long enough for a hot
// set to show itself at a few thousand writes per second, short beside a
// migration of a guest of a GiB or more.
const DefaultWindow = 2 * time.Second

// Limits of ObserveConfig.
const (
	// MaxIntervals bounds Window/Interval: the per-page counters are 16 bits.
	MaxIntervals = 4096
	// MinIntervals is the fewest intervals a window is cut into.
	MinIntervals = 8
)

// ErrConfig is wrapped by the errors of Observe for a configuration that
// does not hold.
var ErrConfig = errors.New("advisor: bad configuration")

// ErrProfile is returned by Profile.Validate for a profile that cannot be
// advised on (no pages, no intervals).
var ErrProfile = errors.New("advisor: invalid profile")

func (c ObserveConfig) norm() (ObserveConfig, error) {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Interval == 0 {
		c.Interval = c.Window / 100
	}
	if c.Samples == 0 {
		c.Samples = 1024
	}
	if c.DeltaPages == 0 {
		c.DeltaPages = 256
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Window < 0 || c.Interval <= 0 || c.Samples < 0 || c.DeltaPages < 0:
		return c, fmt.Errorf("%w: window %v, interval %v, samples %d, delta pages %d", ErrConfig, c.Window, c.Interval, c.Samples, c.DeltaPages)
	case c.Window/c.Interval < MinIntervals || c.Window/c.Interval > MaxIntervals:
		return c, fmt.Errorf("%w: %v/%v is %d intervals, want %d..%d", ErrConfig, c.Window, c.Interval, c.Window/c.Interval, MinIntervals, MaxIntervals)
	}
	return c, nil
}

// RateClass is a share of the guest's pages that are dirtied at one rate:
// a page of the class is written as a Poisson process of Rate writes per
// second of the guest's running time, so it is dirty after a round of t
// seconds with probability 1-exp(-Rate·t).
//
// Sequential is the share of the class's dirty marks whose next page was
// dirtied in the same interval: writes that run through consecutive pages
// (a buffer filled in order), which post-copy's pre-paging fetches ahead of
// the faults.
type RateClass struct {
	Pages      float64 `json:"pages"`
	Rate       float64 `json:"rate"`
	Sequential float64 `json:"sequential,omitempty"`
}

// GrowthPoint is the writable working set measured over one span: the
// distinct pages dirtied in Span, averaged over the window.
type GrowthPoint struct {
	Span  time.Duration `json:"span_ns"`
	Pages float64       `json:"pages"`
}

// Profile is what Observe measured of a guest, and all that Advise knows of
// it. Every figure comes through livemig.Memory and livemig.DirtySource.
type Profile struct {
	PageSize int           `json:"page_size"`
	Pages    uint64        `json:"pages"`
	Window   time.Duration `json:"window_ns"`
	Interval time.Duration `json:"interval_ns"`

	// DirtyRate is the distinct pages dirtied per second over one
	// Interval: the write rate, less the writes that fell on a page already
	// dirty in the interval.
	DirtyRate float64 `json:"dirty_rate_pps"`
	// WorkingSet is the distinct pages dirtied over the whole window.
	WorkingSet uint64 `json:"working_set_pages"`
	// Growth is the working set over spans of 1, 2, 4, ... intervals up to
	// the window: how it grows with the window.
	Growth []GrowthPoint `json:"growth"`
	// Classes is the guest's pages as a mixture of dirtying rates, fitted
	// to how many intervals each page was dirty in (their pages add up to
	// Pages). It extrapolates the working set past the window (Dirtied).
	Classes []RateClass `json:"classes"`
	// HotShare is the share of dirty marks that fell on the tenth of the
	// pages dirtied most often: how concentrated writes are (0.1 for
	// writes spread evenly over the guest, near 1 for a small hot set).
	HotShare float64 `json:"hot_share"`
	// Locality is the share of a sync's dirty pages whose next page was
	// dirty too: high for sequential writers and consecutive hot sets,
	// where a fault's neighbours are the next pages touched.
	Locality float64 `json:"locality"`

	// DeltaSamples pages were read when dirtied and again when dirtied
	// once more, and XBZRLE-encoded one against the other: DeltaOverflow
	// is the share whose delta did not fit in a page (whole-page
	// rewrites), DeltaUnchanged the share that were the same, and
	// DeltaBytes the mean delta of the others.
	DeltaBytes     float64 `json:"delta_bytes"`
	DeltaOverflow  float64 `json:"delta_overflow"`
	DeltaUnchanged float64 `json:"delta_unchanged"`
	DeltaSamples   int     `json:"delta_samples"`

	// ZeroShare is the share of sampled pages that were all zeros; LZ4Bytes
	// the mean bytes LZ4 left of a sampled page with data (a page LZ4 could
	// not shrink by MaxLZ4's rule counts whole), over Samples pages.
	ZeroShare float64 `json:"zero_share"`
	LZ4Bytes  float64 `json:"lz4_bytes"`
	Samples   int     `json:"samples"`
}

// LZ4Ratio is a page's size over LZ4's mean block for a page with data.
func (p Profile) LZ4Ratio() float64 {
	if p.LZ4Bytes <= 0 {
		return 1
	}
	return float64(p.PageSize) / p.LZ4Bytes
}

// Validate returns an error wrapping ErrProfile when p cannot be advised on.
func (p Profile) Validate() error {
	if p.PageSize <= 0 || p.Pages == 0 || p.Interval <= 0 {
		return fmt.Errorf("%w: %d pages of %d bytes, interval %v", ErrProfile, p.Pages, p.PageSize, p.Interval)
	}
	for _, c := range p.Classes {
		if !(c.Pages >= 0) || !(c.Rate >= 0) || math.IsInf(c.Rate, 0) {
			return fmt.Errorf("%w: class %+v", ErrProfile, c)
		}
	}
	return nil
}

// Dirtied is the expected number of distinct pages dirtied over t of the
// guest's running time, from the fitted classes: the dirty set a round of
// length t leaves behind.
func (p Profile) Dirtied(t time.Duration) float64 {
	s := t.Seconds()
	var w float64
	for _, c := range p.Classes {
		w += c.Pages * -math.Expm1(-c.Rate*s)
	}
	return w
}

// Observe watches g for cfg.Window of clock's time and returns its
// profile. It syncs g's dirty log every cfg.Interval (waiting on clock, so
// that with a *livemig.VirtualClock the window passes in virtual time),
// counts in how many intervals each page was dirty, keeps copies of some
// dirtied pages to XBZRLE-encode them against their next version, and
// reads cfg.Samples random pages for zeros and LZ4. It reads g through
// livemig.Memory and livemig.DirtySource only; it clears g's dirty log.
func Observe(ctx context.Context, g Guest, clock livemig.Clock, cfg ObserveConfig) (Profile, error) {
	cfg, err := cfg.norm()
	if err != nil {
		return Profile{}, err
	}
	if clock == nil {
		clock = livemig.WallClock{}
	}
	ps, n := g.PageSize(), g.PageCount()
	if ps <= 0 || n == 0 {
		return Profile{}, fmt.Errorf("%w: guest of %d pages of %d bytes", ErrConfig, n, ps)
	}
	k := int(cfg.Window / cfg.Interval)
	p := Profile{PageSize: ps, Pages: n, Window: time.Duration(k) * cfg.Interval, Interval: cfg.Interval}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x6164766973657221))
	page := make([]byte, ps)

	// Content: zero pages and LZ4, on pages drawn at random.
	var enc codec.PageEncoder
	enc.LZ4 = true
	buf := make([]byte, 0, ps)
	zeros, lz4Sum, data := 0, 0.0, 0
	for range min(uint64(cfg.Samples), n) {
		if err := g.ReadPage(rng.Uint64N(n), page); err != nil {
			return Profile{}, fmt.Errorf("advisor: %w", err)
		}
		if codec.IsZero(page) {
			zeros++
			continue
		}
		_, b := enc.Encode(buf[:0], page) // the LZ4 block, or the page itself when LZ4 does not pay
		lz4Sum += float64(len(b))
		data++
	}
	p.Samples = zeros + data
	if p.Samples > 0 {
		p.ZeroShare = float64(zeros) / float64(p.Samples)
	}
	p.LZ4Bytes = float64(ps)
	if data > 0 {
		p.LZ4Bytes = lz4Sum / float64(data)
	}

	// Dirtying: k intervals.
	words := livemig.WordsFor(n)
	cur := make([]uint64, words)
	counts := make([]uint16, n)
	adjacent := make([]uint16, n) // per page, intervals in which its next page was dirty too
	// acc[l] accumulates the dirty pages of spans of 2^l intervals.
	levels := bits.Len(uint(k))
	acc := make([][]uint64, levels)
	growth := make([]float64, levels)
	spans := make([]int, levels)
	for l := range acc {
		acc[l] = make([]uint64, words)
	}
	ever := make([]uint64, words)
	var dirtySum, localSum, localDirty float64
	held := map[uint64][]byte{} // copies of dirtied pages, for deltas
	var deltaSum float64
	var deltaN, overflow, unchanged int
	var dbuf []byte
	if err := g.SyncDirty(cur); err != nil { // start clean
		return Profile{}, fmt.Errorf("advisor: %w", err)
	}
	start := clock.Now()
	for i := 1; i <= k; i++ {
		if err := clock.WaitUntil(ctx, start.Add(time.Duration(i)*cfg.Interval)); err != nil {
			return Profile{}, err
		}
		clear(cur)
		if err := g.SyncDirty(cur); err != nil {
			return Profile{}, fmt.Errorf("advisor: %w", err)
		}
		var dirty, adj int
		var picks []uint64
		for w, x := range cur {
			if x == 0 {
				continue
			}
			dirty += bits.OnesCount64(x)
			next := uint64(0)
			if w+1 < len(cur) {
				next = cur[w+1]
			}
			run := x & (x>>1 | next<<63)
			adj += bits.OnesCount64(run)
			for y := run; y != 0; y &= y - 1 {
				adjacent[uint64(w)*64+uint64(bits.TrailingZeros64(y))]++
			}
			ever[w] |= x
			for l := range acc {
				acc[l][w] |= x
			}
			for y := x; y != 0; y &= y - 1 {
				pg := uint64(w)*64 + uint64(bits.TrailingZeros64(y))
				counts[pg]++
				if _, ok := held[pg]; ok {
					picks = append(picks, pg)
				}
			}
		}
		dirtySum += float64(dirty)
		localSum += float64(adj)
		localDirty += float64(dirty)
		// Deltas: pages held since an earlier interval and dirty again.
		for _, pg := range picks {
			if err := g.ReadPage(pg, page); err != nil {
				return Profile{}, fmt.Errorf("advisor: %w", err)
			}
			d, err := delta.Encode(dbuf[:0], held[pg], page, ps)
			switch {
			case errors.Is(err, delta.ErrUnchanged):
				unchanged++
			case errors.Is(err, delta.ErrOverflow):
				overflow++
			case err != nil:
				return Profile{}, fmt.Errorf("advisor: delta of page %d: %w", pg, err)
			default:
				deltaSum += float64(len(d))
				dbuf = d
			}
			deltaN++
			copy(held[pg], page)
		}
		// Hold a few of this interval's dirty pages, drawn at random.
		if dirty > 0 && len(held) < cfg.DeltaPages {
			for range min(8, cfg.DeltaPages-len(held)) {
				set, _ := bitmap.FromWords(cur, n)
				pg := uint64(set.BitSet().Select(uint(rng.IntN(dirty))))
				if pg >= n {
					break
				}
				if _, dup := held[pg]; dup {
					continue
				}
				b := make([]byte, ps)
				if err := g.ReadPage(pg, b); err != nil {
					return Profile{}, fmt.Errorf("advisor: %w", err)
				}
				held[pg] = b
			}
		}
		for l := range acc {
			if i%(1<<l) == 0 {
				growth[l] += float64(bitmap.CountWords(acc[l]))
				spans[l]++
				clear(acc[l])
			}
		}
	}
	p.DirtyRate = dirtySum / float64(k) / cfg.Interval.Seconds()
	p.WorkingSet = bitmap.CountWords(ever)
	if localDirty > 0 {
		p.Locality = localSum / localDirty
	}
	for l := range growth {
		if spans[l] > 0 {
			p.Growth = append(p.Growth, GrowthPoint{Span: time.Duration(1<<l) * cfg.Interval, Pages: growth[l] / float64(spans[l])})
		}
	}
	if deltaN > 0 {
		p.DeltaSamples = deltaN
		if fit := deltaN - overflow - unchanged; fit > 0 {
			p.DeltaBytes = deltaSum / float64(fit)
		}
		p.DeltaOverflow = float64(overflow) / float64(deltaN)
		p.DeltaUnchanged = float64(unchanged) / float64(deltaN)
	}
	hist := make([]float64, k+1)
	seq := make([]float64, k+1) // adjacent marks of the pages of each count
	for i, c := range counts {
		hist[c]++
		seq[c] += float64(adjacent[i])
	}
	p.HotShare = hotShare(hist, n)
	p.Classes = fitClasses(hist, seq, cfg.Interval)
	cfg.Logger.Debug("advisor: profile", "dirty_rate", p.DirtyRate, "working_set", p.WorkingSet,
		"classes", p.Classes, "zero_share", p.ZeroShare, "lz4_bytes", p.LZ4Bytes, "delta_bytes", p.DeltaBytes)
	return p, nil
}

// hotShare is the share of dirty marks on the tenth of the pages with the
// most, from the histogram of marks per page.
func hotShare(hist []float64, pages uint64) float64 {
	var total float64
	for c, h := range hist {
		total += float64(c) * h
	}
	if total == 0 {
		return 0
	}
	room := float64(pages) / 10
	var top float64
	for c := len(hist) - 1; c > 0 && room > 0; c-- {
		take := min(hist[c], room)
		top += take * float64(c)
		room -= take
	}
	return top / total
}

// fitClasses fits a mixture of binomials to hist (hist[c] pages were dirty
// in c of len(hist)-1 intervals of length dt) by expectation-maximisation,
// and returns it as rate classes: a component dirty in an interval with
// probability q writes at -ln(1-q)/dt per second. seq[c] is how many of the
// marks of the pages dirty in c intervals were sequential; each class gets
// the share of its marks, by the fit's responsibilities.
func fitClasses(hist, seq []float64, dt time.Duration) []RateClass {
	k := len(hist) - 1
	var pages, marks float64
	for c, h := range hist {
		pages += h
		marks += float64(c) * h
	}
	if pages == 0 || marks == 0 {
		return []RateClass{{Pages: pages, Rate: 0}}
	}
	qMax := 1 - 1/(4*float64(k))
	qs := []float64{1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.6, qMax}
	ws := make([]float64, len(qs))
	for i := range ws {
		ws[i] = 1 / float64(len(qs))
	}
	resp := make([]float64, len(qs))
	for range 400 {
		sw := make([]float64, len(qs))
		sc := make([]float64, len(qs))
		for c, h := range hist {
			if h == 0 {
				continue
			}
			best := math.Inf(-1)
			for j, q := range qs {
				if ws[j] == 0 {
					resp[j] = math.Inf(-1)
					continue
				}
				resp[j] = math.Log(ws[j]) + float64(c)*math.Log(q) + float64(k-c)*math.Log1p(-q)
				best = max(best, resp[j])
			}
			var s float64
			for j := range resp {
				resp[j] = math.Exp(resp[j] - best)
				s += resp[j]
			}
			for j := range resp {
				r := h * resp[j] / s
				sw[j] += r
				sc[j] += r * float64(c)
			}
		}
		for j := range qs {
			ws[j] = sw[j] / pages
			if sw[j] > 0 {
				qs[j] = min(max(sc[j]/(sw[j]*float64(k)), 1e-9), qMax)
			}
		}
	}
	// The sequential share of each component's marks.
	seqMarks := make([]float64, len(qs))
	allMarks := make([]float64, len(qs))
	for c, h := range hist {
		if h == 0 || c == 0 {
			continue
		}
		best := math.Inf(-1)
		for j, q := range qs {
			resp[j] = math.Inf(-1)
			if ws[j] > 0 {
				resp[j] = math.Log(ws[j]) + float64(c)*math.Log(q) + float64(k-c)*math.Log1p(-q)
			}
			best = max(best, resp[j])
		}
		var sum float64
		for j := range resp {
			resp[j] = math.Exp(resp[j] - best)
			sum += resp[j]
		}
		for j := range resp {
			seqMarks[j] += seq[c] * resp[j] / sum
			allMarks[j] += h * float64(c) * resp[j] / sum
		}
	}
	var out []RateClass
	for j, q := range qs {
		if ws[j]*pages < 0.5 {
			continue
		}
		rc := RateClass{Pages: ws[j] * pages, Rate: -math.Log1p(-q) / dt.Seconds()}
		if allMarks[j] > 0 {
			rc.Sequential = min(seqMarks[j]/allMarks[j], 1)
		}
		out = append(out, rc)
	}
	slices.SortFunc(out, func(a, b RateClass) int { return cmp.Compare(b.Rate, a.Rate) })
	// Merge classes whose rates are within 10 %.
	merged := out[:0]
	for _, c := range out {
		if m := len(merged); m > 0 && math.Abs(merged[m-1].Rate-c.Rate) <= 0.1*merged[m-1].Rate {
			tot := merged[m-1].Pages + c.Pages
			merged[m-1].Rate = (merged[m-1].Rate*merged[m-1].Pages + c.Rate*c.Pages) / tot
			merged[m-1].Sequential = (merged[m-1].Sequential*merged[m-1].Pages + c.Sequential*c.Pages) / tot
			merged[m-1].Pages = tot
			continue
		}
		merged = append(merged, c)
	}
	return merged
}

package sim

import (
	"fmt"
	"math"
	"math/bits"
	"strings"
	"time"
)

// Env is what a workload knows of the guest it runs in.
type Env struct {
	Pages uint64 // the guest's page count
	Seed  uint64 // the workload's seed, drawn from the guest's
}

// WriteFunc applies one write: page is below Env.Pages; whole says the
// write rewrites the whole page rather than a few words of it.
type WriteFunc func(page uint64, whole bool)

// Workload writes a guest's pages as the guest runs.
//
// Writes calls write once per write the guest makes while its running time
// (the time it has run unpaused, scaled by any throttle, counted from the
// guest's creation) goes from from (exclusive) to to (inclusive). The guest
// calls Writes from one goroutine at a time, with consecutive intervals:
// each call's from is the previous call's to, and the first from is 0.
// Writes must not retain write, and runs under the guest's lock, so it
// must not call the guest's methods. Its cost is linear in the writes it
// emits (about 15 ns each with the guest's bookkeeping): a rate of 10^9
// pages/s over an hour of guest time is a long simulation.
//
// For a simulation to be exact a workload must be deterministic in its Env,
// and should emit the same writes for an interval whatever way the guest
// splits it into calls. Every workload of this package places write k at a
// fixed instant and draws its page from (Seed, k), so it keeps no state and
// meets both rules.
type Workload interface {
	// Name describes the workload and its parameters.
	Name() string
	// Check returns an error if the workload does not fit a guest of pages
	// pages (a range past the end, a negative rate).
	Check(pages uint64) error
	// Writes emits the writes of the interval (from, to].
	Writes(e Env, from, to time.Duration, write WriteFunc)
}

// maxRate bounds a workload's rate, in pages per second.
const maxRate = 1e12

// rate is a write rate held as an integer number of writes per 10^15 ns
// (micro-writes per second), so that the count of writes by time t is an
// exact integer function of t and totals never drift.
type rate struct {
	micro uint64
}

func newRate(pps float64) rate { return rate{micro: uint64(math.Round(pps * 1e6))} }

func checkRate(pps float64) error {
	if math.IsNaN(pps) || pps < 0 || pps > maxRate {
		return fmt.Errorf("%w: rate %v not in 0..%g pages/s", ErrConfig, pps, float64(maxRate))
	}
	return nil
}

// count is the number of writes made by guest time t: floor(t·rate).
func (r rate) count(t time.Duration) uint64 {
	if t <= 0 || r.micro == 0 {
		return 0
	}
	const den = 1e15
	hi, lo := bits.Mul64(uint64(t), r.micro)
	if hi >= den {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, den)
	return q
}

// span is the range of write indexes [a, b) in the interval (from, to].
func (r rate) span(from, to time.Duration) (uint64, uint64) {
	return r.count(from), r.count(to)
}

func rateName(pps float64) string { return fmt.Sprintf("%g/s", pps) }

func kind(whole bool) string {
	if whole {
		return "whole"
	}
	return "words"
}

// draw is the k-th uniform 64-bit value of a stream seeded with seed.
func draw(seed, k uint64) uint64 { return mix(seed ^ mix(k)) }

type idle struct{}

// Idle is a guest that writes nothing.
func Idle() Workload { return idle{} }

func (idle) Name() string                                        { return "idle" }
func (idle) Check(uint64) error                                  { return nil }
func (idle) Writes(Env, time.Duration, time.Duration, WriteFunc) {}

type uniform struct {
	pps   float64
	r     rate
	whole bool
}

// Uniform writes pages chosen uniformly at random over the whole guest at
// pps pages per second of guest time: by guest time t it has made exactly
// floor(t·pps) writes (pps is kept to a millionth of a page per second).
// whole says whether each write rewrites the whole page or a few words.
func Uniform(pps float64, whole bool) Workload {
	return uniform{pps: pps, r: newRate(pps), whole: whole}
}

func (u uniform) Name() string             { return "uniform(" + rateName(u.pps) + ", " + kind(u.whole) + ")" }
func (u uniform) Check(pages uint64) error { return checkRate(u.pps) }
func (u uniform) Writes(e Env, from, to time.Duration, write WriteFunc) {
	a, b := u.r.span(from, to)
	for k := a; k < b; k++ {
		write(reduce(draw(e.Seed, k), e.Pages), u.whole)
	}
}

type hotCold struct {
	pps   float64
	r     rate
	hot   uint64
	frac  float64
	thr   threshold
	whole bool
}

// HotCold writes pps pages per second of guest time (exactly floor(t·pps)
// by guest time t), a share hotFraction of them (each write drawn
// independently) to a working set of hotPages consecutive pages and the
// rest uniformly to the other pages; this is the shape that makes pre-copy
// resend the same pages round after round. The working set starts at a page
// drawn from the seed, so it is the same for the same seed. hotPages must
// not exceed the guest's pages; hotFraction is in [0,1]. If the working set
// is the whole guest every write goes to it.
func HotCold(pps float64, hotPages uint64, hotFraction float64, whole bool) Workload {
	return hotCold{pps: pps, r: newRate(pps), hot: hotPages, frac: hotFraction, thr: newThreshold(hotFraction), whole: whole}
}

func (h hotCold) Name() string {
	return fmt.Sprintf("hotcold(%s, %d hot pages, %g hot, %s)", rateName(h.pps), h.hot, h.frac, kind(h.whole))
}

func (h hotCold) Check(pages uint64) error {
	if err := checkRate(h.pps); err != nil {
		return err
	}
	if math.IsNaN(h.frac) || h.frac < 0 || h.frac > 1 {
		return fmt.Errorf("%w: hot fraction %v not in [0,1]", ErrConfig, h.frac)
	}
	if h.hot > pages || (h.hot == 0 && h.frac > 0) {
		return fmt.Errorf("%w: %d hot pages in a guest of %d pages", ErrConfig, h.hot, pages)
	}
	return nil
}

// start is the first page of the working set.
func (h hotCold) start(e Env) uint64 {
	return reduce(mix(e.Seed^0x686f74), e.Pages-h.hot+1)
}

func (h hotCold) Writes(e Env, from, to time.Duration, write WriteFunc) {
	a, b := h.r.span(from, to)
	start, cold := h.start(e), e.Pages-h.hot
	for k := a; k < b; k++ {
		r := draw(e.Seed, k)
		if cold == 0 || h.thr.hit(r) {
			write(start+reduce(mix(r), h.hot), h.whole)
			continue
		}
		p := reduce(mix(r), cold)
		if p >= start {
			p += h.hot
		}
		write(p, h.whole)
	}
}

type sequential struct {
	pps           float64
	r             rate
	start, length uint64
	whole         bool
}

// Sequential walks the buffer of length pages starting at page start, one
// page after the other and back to its start at the end, at pps pages per
// second of guest time: a streaming server filling a video buffer, a copy,
// a scan. Write k (counting from 0) goes to page start + k mod length.
func Sequential(pps float64, start, length uint64, whole bool) Workload {
	return sequential{pps: pps, r: newRate(pps), start: start, length: length, whole: whole}
}

func (s sequential) Name() string {
	return fmt.Sprintf("sequential(%s, pages %d+%d, %s)", rateName(s.pps), s.start, s.length, kind(s.whole))
}

func (s sequential) Check(pages uint64) error {
	if err := checkRate(s.pps); err != nil {
		return err
	}
	if s.length == 0 || s.start >= pages || s.length > pages-s.start {
		return fmt.Errorf("%w: buffer of %d pages at page %d in a guest of %d pages", ErrConfig, s.length, s.start, pages)
	}
	return nil
}

func (s sequential) Writes(e Env, from, to time.Duration, write WriteFunc) {
	a, b := s.r.span(from, to)
	if a == b {
		return
	}
	p := a % s.length
	for k := a; k < b; k++ {
		write(s.start+p, s.whole)
		if p++; p == s.length {
			p = 0
		}
	}
}

type mixture []Workload

// Mix runs several workloads at once; each gets a seed of its own, drawn
// from the guest's and its position in parts.
func Mix(parts ...Workload) Workload { return mixture(append([]Workload(nil), parts...)) }

func (m mixture) Name() string {
	names := make([]string, len(m))
	for i, w := range m {
		names[i] = "nil"
		if w != nil {
			names[i] = w.Name()
		}
	}
	return "mix(" + strings.Join(names, ", ") + ")"
}

func (m mixture) Check(pages uint64) error {
	for i, w := range m {
		if w == nil {
			return fmt.Errorf("%w: mix part %d is nil", ErrConfig, i)
		}
		if err := w.Check(pages); err != nil {
			return fmt.Errorf("mix part %d: %w", i, err)
		}
	}
	return nil
}

func (m mixture) Writes(e Env, from, to time.Duration, write WriteFunc) {
	for i, w := range m {
		w.Writes(Env{Pages: e.Pages, Seed: mix(e.Seed ^ uint64(i+1)*golden)}, from, to, write)
	}
}

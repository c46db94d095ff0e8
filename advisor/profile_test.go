package advisor

import (
	"context"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/sim"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// observe profiles a fresh simulated guest of pages pages under w, in
// virtual time.
func observe(t *testing.T, pages uint64, w sim.Workload, cfg ObserveConfig) Profile {
	t.Helper()
	clock := livemig.NewVirtualClock()
	g, err := sim.NewGuest(sim.GuestConfig{Pages: pages, Seed: 7}, w, clock)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Observe(context.Background(), g, clock, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func within(t *testing.T, what string, got, want, frac float64) {
	t.Helper()
	if math.Abs(got-want) > frac*math.Abs(want) {
		t.Errorf("%s = %.4g, want %.4g ± %.0f%%", what, got, want, 100*frac)
	}
}

// On a uniform workload the fitted classes give the working set of any
// span, past the window too: N(1-exp(-r·t/N)).
func TestObserveUniform(t *testing.T) {
	const pages, rate = 16384, 4000.0
	p := observe(t, pages, sim.Uniform(rate, false), ObserveConfig{})
	for _, span := range []time.Duration{100 * time.Millisecond, time.Second, 2 * time.Second, 10 * time.Second} {
		want := pages * -math.Expm1(-rate*span.Seconds()/pages)
		within(t, "Dirtied("+span.String()+")", p.Dirtied(span), want, 0.08)
	}
	within(t, "DirtyRate", p.DirtyRate, rate, 0.05)
	within(t, "ZeroShare", p.ZeroShare, sim.DefaultZeroFraction, 0.25)
	if r := p.LZ4Ratio(); r < 1.3 {
		t.Errorf("LZ4 ratio %.2f on the simulator's pages, which compress about 2x", r)
	}
	if p.DeltaSamples < 50 || p.DeltaOverflow != 0 || p.DeltaBytes <= 0 || p.DeltaBytes > 128 {
		t.Errorf("a few words per write: %d delta samples, %.0f bytes, %.0f%% overflow", p.DeltaSamples, p.DeltaBytes, 100*p.DeltaOverflow)
	}
	if p.HotShare > 0.5 { // sampling noise: the tenth with 2+ marks of ~1
		t.Errorf("uniform writes, hot share %.2f", p.HotShare)
	}
	if len(p.Growth) == 0 || p.Growth[len(p.Growth)-1].Pages < p.Growth[0].Pages {
		t.Errorf("growth %v", p.Growth)
	}
}

// A hot set shows as a fast class of about its size and a concentrated
// share of the dirtying; whole-page writes overflow XBZRLE.
func TestObserveHotCold(t *testing.T) {
	const pages, hot = 32768, 1024
	p := observe(t, pages, sim.HotCold(20000, hot, 0.95, true), ObserveConfig{Seed: 3, Samples: 128})
	if p.HotShare < 0.8 {
		t.Errorf("hot share %.2f, want most dirtying on the hot set", p.HotShare)
	}
	if p.DeltaOverflow < 0.9 {
		t.Errorf("whole-page writes: delta overflow %.2f", p.DeltaOverflow)
	}
	// The hot set is dirty in full after a second; the cold pages after
	// 30 s: 1000 writes/s over 31,744 pages.
	within(t, "Dirtied(1s)", p.Dirtied(time.Second), hot+31744*-math.Expm1(-1000.0/31744), 0.1)
	within(t, "Dirtied(30s)", p.Dirtied(30*time.Second), hot+31744*-math.Expm1(-30*1000.0/31744), 0.15)
	var fast float64
	for _, c := range p.Classes {
		if c.Rate > 5 {
			fast += c.Pages
		}
	}
	within(t, "pages in fast classes", fast, hot, 0.15)
}

func TestObserveIdle(t *testing.T) {
	p := observe(t, 4096, sim.Idle(), ObserveConfig{Window: 200 * time.Millisecond, Samples: 64})
	if p.DirtyRate != 0 || p.WorkingSet != 0 || p.Dirtied(time.Hour) != 0 {
		t.Errorf("idle guest: %+v", p)
	}
}

func TestObserveDeterministic(t *testing.T) {
	w := sim.Mix(sim.HotCold(5000, 512, 0.9, false), sim.Sequential(2000, 4096, 2048, true))
	a := observe(t, 16384, w, ObserveConfig{Seed: 9, Samples: 128})
	b := observe(t, 16384, w, ObserveConfig{Seed: 9, Samples: 128})
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two profiles differ:\n%+v\n%+v", a, b)
	}
	if a.Locality < 0.2 {
		t.Errorf("a sequential writer's pages are consecutive: locality %.2f", a.Locality)
	}
}

func TestObserveErrors(t *testing.T) {
	clock := livemig.NewVirtualClock()
	g, err := sim.NewGuest(sim.GuestConfig{Pages: 64}, nil, clock)
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []ObserveConfig{
		{Window: time.Second, Interval: time.Second},
		{Window: time.Hour, Interval: time.Millisecond},
		{Interval: -1},
		{Samples: -1},
	} {
		if _, err := Observe(context.Background(), g, clock, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: error %v, want ErrConfig", cfg, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Observe(ctx, g, clock, ObserveConfig{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

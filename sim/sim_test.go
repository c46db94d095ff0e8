package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// newGuest returns a guest on a fresh virtual clock, failing the test on
// error.
func newGuest(t testing.TB, cfg GuestConfig, w Workload) (*Guest, *livemig.VirtualClock) {
	t.Helper()
	clock := livemig.NewVirtualClock()
	g, err := NewGuest(cfg, w, clock)
	if err != nil {
		t.Fatal(err)
	}
	return g, clock
}

func readPage(t testing.TB, m livemig.Memory, n uint64) []byte {
	t.Helper()
	b := make([]byte, m.PageSize())
	if err := m.ReadPage(n, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// wordsDiffer counts the 8-byte words in which a and b differ.
func wordsDiffer(a, b []byte) int {
	c := 0
	for i := 0; i+8 <= len(a); i += 8 {
		if binary.LittleEndian.Uint64(a[i:]) != binary.LittleEndian.Uint64(b[i:]) {
			c++
		}
	}
	return c
}

func TestConfigErrors(t *testing.T) {
	bad := []GuestConfig{
		{},
		{Pages: MaxPages + 1},
		{Pages: 8, PageSize: 100},
		{Pages: 8, PageSize: 32},
		{Pages: 8, PageSize: MaxPageSize * 2},
		{Pages: 8, ZeroFraction: 1.5},
		{Pages: 8, Entropy: 2},
		{Pages: 8, PageSize: 64, WriteWords: 7},
		{Pages: 8, StateSize: 40},
		{Pages: 8, StateSize: 1001},
		{Pages: 8, StateSize: MaxStateSize + 8},
	}
	for _, c := range bad {
		if _, err := NewGuest(c, nil, nil); !errors.Is(err, ErrConfig) {
			t.Errorf("NewGuest(%+v): got %v, want ErrConfig", c, err)
		}
		if _, err := NewSink(c); !errors.Is(err, ErrConfig) {
			t.Errorf("NewSink(%+v): got %v, want ErrConfig", c, err)
		}
	}
	badW := []Workload{
		Uniform(-1, false),
		Uniform(2e12, false),
		HotCold(10, 200, 0.5, false),
		HotCold(10, 0, 0.5, false),
		HotCold(10, 10, 1.5, false),
		Sequential(10, 90, 20, false),
		Sequential(10, 0, 0, false),
		Mix(Idle(), nil),
		Mix(Uniform(1, false), Sequential(1, 100, 1, false)),
	}
	for _, w := range badW {
		if _, err := NewGuest(GuestConfig{Pages: 100}, w, nil); !errors.Is(err, ErrConfig) {
			t.Errorf("NewGuest with %s: got %v, want ErrConfig", w.Name(), err)
		}
	}
	g, err := NewGuest(GuestConfig{Pages: 8, ZeroFraction: -1, Entropy: -1, WriteWords: -1, StateSize: -1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := g.Config(); c.ZeroFraction != -1 || c.Entropy != -1 || c.WriteWords != -1 || c.StateSize != -1 || c.PageSize != 4096 {
		t.Errorf("negative knobs normalized to %+v, want -1 and PageSize 4096", c)
	}
	if s, err := NewSink(g.Config()); err != nil || s.Config() != g.Config() {
		t.Errorf("NewSink(g.Config()) changed the configuration: %+v, %v", s.Config(), err)
	}
}

func TestReadPageErrors(t *testing.T) {
	g, _ := newGuest(t, GuestConfig{Pages: 10}, nil)
	var pe *livemig.PageError
	if err := g.ReadPage(10, make([]byte, 4096)); !errors.Is(err, livemig.ErrPageRange) || !errors.As(err, &pe) || pe.Page != 10 {
		t.Errorf("ReadPage(10): %v", err)
	}
	if err := g.ReadPage(1, make([]byte, 4095)); !errors.Is(err, ErrBufferSize) {
		t.Errorf("ReadPage with a short buffer: %v", err)
	}
	if err := g.SyncDirty(nil); !errors.Is(err, ErrBufferSize) {
		t.Errorf("SyncDirty(nil): %v", err)
	}
	if err := g.PeekDirty(nil); !errors.Is(err, ErrBufferSize) {
		t.Errorf("PeekDirty(nil): %v", err)
	}
	if err := g.Write(10, false); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("Write(10): %v", err)
	}
	if _, err := g.Page(10); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("Page(10): %v", err)
	}
}

func TestContents(t *testing.T) {
	g, _ := newGuest(t, GuestConfig{Pages: 4096, Seed: 9}, nil)
	zero := make([]byte, 4096)
	zeros := 0
	for n := uint64(0); n < 4096; n++ {
		p := readPage(t, g, n)
		if bytes.Equal(p, zero) {
			zeros++
			if !g.lay.zeroClass(n) {
				t.Fatalf("page %d is all zeros but not of the zero class", n)
			}
		}
		q := readPage(t, g, n)
		if !bytes.Equal(p, q) {
			t.Fatalf("page %d read twice differs", n)
		}
	}
	// 25% ± 3 sd of a binomial over 4096 pages.
	if zeros < 950 || zeros > 1100 {
		t.Errorf("%d of 4096 pages are zero, want about 1024", zeros)
	}
	// Different seeds give different pages.
	h, _ := newGuest(t, GuestConfig{Pages: 4096, Seed: 10, ZeroFraction: -1}, nil)
	if bytes.Equal(readPage(t, g, 7), readPage(t, h, 7)) && !bytes.Equal(readPage(t, g, 7), zero) {
		t.Error("seeds 9 and 10 give the same page 7")
	}
}

func TestWriteWordsAndWhole(t *testing.T) {
	for _, cfg := range []GuestConfig{
		{Pages: 64, Seed: 1},
		{Pages: 64, Seed: 2, PageSize: 64, WriteWords: 6},
		{Pages: 64, Seed: 3, ZeroFraction: 1, WriteWords: 5},
	} {
		g, _ := newGuest(t, cfg, nil)
		c := g.Config()
		for n := uint64(0); n < 64; n++ {
			prev := readPage(t, g, n)
			for i := 0; i < 3; i++ {
				if err := g.Write(n, false); err != nil {
					t.Fatal(err)
				}
				cur := readPage(t, g, n)
				d := wordsDiffer(prev, cur)
				// A page leaving the zero state gets its header too.
				limit := c.WriteWords + 1
				if i == 0 && bytes.Equal(prev, make([]byte, len(prev))) {
					limit++
				}
				if d == 0 || d > limit {
					t.Fatalf("%+v: few-words write %d of page %d changed %d words, want 1..%d", c, i, n, d, limit)
				}
				prev = cur
			}
			if err := g.Write(n, true); err != nil {
				t.Fatal(err)
			}
			cur := readPage(t, g, n)
			if d, words := wordsDiffer(prev, cur), c.PageSize/8; d < words*9/10 {
				t.Fatalf("%+v: whole write of page %d changed %d of %d words", c, n, d, words)
			}
		}
		st := g.Stats()
		if st.Writes != 64*4 || st.WholeWrites != 64 || st.PagesWritten != 64 {
			t.Errorf("stats %+v, want 256 writes, 64 whole, 64 pages", st)
		}
	}
}

func TestVersionWrap(t *testing.T) {
	g, _ := newGuest(t, GuestConfig{Pages: 1}, nil)
	g.state[0] = PageState{Version: ^uint32(0), Generation: 5}.pack()
	if err := g.Write(0, false); err != nil {
		t.Fatal(err)
	}
	if s, _ := g.Page(0); s != (PageState{Version: 1, Generation: 5}) {
		t.Errorf("after wrap: %v, want v1/g5", s)
	}
}

func TestRates(t *testing.T) {
	const pages = 1 << 16
	cases := []struct {
		w    Workload
		want uint64 // writes in 10 s
	}{
		{Idle(), 0},
		{Uniform(10000, false), 100000},
		{Uniform(0.25, false), 2},
		{Uniform(333.3333, true), 3333},
		{HotCold(5000, 1000, 0.9, false), 50000},
		{Sequential(1234.5, 100, 1000, true), 12345},
		{Mix(Uniform(1000, false), Sequential(500, 0, 10, false)), 15000},
	}
	for _, c := range cases {
		g, clock := newGuest(t, GuestConfig{Pages: pages, Seed: 4}, c.w)
		// Uneven steps: the total must not depend on them.
		for i := 1; i <= 100; i++ {
			clock.Advance(time.Duration(i%7+1) * 7 * time.Millisecond)
			g.Advance()
		}
		clock.AdvanceTo(livemig.VirtualEpoch.Add(10 * time.Second))
		st := g.Stats()
		if st.Writes != c.want {
			t.Errorf("%s: %d writes in 10 s, want %d", c.w.Name(), st.Writes, c.want)
		}
		if st.RunTime != 10*time.Second || st.Dropped != 0 {
			t.Errorf("%s: run time %v, dropped %d", c.w.Name(), st.RunTime, st.Dropped)
		}
	}
}

func TestHotColdShare(t *testing.T) {
	const pages, hot = 1 << 16, 2048
	w := HotCold(100000, hot, 0.8, false)
	g, clock := newGuest(t, GuestConfig{Pages: pages, Seed: 5}, w)
	clock.Advance(time.Second)
	snap := g.Snapshot()
	start := w.(hotCold).start(g.env)
	var inHot, total uint64
	for n, s := range snap {
		total += uint64(s.Version)
		if uint64(n) >= start && uint64(n) < start+hot {
			inHot += uint64(s.Version)
		}
	}
	if total != 100000 {
		t.Fatalf("%d writes, want 100000", total)
	}
	share := float64(inHot) / float64(total)
	// 0.8 ± 7 standard deviations of a binomial over 1e5 writes.
	if share < 0.79 || share > 0.81 {
		t.Errorf("hot share %.4f, want 0.8±0.01", share)
	}
	if start == 0 {
		t.Log("hot set starts at page 0 for this seed")
	}
}

func TestSequentialWalk(t *testing.T) {
	g, clock := newGuest(t, GuestConfig{Pages: 1000, Seed: 6}, Sequential(1000, 100, 300, false))
	clock.Advance(time.Second) // 1000 writes: 3 full passes and 100 pages more
	for n, s := range g.Snapshot() {
		want := uint32(0)
		switch {
		case n >= 100 && n < 200:
			want = 4
		case n >= 200 && n < 400:
			want = 3
		}
		if s.Version != want {
			t.Fatalf("page %d written %d times, want %d", n, s.Version, want)
		}
	}
}

func dirty(t testing.TB, g *Guest) []uint64 {
	t.Helper()
	d := make([]uint64, livemig.WordsFor(g.PageCount()))
	if err := g.SyncDirty(d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDeterminism(t *testing.T) {
	w := Mix(HotCold(20000, 500, 0.7, false), Uniform(3000, true), Sequential(2000, 9000, 800, true))
	cfg := GuestConfig{Pages: 10000, Seed: 77}
	run := func(steps []time.Duration) ([][]uint64, []PageState, []byte) {
		g, clock := newGuest(t, cfg, w)
		var syncs [][]uint64
		for i, d := range steps {
			clock.Advance(d)
			switch i % 3 {
			case 0:
				syncs = append(syncs, dirty(t, g))
			case 1:
				g.SetThrottle(0.3)
			case 2:
				g.SetThrottle(0)
			}
		}
		st, err := g.SaveState(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return syncs, g.Snapshot(), st
	}
	steps := []time.Duration{3 * time.Millisecond, 170 * time.Millisecond, time.Second, 1, 999 * time.Microsecond, 42 * time.Millisecond, time.Second / 3, 5 * time.Millisecond, 2 * time.Second}
	s1, p1, st1 := run(steps)
	s2, p2, st2 := run(steps)
	for i := range s1 {
		for j := range s1[i] {
			if s1[i][j] != s2[i][j] {
				t.Fatalf("sync %d word %d differs between identical runs", i, j)
			}
		}
	}
	for n := range p1 {
		if p1[n] != p2[n] {
			t.Fatalf("page %d: %v vs %v between identical runs", n, p1[n], p2[n])
		}
	}
	if !bytes.Equal(st1, st2) {
		t.Fatal("states differ between identical runs")
	}
	// Observing in other steps (without throttle changes) leaves the same
	// guest behind.
	a, ca := newGuest(t, cfg, w)
	b, cb := newGuest(t, cfg, w)
	for i := 0; i < 500; i++ {
		ca.Advance(time.Duration(i%13+1) * time.Millisecond)
		if i%5 == 0 {
			dirty(t, a)
		}
	}
	cb.AdvanceTo(ca.Now())
	pa, pb := a.Snapshot(), b.Snapshot()
	for n := range pa {
		if pa[n] != pb[n] {
			t.Fatalf("page %d: %v observed often, %v observed once", n, pa[n], pb[n])
		}
	}
}

func TestDirtyLog(t *testing.T) {
	g, clock := newGuest(t, GuestConfig{Pages: 1000, Seed: 8}, Uniform(500, false))
	clock.Advance(time.Second)
	peek := make([]uint64, livemig.WordsFor(1000))
	if err := g.PeekDirty(peek); err != nil {
		t.Fatal(err)
	}
	d := dirty(t, g)
	var set uint64
	for i := range d {
		if d[i] != peek[i] {
			t.Fatalf("peek and sync differ at word %d", i)
		}
		for w := d[i]; w != 0; w &= w - 1 {
			set++
		}
	}
	snap := g.Snapshot()
	var written uint64
	for n, s := range snap {
		if s.Version > 0 {
			written++
			if !bitmap.Words(d).Test(uint64(n)) {
				t.Fatalf("page %d written but not dirty", n)
			}
		}
	}
	if set != written || set != g.Stats().PagesWritten {
		t.Errorf("%d dirty bits, %d pages written", set, written)
	}
	for _, w := range dirty(t, g) {
		if w != 0 {
			t.Fatal("a second sync with no time passed reported pages")
		}
	}
}

func TestPauseAndThrottle(t *testing.T) {
	g, clock := newGuest(t, GuestConfig{Pages: 1 << 14, Seed: 2}, Uniform(10000, false))
	ctx := context.Background()
	clock.Advance(time.Second)
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if w := g.Stats().Writes; w != 10000 {
		t.Fatalf("%d writes before the pause, want 10000", w)
	}
	dirty(t, g)
	clock.Advance(10 * time.Second)
	if st := g.Stats(); st.Writes != 10000 || !st.Paused || st.RunTime != time.Second {
		t.Fatalf("paused guest: %+v", st)
	}
	for _, w := range dirty(t, g) {
		if w != 0 {
			t.Fatal("a paused guest dirtied pages")
		}
	}
	if err := g.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if w := g.Stats().Writes; w != 10000 {
		t.Fatalf("resuming made %d writes for the paused time", w-10000)
	}
	clock.Advance(time.Second)
	if w := g.Stats().Writes; w != 20000 {
		t.Fatalf("%d writes after 1 s more, want 20000", w)
	}
	g.SetThrottle(0.5)
	clock.Advance(10 * time.Second)
	if st := g.Stats(); st.Writes != 70000 || st.Throttle != 0.5 {
		t.Fatalf("throttled 0.5 for 10 s: %d writes (throttle %v), want 70000", st.Writes, st.Throttle)
	}
	g.SetThrottle(0.9)
	for i := 0; i < 1000; i++ { // uneven steps, fractions of a nanosecond carried
		clock.Advance(time.Duration(7*i%13+1) * 1001 * time.Microsecond)
		g.Advance()
	}
	st := g.Stats()
	var total time.Duration
	for i := 0; i < 1000; i++ {
		total += time.Duration(7*i%13+1) * 1001 * time.Microsecond
	}
	want := time.Second + time.Second + 5*time.Second + total/10
	if d := st.RunTime - want; d < -1 || d > 1 {
		t.Errorf("run time %v, want %v±1ns", st.RunTime, want)
	}
	g.SetThrottle(1)
	before := g.Stats().Writes
	clock.Advance(time.Hour)
	if w := g.Stats().Writes; w != before {
		t.Errorf("a fully throttled guest wrote %d pages", w-before)
	}
	g.SetThrottle(-3)
	if th := g.Stats().Throttle; th != 0 {
		t.Errorf("throttle -3 gave %v, want 0", th)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := g.Pause(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Pause with a cancelled context: %v", err)
	}
	if g.Paused() {
		t.Error("a cancelled Pause paused the guest")
	}
}

func TestState(t *testing.T) {
	ctx := context.Background()
	g, clock := newGuest(t, GuestConfig{Pages: 100, Seed: 3, StateSize: 4096}, Uniform(100, false))
	s1, err := g.SaveState(ctx, []byte("prefix"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != 6+4096 || string(s1[:6]) != "prefix" {
		t.Fatalf("SaveState appended %d bytes", len(s1)-6)
	}
	s1 = s1[6:]
	if err := g.LoadState(ctx, s1); err != nil {
		t.Fatalf("LoadState of its own state: %v", err)
	}
	clock.Advance(time.Second)
	s2, _ := g.SaveState(ctx, nil)
	if bytes.Equal(s1, s2) {
		t.Error("the state did not change as the guest ran")
	}
	for _, off := range []int{0, 9, 17, 30, 39, 40, 2000, 4095} {
		bad := append([]byte(nil), s2...)
		bad[off] ^= 0x10
		if err := g.LoadState(ctx, bad); !errors.Is(err, livemig.ErrCorrupt) {
			t.Errorf("LoadState with byte %d changed: %v", off, err)
		}
	}
	if err := g.LoadState(ctx, s2[:100]); !errors.Is(err, livemig.ErrCorrupt) {
		t.Errorf("LoadState of a short state: %v", err)
	}
	h, _ := newGuest(t, GuestConfig{Pages: 100, Seed: 4, StateSize: 4096}, nil)
	if err := h.LoadState(ctx, s2); !errors.Is(err, livemig.ErrCorrupt) {
		t.Errorf("LoadState of another seed's state: %v", err)
	}
	e, _ := newGuest(t, GuestConfig{Pages: 100, StateSize: -1}, nil)
	if s, _ := e.SaveState(ctx, []byte("x")); string(s) != "x" {
		t.Errorf("a guest without state appended %q", s[1:])
	}
	if err := e.LoadState(ctx, nil); err != nil {
		t.Errorf("LoadState(nil) without state: %v", err)
	}
}

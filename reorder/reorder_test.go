package reorder

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/livemig/livemig/bitmap"
)

// bm builds a bitmap of pages pages with the given pages set.
func bm(pages uint64, set ...uint64) []uint64 {
	w := make([]uint64, (pages+63)/64)
	for _, p := range set {
		bitmap.Words(w).Set(p)
	}
	return w
}

func TestFrequencyPinnedOrder(t *testing.T) {
	cases := []struct {
		name  string
		pages uint64
		cfg   FrequencyConfig
		syncs [][]uint64
		plan  []uint64 // dirty set for Plan
		want  []uint64
	}{
		{
			// counts: 1→1, 3→3, 5→1, 6→0. Count 0 first, then by rising
			// count, ties by page number.
			name: "issue example", pages: 8,
			syncs: [][]uint64{{1, 3}, {3}, {3, 5}},
			plan:  []uint64{1, 3, 5, 6},
			want:  []uint64{6, 1, 5, 3},
		},
		{
			name: "no history is ascending", pages: 200,
			plan: []uint64{199, 0, 64, 63, 128, 5},
			want: []uint64{0, 5, 63, 64, 128, 199},
		},
		{
			// Across words and groups of 8: 130 dirtied 3 times, 2 twice,
			// 70 once; 1 and 199 never.
			name: "across words", pages: 200,
			syncs: [][]uint64{{130, 2, 70}, {130, 2}, {130}},
			plan:  []uint64{1, 2, 70, 130, 199},
			want:  []uint64{1, 199, 70, 2, 130},
		},
		{
			// 4 was hot long ago, 7 recently. Without aging 4 (count 4)
			// goes after 7 (count 2).
			name: "old hot page without aging", pages: 8,
			syncs: [][]uint64{{4}, {4}, {4}, {4}, {7}, {7}},
			plan:  []uint64{0, 4, 7},
			want:  []uint64{0, 7, 4},
		},
		{
			// The same history halved after every 2 syncs: 4 counts
			// 1, 2→1, 2, 3→1, 1, 1→0; 7 counts 1, 2→1. 4 fades before 7.
			name: "old hot page fades with aging", pages: 8, cfg: FrequencyConfig{HalveEvery: 2},
			syncs: [][]uint64{{4}, {4}, {4}, {4}, {7}, {7}},
			plan:  []uint64{0, 4, 7},
			want:  []uint64{0, 4, 7},
		},
		{
			// A tie on count is broken by page number.
			name: "tie", pages: 8,
			syncs: [][]uint64{{6, 2}, {2, 6}},
			plan:  []uint64{6, 2},
			want:  []uint64{2, 6},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFrequency(tc.pages, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.syncs {
				f.Observe(bm(tc.pages, s...))
			}
			got := f.Plan(nil, bm(tc.pages, tc.plan...))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Plan = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAgingCounts(t *testing.T) {
	f, err := NewFrequency(8, FrequencyConfig{HalveEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	hot := bm(8, 5)
	var got []uint8
	for range 9 {
		f.Observe(hot)
		got = append(got, f.Count(5))
	}
	// +1 per sync, halved after every 3rd: 1 2 3→1, 2 3 4→2, 3 4 5→2.
	want := []uint8{1, 2, 1, 2, 3, 2, 3, 4, 2}
	if !slices.Equal(got, want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	// Steady state of a page dirtied every sync stays near HalveEvery.
	for range 300 {
		f.Observe(hot)
	}
	if c := f.Count(5); c > 2*3 {
		t.Fatalf("steady count %d", c)
	}
	f.Reset()
	if f.Count(5) != 0 {
		t.Fatal("Reset kept history")
	}
}

func TestSaturation(t *testing.T) {
	const pages = 130
	f, _ := NewFrequency(pages, FrequencyConfig{})
	all := make([]uint64, 3)
	for i := range all {
		all[i] = ^uint64(0)
	}
	for range 300 {
		f.Observe(all)
	}
	for p := range uint64(pages) {
		if c := f.Count(p); c != MaxCount {
			t.Fatalf("page %d count %d, want %d", p, c, MaxCount)
		}
	}
	// Bits past the page count were ignored.
	if f.Count(pages) != 0 || f.Count(200) != 0 {
		t.Fatal("count past the guest")
	}
	// A page one below the maximum reaches it; its neighbour at the
	// maximum does not wrap.
	g, _ := NewFrequency(16, FrequencyConfig{})
	for range MaxCount - 1 {
		g.Observe(bm(16, 9))
	}
	for range MaxCount + 5 {
		g.Observe(bm(16, 10))
	}
	g.Observe(bm(16, 9, 10, 11))
	if g.Count(9) != MaxCount || g.Count(10) != MaxCount || g.Count(11) != 1 || g.Count(8) != 0 {
		t.Fatalf("counts %d %d %d %d", g.Count(8), g.Count(9), g.Count(10), g.Count(11))
	}
}

// naive is the reference: a count per page in a map, sorted by (count, page).
type naive struct {
	pages uint64
	halve int
	syncs int
	count map[uint64]int
}

func (n *naive) observe(dirty []uint64) {
	for p := range n.pages {
		if bitmap.Words(dirty).Test(p) && n.count[p] < MaxCount {
			n.count[p]++
		}
	}
	if n.halve > 0 {
		if n.syncs++; n.syncs == n.halve {
			n.syncs = 0
			for p, c := range n.count {
				n.count[p] = c / 2
			}
		}
	}
}

func (n *naive) plan(dirty []uint64) []uint64 {
	var ps []uint64
	for i, w := range dirty {
		for b := range uint64(64) {
			if w&(1<<b) != 0 {
				ps = append(ps, uint64(i)*64+b)
			}
		}
	}
	slices.SortFunc(ps, func(a, b uint64) int {
		if ca, cb := n.count[a], n.count[b]; ca != cb {
			return ca - cb
		}
		return int(a) - int(b)
	})
	return ps
}

// randomDirty sets each page with a probability drawn per call, with a hot
// region dirtied more often.
func randomDirty(r *rand.Rand, words int, hot uint64) []uint64 {
	d := make([]uint64, words)
	density := r.Float64()
	for p := range uint64(words) * 64 {
		pr := density / 4
		if p < hot {
			pr = density
		}
		if r.Float64() < pr {
			bitmap.Words(d).Set(p)
		}
	}
	return d
}

// Differential test against the naive reference on seeded random histories,
// with page counts not a multiple of 64 or 8, dirty bitmaps longer and
// shorter than the guest, aging on and off.
func TestPlanMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, pages := range []uint64{0, 1, 7, 8, 9, 63, 64, 65, 127, 200, 513, 1000} {
		for _, halve := range []int{0, 1, 3, 7} {
			f, err := NewFrequency(pages, FrequencyConfig{HalveEvery: halve})
			if err != nil {
				t.Fatal(err)
			}
			ref := &naive{pages: pages, halve: halve, count: map[uint64]int{}}
			words := int((pages + 63) / 64)
			for sync := range 40 {
				w := words
				switch sync % 5 {
				case 3:
					w = words + 1 // pages past the guest: no history, planned
				case 4:
					w = max(words-1, 0)
				}
				d := randomDirty(r, w, pages/5)
				if sync%9 == 8 {
					// a dense stretch: saturation comes into play
					for range 150 {
						f.Observe(d)
						ref.observe(d)
					}
				}
				keep := slices.Clone(d)
				got := f.Plan([]uint64{42}, d)
				if !slices.Equal(d, keep) {
					t.Fatalf("pages %d: Plan modified dirty", pages)
				}
				want := append([]uint64{42}, ref.plan(d)...)
				if !slices.Equal(got, want) {
					t.Fatalf("pages %d halve %d sync %d:\n got %v\nwant %v", pages, halve, sync, got, want)
				}
				f.Observe(d)
				ref.observe(d)
				if !slices.Equal(d, keep) {
					t.Fatalf("pages %d: Observe modified dirty", pages)
				}
				for p := range pages {
					if int(f.Count(p)) != ref.count[p] {
						t.Fatalf("pages %d halve %d sync %d: count(%d) = %d, want %d", pages, halve, sync, p, f.Count(p), ref.count[p])
					}
				}
			}
		}
	}
}

// With no history ByFrequency plans exactly as Sequential, and Sequential
// is ascending and complete.
func TestNoHistoryIsSequential(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, pages := range []uint64{1, 64, 100, 4097} {
		f := ByFrequency(pages, FrequencyConfig{})
		s := Sequential()
		s.Observe(bm(pages, 0)) // no effect
		for range 10 {
			d := randomDirty(r, int((pages+63)/64), 0)
			a, b := f.Plan(nil, d), s.Plan(nil, d)
			if !slices.Equal(a, b) {
				t.Fatalf("pages %d: frequency %v, sequential %v", pages, a, b)
			}
			if !slices.IsSorted(b) || len(b) != popcount(d) {
				t.Fatalf("sequential plan not ascending or incomplete")
			}
		}
	}
	if Sequential().Name() != "sequential" || ByFrequency(1, FrequencyConfig{}).Name() != "frequency" {
		t.Fatal("names")
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := NewFrequency(MaxPages+1, FrequencyConfig{}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if _, err := NewFrequency(8, FrequencyConfig{HalveEvery: -1}); !errors.Is(err, ErrConfig) {
		t.Fatalf("negative HalveEvery: %v", err)
	}
	if _, err := NewDeferrer(MaxPages+1, DeferConfig{}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("deferrer too large: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("ByFrequency with a bad config did not panic")
		}
	}()
	ByFrequency(8, FrequencyConfig{HalveEvery: -1})
}

// The counters take one byte per page: 64 MiB for a 256 GiB guest, and
// Observe and Plan allocate nothing once dst has room.
func TestMemoryAndAllocs(t *testing.T) {
	const pages = 64 << 20
	f, err := NewFrequency(pages, FrequencyConfig{HalveEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	if m := f.MemoryBytes(); m > 64<<20 {
		t.Fatalf("%d bytes of counters for %d pages", m, uint64(pages))
	}
	if g, _ := NewFrequency(9, FrequencyConfig{}); g.MemoryBytes() != 16 {
		t.Fatalf("9 pages take %d bytes", g.MemoryBytes())
	}
	small, _ := NewFrequency(1000, FrequencyConfig{HalveEvery: 2})
	r := rand.New(rand.NewPCG(5, 6))
	d := randomDirty(r, 16, 300)
	dst := make([]uint64, 0, 1024)
	for _, o := range []Order{small, Sequential()} {
		if a := testing.AllocsPerRun(50, func() {
			o.Observe(d)
			dst = o.Plan(dst[:0], d)
		}); a != 0 {
			t.Fatalf("%s: %v allocs per round", o.Name(), a)
		}
	}
}

package bitmap

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/livemig/livemig"
)

// model is the naive reference: a []bool of pages.
type model []bool

func (m model) pages() []uint64 {
	var out []uint64
	for p, set := range m {
		if set {
			out = append(out, uint64(p))
		}
	}
	return out
}

func fromPages(t *testing.T, n uint64, pages ...uint64) *Bitmap {
	t.Helper()
	b := New(n)
	for _, p := range pages {
		if err := b.Set(p); err != nil {
			t.Fatalf("Set(%d): %v", p, err)
		}
	}
	return b
}

func collect(b *Bitmap) []uint64 {
	out := []uint64{}
	b.ForEach(func(p uint64) bool { out = append(out, p); return true })
	return out
}

func TestNewAndWords(t *testing.T) {
	for _, tc := range []struct {
		pages uint64
		words int
	}{{0, 0}, {1, 1}, {63, 1}, {64, 1}, {65, 2}, {128, 2}, {1000, 16}} {
		b := New(tc.pages)
		if b.Len() != tc.pages || len(b.Words()) != tc.words || len(b.Words()) != livemig.WordsFor(tc.pages) {
			t.Errorf("New(%d): Len %d, %d words; want %d words", tc.pages, b.Len(), len(b.Words()), tc.words)
		}
		if b.Count() != 0 || b.BitSet().Len() != uint(tc.pages) {
			t.Errorf("New(%d): Count %d, BitSet().Len %d", tc.pages, b.Count(), b.BitSet().Len())
		}
	}
}

func TestSetClearTest(t *testing.T) {
	b := New(130)
	for _, tc := range []struct {
		op   string
		page uint64
		err  bool
		want []uint64 // marked pages after the op
	}{
		{"set", 0, false, []uint64{0}},
		{"set", 63, false, []uint64{0, 63}},
		{"set", 64, false, []uint64{0, 63, 64}},
		{"set", 129, false, []uint64{0, 63, 64, 129}},
		{"set", 129, false, []uint64{0, 63, 64, 129}},
		{"set", 130, true, []uint64{0, 63, 64, 129}},
		{"set", math.MaxUint64, true, []uint64{0, 63, 64, 129}},
		{"clear", 63, false, []uint64{0, 64, 129}},
		{"clear", 63, false, []uint64{0, 64, 129}},
		{"clear", 130, true, []uint64{0, 64, 129}},
		{"mark", 5, false, []uint64{0, 5, 64, 129}},
		{"mark", 5, false, []uint64{0, 5, 64, 129}},
		{"mark", 130, true, []uint64{0, 5, 64, 129}},
	} {
		var err error
		switch tc.op {
		case "set":
			err = b.Set(tc.page)
		case "clear":
			err = b.Clear(tc.page)
		case "mark":
			err = b.MarkAtomic(tc.page)
		}
		if tc.err {
			var pe *livemig.PageError
			if !errors.Is(err, livemig.ErrPageRange) || !errors.As(err, &pe) || pe.Page != tc.page || pe.Op != tc.op {
				t.Errorf("%s(%d) = %v, want a PageError{%s, %d} wrapping ErrPageRange", tc.op, tc.page, err, tc.op, tc.page)
			}
		} else if err != nil {
			t.Errorf("%s(%d) = %v", tc.op, tc.page, err)
		}
		if got := collect(b); !slices.Equal(got, tc.want) {
			t.Errorf("after %s(%d): pages %v, want %v", tc.op, tc.page, got, tc.want)
		}
		if b.Count() != uint64(len(tc.want)) {
			t.Errorf("after %s(%d): Count %d, want %d", tc.op, tc.page, b.Count(), len(tc.want))
		}
		for p := uint64(0); p < 140; p++ {
			want := slices.Contains(tc.want, p)
			if b.Test(p) != want || b.TestAtomic(p) != want || b.BitSet().Test(uint(p)) != want {
				t.Errorf("after %s(%d): Test(%d) = %v, want %v", tc.op, tc.page, p, b.Test(p), want)
			}
		}
	}
	if b.Test(math.MaxUint64) {
		t.Error("Test(MaxUint64) = true")
	}
}

func TestSetAllClearAll(t *testing.T) {
	for _, n := range []uint64{0, 1, 63, 64, 65, 200} {
		b := New(n)
		b.SetAll()
		if b.Count() != n {
			t.Errorf("pages %d: SetAll then Count = %d", n, b.Count())
		}
		if w := b.Words(); len(w) > 0 && w[len(w)-1]&^tailMask(n) != 0 {
			t.Errorf("pages %d: SetAll set bits past the page count: %#x", n, w[len(w)-1])
		}
		b.ClearAll()
		if b.Count() != 0 || len(collect(b)) != 0 {
			t.Errorf("pages %d: ClearAll left %d pages", n, b.Count())
		}
	}
}

func TestSetOps(t *testing.T) {
	for _, tc := range []struct {
		name            string
		an, bn          uint64
		a, b            []uint64
		union, diff, in []uint64
	}{
		{"empty", 100, 100, nil, nil, []uint64{}, []uint64{}, []uint64{}},
		{"disjoint", 100, 100, []uint64{1, 70}, []uint64{2, 99}, []uint64{1, 2, 70, 99}, []uint64{1, 70}, []uint64{}},
		{"overlap", 130, 130, []uint64{0, 64, 129}, []uint64{64, 65, 129}, []uint64{0, 64, 65, 129}, []uint64{0}, []uint64{64, 129}},
		{"same", 64, 64, []uint64{0, 63}, []uint64{0, 63}, []uint64{0, 63}, []uint64{}, []uint64{0, 63}},
		{"other longer", 70, 200, []uint64{3, 69}, []uint64{3, 69, 70, 150}, []uint64{3, 69}, []uint64{}, []uint64{3, 69}},
		{"other shorter", 200, 70, []uint64{3, 69, 70, 150}, []uint64{3, 5}, []uint64{3, 5, 69, 70, 150}, []uint64{69, 70, 150}, []uint64{3}},
		{"other shorter in word", 100, 66, []uint64{64, 65, 66, 99}, []uint64{64, 65}, []uint64{64, 65, 66, 99}, []uint64{66, 99}, []uint64{64, 65}},
		{"other empty", 100, 0, []uint64{1, 99}, nil, []uint64{1, 99}, []uint64{1, 99}, []uint64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, op := range []struct {
				name string
				f    func(a, b *Bitmap)
				want []uint64
			}{
				{"Union", (*Bitmap).Union, tc.union},
				{"Difference", (*Bitmap).Difference, tc.diff},
				{"Intersect", (*Bitmap).Intersect, tc.in},
			} {
				a, o := fromPages(t, tc.an, tc.a...), fromPages(t, tc.bn, tc.b...)
				// garbage past o's page count must not leak into a
				if w := o.Words(); len(w) > 0 {
					w[len(w)-1] |= ^tailMask(tc.bn)
				}
				op.f(a, o)
				if got := collect(a); !slices.Equal(got, op.want) {
					t.Errorf("%s: %v, want %v", op.name, got, op.want)
				}
				if a.Count() != uint64(len(op.want)) {
					t.Errorf("%s: Count %d, want %d", op.name, a.Count(), len(op.want))
				}
			}
		})
	}
}

func TestSetOpsSelfAndNil(t *testing.T) {
	a := fromPages(t, 100, 1, 50, 99)
	a.Union(a)
	a.Intersect(a)
	if got := collect(a); !slices.Equal(got, []uint64{1, 50, 99}) {
		t.Errorf("a|a, a&a = %v", got)
	}
	a.Union(nil)
	a.Difference(nil)
	if a.Count() != 3 {
		t.Errorf("after Union(nil), Difference(nil): Count %d", a.Count())
	}
	a.Intersect(nil)
	if a.Count() != 0 {
		t.Errorf("Intersect(nil): Count %d", a.Count())
	}
	a = fromPages(t, 100, 1, 50, 99)
	a.Difference(a)
	if a.Count() != 0 {
		t.Errorf("a &^ a: Count %d", a.Count())
	}
}

func TestZeroValue(t *testing.T) {
	var b Bitmap
	if b.Len() != 0 || b.Count() != 0 || b.Test(0) || len(b.Words()) != 0 || b.BitSet().Len() != 0 {
		t.Error("zero Bitmap is not empty")
	}
	if err := b.Set(0); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("Set(0) on zero Bitmap = %v", err)
	}
	if n, err := b.DrainInto(nil); n != 0 || err != nil {
		t.Errorf("DrainInto(nil) = %d, %v", n, err)
	}
	if next, out := b.NextSetMany(0, make([]uint64, 4)); next != 0 || len(out) != 0 {
		t.Errorf("NextSetMany = %d, %v", next, out)
	}
	b.ClearAll()
	b.SetAll()
	b.Union(New(10))
	if !b.Equal(New(0)) {
		t.Error("zero Bitmap != New(0)")
	}
}

// TestTailMasking: bits past the page count, written by whoever fills
// Words(), are never reported.
func TestTailMasking(t *testing.T) {
	for _, n := range []uint64{1, 37, 63, 65, 100, 191} {
		b := New(n)
		w := b.Words()
		w[len(w)-1] = math.MaxUint64 // as a careless SyncDirty might
		want := n % 64
		if want == 0 {
			want = 64
		}
		if got := b.Count(); got != want {
			t.Errorf("pages %d: Count %d, want %d", n, got, want)
		}
		got := collect(b)
		if uint64(len(got)) != want || got[len(got)-1] != n-1 {
			t.Errorf("pages %d: ForEach gave %d pages ending %d", n, len(got), got[len(got)-1])
		}
		_, out := b.NextSetMany(0, make([]uint64, 128))
		if !slices.Equal(out, got) {
			t.Errorf("pages %d: NextSetMany %v, ForEach %v", n, out, got)
		}
		if b.Test(n) {
			t.Errorf("pages %d: Test(%d) = true", n, n)
		}
		dst := make([]uint64, len(w))
		if k, _ := b.SnapshotInto(dst); k != want || dst[len(dst)-1]&^tailMask(n) != 0 {
			t.Errorf("pages %d: SnapshotInto moved %d bits, last word %#x", n, k, dst[len(dst)-1])
		}
		clear(dst)
		if k, _ := b.DrainInto(dst); k != want || dst[len(dst)-1]&^tailMask(n) != 0 {
			t.Errorf("pages %d: DrainInto moved %d bits, last word %#x", n, k, dst[len(dst)-1])
		}
		if w[len(w)-1] != 0 {
			t.Errorf("pages %d: DrainInto left %#x", n, w[len(w)-1])
		}
		other := New(n)
		other.SetAll()
		other.Words()[len(w)-1] = math.MaxUint64
		b.SetAll()
		if !b.Equal(other) {
			t.Errorf("pages %d: Equal sees the tail bits", n)
		}
	}
}

func TestFromWords(t *testing.T) {
	words := []uint64{0b101, 1 << 63, math.MaxUint64, 7}
	b, err := FromWords(words, 130) // 3 words, the third holds pages 128, 129
	if err != nil {
		t.Fatal(err)
	}
	if words[2] != 0b11 || words[3] != 7 {
		t.Errorf("FromWords: words %#x, want the tail of word 2 cleared and word 3 untouched", words)
	}
	if got, want := collect(b), []uint64{0, 2, 127, 128, 129}; !slices.Equal(got, want) {
		t.Errorf("pages %v, want %v", got, want)
	}
	if len(b.Words()) != 3 || &b.Words()[0] != &words[0] {
		t.Error("Words does not alias the adopted slice")
	}
	// aliasing both ways
	b.Words()[1] |= 1 << 5
	if !b.Test(69) || !b.BitSet().Test(69) {
		t.Error("a write through Words() is not seen by Test")
	}
	words[0] = 0
	if b.Test(0) {
		t.Error("a write to the adopted slice is not seen by Test")
	}
	if err := b.Set(1); err != nil || words[0] != 0b10 {
		t.Errorf("Set(1) did not write the adopted slice: %v, %#x", err, words[0])
	}
	b.BitSet().Set(3)
	if !b.Test(3) {
		t.Error("a write through BitSet() is not seen by Test")
	}
}

func TestFromWordsErrors(t *testing.T) {
	for _, tc := range []struct {
		words int
		pages uint64
		err   error
	}{
		{0, 0, nil},
		{0, 1, ErrShort},
		{1, 64, nil},
		{1, 65, ErrShort},
		{2, 65, nil},
		{1, math.MaxUint64, ErrTooLarge},
		{1, math.MaxUint64 - 62, ErrTooLarge}, // livemig.WordsFor would wrap to 0
		{1, MaxPages, ErrShort},
	} {
		b, err := FromWords(make([]uint64, tc.words), tc.pages)
		if !errors.Is(err, tc.err) || (tc.err != nil) != (err != nil) {
			t.Errorf("FromWords(%d words, %d pages) = %v, want %v", tc.words, tc.pages, err, tc.err)
		}
		if err == nil && b.Len() != tc.pages {
			t.Errorf("FromWords(%d words, %d pages): Len %d", tc.words, tc.pages, b.Len())
		}
	}
}

func TestNewTooLargePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New(MaxPages+1) did not panic")
		}
	}()
	New(MaxPages + 1)
}

func TestForEachStop(t *testing.T) {
	b := fromPages(t, 300, 1, 2, 100, 200, 299)
	var got []uint64
	b.ForEach(func(p uint64) bool { got = append(got, p); return p < 100 })
	if !slices.Equal(got, []uint64{1, 2, 100}) {
		t.Errorf("ForEach stopped at %v", got)
	}
	got = got[:0]
	for p := range b.All() {
		if p > 200 {
			break
		}
		got = append(got, p)
	}
	if !slices.Equal(got, []uint64{1, 2, 100, 200}) {
		t.Errorf("All gave %v", got)
	}
	if s := b.String(); s != "{1 2 100 200 299}" {
		t.Errorf("String = %q", s)
	}
}

func TestNextSetManyEdges(t *testing.T) {
	b := fromPages(t, 130, 0, 1, 63, 64, 129)
	buf := make([]uint64, 2)
	for _, tc := range []struct {
		start uint64
		buf   []uint64
		next  uint64
		out   []uint64
	}{
		{0, buf, 2, []uint64{0, 1}},
		{2, buf, 65, []uint64{63, 64}},
		{65, buf, 130, []uint64{129}},
		{129, buf, 130, []uint64{129}},
		{130, buf, 130, []uint64{}},
		{1000, buf, 130, []uint64{}},
		{0, nil, 130, []uint64{}},
		{0, make([]uint64, 5), 130, []uint64{0, 1, 63, 64, 129}},
		{0, make([]uint64, 9), 130, []uint64{0, 1, 63, 64, 129}},
	} {
		next, out := b.NextSetMany(tc.start, tc.buf)
		if next != tc.next || !slices.Equal(out, tc.out) {
			t.Errorf("NextSetMany(%d, len %d) = %d, %v; want %d, %v", tc.start, len(tc.buf), next, out, tc.next, tc.out)
		}
	}
}

// randomBitmap returns a bitmap of n pages with about density of them
// marked, its model, and garbage in the bits past n.
func randomBitmap(r *rand.Rand, n uint64, density float64) (*Bitmap, model) {
	b := New(n)
	m := make(model, n)
	for p := range m {
		if r.Float64() < density {
			m[p] = true
			_ = b.Set(uint64(p))
		}
	}
	if w := b.Words(); len(w) > 0 {
		w[len(w)-1] |= r.Uint64() &^ tailMask(n)
	}
	return b, m
}

// TestNextSetManyDifferential checks NextSetMany, ForEach and Count against
// the naive model on seeded random bitmaps.
func TestNextSetManyDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 300; iter++ {
		n := r.Uint64N(2000)
		density := []float64{0, 0.001, 0.01, 0.1, 0.5, 0.99, 1}[r.IntN(7)]
		b, m := randomBitmap(r, n, density)
		want := m.pages()
		if b.Count() != uint64(len(want)) {
			t.Fatalf("iter %d: Count %d, want %d", iter, b.Count(), len(want))
		}
		if got := collect(b); !slices.Equal(got, append([]uint64{}, want...)) {
			t.Fatalf("iter %d: ForEach differs", iter)
		}
		// iterate from a random start with a random buffer size
		start := r.Uint64N(n + 10)
		buf := make([]uint64, 1+r.IntN(100))
		var got []uint64
		for next := start; ; {
			var out []uint64
			next, out = b.NextSetMany(next, buf)
			if len(out) == 0 {
				if next < n {
					t.Fatalf("iter %d: empty out with next %d < %d", iter, next, n)
				}
				break
			}
			got = append(got, out...)
		}
		var wantFrom []uint64
		for _, p := range want {
			if p >= start {
				wantFrom = append(wantFrom, p)
			}
		}
		if !slices.Equal(got, wantFrom) {
			t.Fatalf("iter %d (n %d, start %d, buf %d): NextSetMany gave %d pages, want %d", iter, n, start, len(buf), len(got), len(wantFrom))
		}
		// SnapshotInto then DrainInto move exactly the model's pages
		for _, drain := range []bool{false, true} {
			dst := New(n)
			f := b.SnapshotInto
			if drain {
				f = b.DrainInto
			}
			if k, err := f(dst.Words()); err != nil || k != uint64(len(want)) {
				t.Fatalf("iter %d: drain %v moved %d, %v; want %d", iter, drain, k, err, len(want))
			}
			if got := collect(dst); !slices.Equal(got, append([]uint64{}, want...)) {
				t.Fatalf("iter %d: drain %v gave other pages", iter, drain)
			}
		}
		if b.Count() != 0 {
			t.Fatalf("iter %d: %d pages left after DrainInto", iter, b.Count())
		}
		for _, p := range want {
			_ = b.Set(p)
		}
		// the bitset view agrees too (tail bits aside)
		if c := b.BitSet().Count(); c < uint(len(want)) {
			t.Fatalf("iter %d: BitSet().Count %d < %d", iter, c, len(want))
		}
	}
}

func TestDrainSnapshotShortDst(t *testing.T) {
	b := fromPages(t, 129, 5, 128)
	for _, f := range []func([]uint64) (uint64, error){b.DrainInto, b.SnapshotInto} {
		if n, err := f(make([]uint64, 2)); n != 0 || !errors.Is(err, ErrShort) {
			t.Errorf("short dst: %d, %v; want ErrShort", n, err)
		}
	}
	if err := b.SyncDirty(make([]uint64, 1)); !errors.Is(err, ErrShort) {
		t.Errorf("SyncDirty short dst: %v", err)
	}
	if err := b.PeekDirty(nil); !errors.Is(err, ErrShort) {
		t.Errorf("PeekDirty short dst: %v", err)
	}
	if b.Count() != 2 {
		t.Errorf("a failed drain moved pages: Count %d", b.Count())
	}
}

func TestDrainSnapshot(t *testing.T) {
	b := fromPages(t, 200, 1, 64, 199)
	dst := New(200)
	_ = dst.Set(2)
	_ = dst.Set(64)
	n, err := b.SnapshotInto(dst.Words())
	if err != nil || n != 3 || b.Count() != 3 {
		t.Fatalf("SnapshotInto = %d, %v; source Count %d", n, err, b.Count())
	}
	if got := collect(dst); !slices.Equal(got, []uint64{1, 2, 64, 199}) {
		t.Errorf("after snapshot dst = %v", got)
	}
	dst.ClearAll()
	if err := b.PeekDirty(dst.Words()); err != nil || dst.Count() != 3 {
		t.Errorf("PeekDirty: %v, %d", err, dst.Count())
	}
	long := make([]uint64, 5) // a longer dst is fine
	long[0], long[4] = 1, 0xff
	n, err = b.DrainInto(long)
	if err != nil || n != 3 || b.Count() != 0 {
		t.Fatalf("DrainInto = %d, %v; source Count %d", n, err, b.Count())
	}
	if long[4] != 0xff {
		t.Errorf("DrainInto wrote past the source's words: %#x", long)
	}
	if dst, err = FromWords(long, 200); err != nil {
		t.Fatal(err)
	}
	if got := collect(dst); !slices.Equal(got, []uint64{0, 1, 64, 199}) {
		t.Errorf("after drain dst = %v", got)
	}
	if n, _ := b.DrainInto(dst.Words()); n != 0 {
		t.Errorf("second drain moved %d", n)
	}
	_ = b.MarkAtomic(7)
	var ds livemig.DirtySource = b
	dst.ClearAll()
	if err := ds.SyncDirty(dst.Words()); err != nil || !dst.Test(7) || b.Count() != 0 {
		t.Errorf("SyncDirty: %v, %v", err, dst)
	}
}

func TestCountWords(t *testing.T) {
	words := []uint64{0, 1, ^uint64(0), 0x8000_0000_0000_0001}
	if got := CountWords(words); got != 67 {
		t.Fatalf("CountWords = %d, want 67", got)
	}
	if got := CountWords(nil); got != 0 {
		t.Fatalf("CountWords(nil) = %d", got)
	}
}

func TestComplement(t *testing.T) {
	b := New(70)
	_ = b.Set(3)
	_ = b.Set(69)
	b.Complement()
	if b.Count() != 68 || b.Test(3) || b.Test(69) || !b.Test(0) || !b.Test(68) {
		t.Fatalf("complement: %d pages, 3 %v 69 %v", b.Count(), b.Test(3), b.Test(69))
	}
	if w := b.Words(); w[1]>>6 != 0 {
		t.Fatalf("bits past the end: %x", w[1])
	}
	var empty Bitmap
	empty.Complement()
}

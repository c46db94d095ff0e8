package bitmap

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// Words' methods against a map of set pages, over random operations.
func TestWordsDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, nw := range []int{0, 1, 2, 5} {
		w := make(Words, nw)
		model := map[uint64]bool{}
		limit := uint64(64 * nw)
		for range 2000 {
			p := r.Uint64N(limit + 130) // some past the end
			switch op := r.IntN(6); {
			case p >= limit:
				if w.Test(p) || w.TestAtomic(p) {
					t.Fatalf("%d words: page %d past the end is set", nw, p)
				}
			case op == 0:
				if got := w.Set(p); got != !model[p] {
					t.Fatalf("Set(%d) = %v, was set %v", p, got, model[p])
				}
				model[p] = true
			case op == 1:
				if got := w.Clear(p); got != model[p] {
					t.Fatalf("Clear(%d) = %v, was set %v", p, got, model[p])
				}
				delete(model, p)
			case op == 2:
				if got := w.SetAtomic(p); got != !model[p] {
					t.Fatalf("SetAtomic(%d) = %v, was set %v", p, got, model[p])
				}
				model[p] = true
			case op == 3:
				if got := w.ClearAtomic(p); got != model[p] {
					t.Fatalf("ClearAtomic(%d) = %v, was set %v", p, got, model[p])
				}
				delete(model, p)
			default:
				if w.Test(p) != model[p] || w.TestAtomic(p) != model[p] {
					t.Fatalf("Test(%d) = %v, want %v", p, w.Test(p), model[p])
				}
			}
			if w.Count() != uint64(len(model)) {
				t.Fatalf("Count = %d, want %d", w.Count(), len(model))
			}
			start := r.Uint64N(limit + 70)
			want, wantOK := uint64(0), false
			for q := start; q < limit; q++ {
				if model[q] {
					want, wantOK = q, true
					break
				}
			}
			if got, ok := w.NextSet(start); got != want || ok != wantOK {
				t.Fatalf("NextSet(%d) = %d, %v; want %d, %v", start, got, ok, want, wantOK)
			}
		}
	}
}

func TestWordsNextSetPastPages(t *testing.T) {
	w := Words{0, 1 << 9}
	if n, ok := w.NextSet(70); !ok || n != 73 {
		t.Fatalf("NextSet(70) = %d, %v", n, ok)
	}
	if _, ok := w.NextSet(74); ok {
		t.Fatal("NextSet(74) found a page")
	}
	if _, ok := w.NextSet(1 << 62); ok {
		t.Fatal("NextSet far past the end found a page")
	}
}

// Of the goroutines that set (or clear) one page at once, exactly one is
// told it did.
func TestWordsAtomicOnce(t *testing.T) {
	w := make(Words, 2)
	for _, op := range []func(uint64) bool{w.SetAtomic, w.ClearAtomic} {
		var won atomic.Int32
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := range uint64(128) {
					if op(p) && p == 77 {
						won.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if won.Load() != 1 {
			t.Fatalf("%d goroutines changed page 77", won.Load())
		}
	}
}

func TestWordsSetPastEndPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Set past the end did not panic")
		}
	}()
	make(Words, 1).Set(64)
}

// BenchmarkWords compares the view's methods with the hand-written
// arithmetic they replace, on random pages of a 64 Mi-page bitmap (8 MiB):
// they compile to the same loads and stores.
func BenchmarkWords(b *testing.B) {
	w := make(Words, benchPages/64)
	r := rand.New(rand.NewPCG(1, 1))
	pages := make([]uint64, 1<<16)
	for i := range pages {
		pages[i] = r.Uint64N(benchPages)
	}
	var sink int
	b.Run("Set+Test/view", func(b *testing.B) {
		v := w
		i := 0
		for b.Loop() {
			p := pages[i&(len(pages)-1)]
			v.Set(p)
			if v.Test(p ^ 1) {
				sink++
			}
			i++
		}
	})
	b.Run("Set+Test/by-hand", func(b *testing.B) {
		s := []uint64(w)
		i := 0
		for b.Loop() {
			p := pages[i&(len(pages)-1)]
			s[p/64] |= 1 << (p % 64)
			if q := p ^ 1; q/64 < uint64(len(s)) && s[q/64]&(1<<(q%64)) != 0 {
				sink++
			}
			i++
		}
	})
	b.Run("SetAtomic/view", func(b *testing.B) {
		v := w
		i := 0
		for b.Loop() {
			v.SetAtomic(pages[i&(len(pages)-1)])
			i++
		}
	})
	b.Run("SetAtomic/by-hand", func(b *testing.B) {
		s := []uint64(w)
		i := 0
		for b.Loop() {
			p := pages[i&(len(pages)-1)]
			atomic.OrUint64(&s[p/64], 1<<(p%64))
			i++
		}
	})
	_ = sink
}

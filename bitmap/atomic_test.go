package bitmap

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentMarkDrain runs several writer goroutines that MarkAtomic
// while one drainer goroutine DrainInto's and SnapshotInto's, and checks that
// no mark is lost: every mark is moved by a drain that started after the mark
// began, and the union of the drains is exactly the set of marked pages.
// Run it with -race.
func TestConcurrentMarkDrain(t *testing.T) {
	const (
		pages   = 5000 + 37 // a partial last word
		writers = 4
		marks   = 20000 // per writer
	)
	src := New(pages)

	// epoch counts completed drains; a writer reads it before it marks, so
	// a mark made with epoch e must be moved by drain e+1 or later.
	var epoch atomic.Uint64
	type record struct{ page, epoch uint64 }
	recs := make([][]record, writers)

	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 42))
			rs := make([]record, 0, marks)
			for i := range marks {
				var p uint64
				if i%2 == 0 {
					p = r.Uint64N(128) // a hot region shared by all writers
				} else {
					p = r.Uint64N(pages)
				}
				e := epoch.Load()
				if err := src.MarkAtomic(p); err != nil {
					t.Error(err)
					return
				}
				rs = append(rs, record{p, e})
				if i%256 == 0 {
					runtime.Gosched() // let the drainer in on a busy machine
				}
			}
			recs[w] = rs
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	lastDrain := make([]uint64, pages) // number of the last drain that moved the page; 0 = none
	snapshotSeen := New(pages)
	round := New(pages)
	buf := make([]uint64, 256)
	drain := func() {
		round.ClearAll()
		n, err := src.DrainInto(round.Words())
		if err != nil {
			t.Fatal(err)
		}
		if c := round.Count(); n != c {
			t.Fatalf("DrainInto reported %d pages, moved %d", n, c)
		}
		d := epoch.Load() + 1
		for next := uint64(0); ; {
			var out []uint64
			next, out = round.NextSetMany(next, buf)
			if len(out) == 0 {
				break
			}
			for _, p := range out {
				lastDrain[p] = d
			}
		}
		epoch.Store(d)
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		drain()
		if epoch.Load()%8 == 0 {
			if _, err := src.SnapshotInto(snapshotSeen.Words()); err != nil {
				t.Fatal(err)
			}
		}
	}
	drain() // the final sync, after every writer stopped
	if t.Failed() {
		return
	}

	marked := New(pages)
	for _, rs := range recs {
		for _, r := range rs {
			_ = marked.Set(r.page)
			if lastDrain[r.page] <= r.epoch {
				t.Fatalf("mark of page %d made after drain %d was lost (last drained by %d)", r.page, r.epoch, lastDrain[r.page])
			}
		}
	}
	drained := New(pages)
	for p, d := range lastDrain {
		if d != 0 {
			_ = drained.Set(uint64(p))
		}
	}
	if !drained.Equal(marked) {
		t.Errorf("drained %d pages, marked %d: the sets differ", drained.Count(), marked.Count())
	}
	snapshotSeen.Difference(marked)
	if snapshotSeen.Count() != 0 {
		t.Errorf("snapshots saw %d pages never marked", snapshotSeen.Count())
	}
	if src.Count() != 0 {
		t.Errorf("%d pages left after the final drain", src.Count())
	}
	t.Logf("%d drains", epoch.Load())
}

// CountAtomic counts what concurrent markers marked, and nothing past the
// page count.
func TestCountAtomic(t *testing.T) {
	b := New(130)
	b.Words()[2] = ^uint64(0) // bits past page 129 are ignored
	if got := b.CountAtomic(); got != 2 {
		t.Fatalf("CountAtomic = %d, want 2", got)
	}
	b.ClearAll()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := uint64(g); p < 130; p += 4 {
				_ = b.MarkAtomic(p)
				_ = b.CountAtomic()
			}
		}()
	}
	wg.Wait()
	if got := b.CountAtomic(); got != 130 {
		t.Fatalf("CountAtomic = %d, want 130", got)
	}
}

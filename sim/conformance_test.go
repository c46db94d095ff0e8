package sim_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/livemigtest"
	"github.com/livemig/livemig/sim"
)

// TestGuestConformance runs livemigtest's Memory, DirtySource and VM checks
// on sim.Guest: on a virtual clock that the VM checks' run advances, and on
// the wall clock with a nil run.
func TestGuestConformance(t *testing.T) {
	for _, cfg := range []sim.GuestConfig{
		{Pages: 1000, Seed: 1},
		{Pages: 64, Seed: 2, PageSize: 64},
		{Pages: 4097, Seed: 3, PageSize: 8192, ZeroFraction: 1},
	} {
		clock := livemig.NewVirtualClock()
		// The clock does not move during the checks, so once the writes
		// due are applied the workload is quiescent, as TestMemory and
		// TestDirtySource require. (Without the Advance, every 32nd
		// ReadPage of TestMemory would apply the millisecond's writes
		// while the check compares two reads of a page.)
		g, err := sim.NewGuest(cfg, sim.Uniform(1e6, false), clock)
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Millisecond)
		g.Advance()
		livemigtest.TestMemory(t, g)
		livemigtest.TestDirtySource(t, g, g.PageCount(), func(n uint64) {
			if err := g.Write(n, false); err != nil {
				t.Error(err)
			}
		})
		livemigtest.TestVM(t, g, g, g, func() { clock.Advance(time.Millisecond) })
		if g.Paused() {
			t.Errorf("%d pages: the guest is paused after TestVM", cfg.Pages)
		}
	}
	// TestVM on the wall clock: run is nil, the guest's writes come on
	// their own.
	g, err := sim.NewGuest(sim.GuestConfig{Pages: 2000, Seed: 4}, sim.Uniform(1e6, false), nil)
	if err != nil {
		t.Fatal(err)
	}
	livemigtest.TestVM(t, g, g, g, nil)
}

func TestSinkConformance(t *testing.T) {
	cfg := sim.GuestConfig{Pages: 2000, Seed: 4}
	g, err := sim.NewGuest(cfg, nil, livemig.NewVirtualClock())
	if err != nil {
		t.Fatal(err)
	}
	s, err := sim.NewSink(g.Config())
	if err != nil {
		t.Fatal(err)
	}
	// Version k of page n: the page after k+1 whole writes.
	fill := func(n uint64, k int, dst []byte) {
		if err := g.Contents(n, sim.PageState{Version: uint32(k + 1), Generation: uint32(k + 1)}, dst); err != nil {
			t.Error(err)
		}
	}
	livemigtest.TestPageSink(t, s, s, s.PageSize(), s.PageCount(), fill)
	livemigtest.TestMemory(t, s)
}

// TestRealTime runs a guest on the wall clock with readers and writers in
// goroutines (run with -race).
func TestRealTime(t *testing.T) {
	g, err := sim.NewGuest(sim.GuestConfig{Pages: 4096, Seed: 5}, sim.Uniform(1e6, false), nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			b := make([]byte, g.PageSize())
			for i := 0; i < 2000; i++ {
				if err := g.ReadPage(uint64(i*7+r)%4096, b); err != nil {
					t.Error(err)
					return
				}
			}
		}(r)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 1000; i++ {
			g.Write(uint64(i*13)%4096, i%3 == 0)
		}
	}()
	d := make([]uint64, livemig.WordsFor(4096))
	for i := 0; i < 50; i++ {
		if err := g.SyncDirty(d); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if err := g.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := g.Stats(); st.Writes < 1000 {
		t.Errorf("%d writes, want at least the 1000 made by hand", st.Writes)
	}
}

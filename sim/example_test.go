package sim_test

import (
	"context"
	"fmt"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/sim"
)

// A guest with a hot working set runs for a second of virtual time; its
// dirty log is synced, it is paused, and a sink that received every page
// verifies against it.
func Example() {
	ctx := context.Background()
	clock := livemig.NewVirtualClock()
	g, err := sim.NewGuest(sim.GuestConfig{Pages: 1 << 14, Seed: 1},
		sim.HotCold(20000, 1024, 0.9, false), clock)
	if err != nil {
		panic(err)
	}
	clock.Advance(time.Second)
	dirty := make([]uint64, livemig.WordsFor(g.PageCount()))
	if err := g.SyncDirty(dirty); err != nil {
		panic(err)
	}
	var n int
	for _, w := range dirty {
		for ; w != 0; w &= w - 1 {
			n++
		}
	}
	st := g.Stats()
	fmt.Printf("%s: %d writes, %d dirty pages\n", g.Workload().Name(), st.Writes, n)

	if err := g.Pause(ctx); err != nil {
		panic(err)
	}
	dst, err := sim.NewSink(g.Config())
	if err != nil {
		panic(err)
	}
	page := make([]byte, g.PageSize())
	for p := uint64(0); p < g.PageCount(); p++ {
		_ = g.ReadPage(p, page)
		if err := dst.WritePage(p, page); err != nil {
			panic(err)
		}
	}
	fmt.Println("verify:", dst.Verify(g))
	_ = g.Write(42, true) // a write the sink has not seen
	fmt.Println("verify:", dst.Verify(g) != nil)
	// Output:
	// hotcold(20000/s, 1024 hot pages, 0.9 hot, words): 20000 writes, 2870 dirty pages
	// verify: <nil>
	// verify: true
}

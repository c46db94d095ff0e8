package advisor_test

import (
	"context"
	"fmt"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/sim"
)

// A simulated 256 MiB guest whose hot set takes most of its writes, a
// few words at a time, profiled in virtual time and advised on for a
// 1 Gbit/s link and a 50 ms downtime target.
func Example() {
	clock := livemig.NewVirtualClock()
	g, err := sim.NewGuest(sim.GuestConfig{Pages: 65536, Seed: 1}, sim.HotCold(20000, 4096, 0.9, false), clock)
	if err != nil {
		panic(err)
	}
	p, err := advisor.Observe(context.Background(), g, clock, advisor.ObserveConfig{Seed: 1})
	if err != nil {
		panic(err)
	}
	adv := advisor.Advise(p, advisor.Link{Bandwidth: 1e9, Latency: 100 * time.Microsecond},
		advisor.Target{Downtime: 50 * time.Millisecond}, advisor.NoPostCopy)
	fmt.Println(adv.Algorithm, adv.Predicted.MeetsTarget)
	// Output: precopy-xbzrle-lz4 true
}

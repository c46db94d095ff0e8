// Package sim simulates guests for live-migration engines: memory whose
// pages are written by a workload as time passes, a dirty log, VM control,
// and a destination sink that checks what it receives.
//
// A simulated guest costs 8 bytes per page, never the page contents: a
// page's contents are generated on demand from the guest's seed, the page
// number and the page's state (how many times it was written, and how many
// of those writes rewrote it whole). A 64 GiB guest of 4 KiB pages therefore
// takes 128 MiB. The generated pages look like real memory to a codec: a
// share of the never-written pages is all zeros, the others mix random
// 64-byte lines with lines of a few repeated words so that LZ4 compresses
// them about 2x, and a write changes either a few 8-byte words (as a counter
// update does, which XBZRLE encodes in a few dozen bytes) or the whole page.
//
// # Time
//
// A Guest reads a livemig.Clock. Its workload writes pages as the guest's
// own running time passes; that time stands still while the guest is paused
// and runs at (1-f) of the clock's pace under a throttle f. Writes are
// applied lazily, whenever the guest is observed (SyncDirty, PeekDirty,
// Pause, Stats, ...), so with a livemig.VirtualClock a simulation of hours
// takes milliseconds, and with livemig.WallClock the same guest runs in real
// time.
//
// # Exactness
//
// Every workload here places its writes at fixed instants of guest time and
// picks each write's page from the seed and the write's index, so the state
// of a guest at a given guest time depends only on its configuration, its
// workload and the throttle history: re-running a scenario gives identical
// page states, dirty bitmaps and figures, however often the guest was
// observed on the way.
//
// # Usage
//
//	clock := livemig.NewVirtualClock()
//	g, err := sim.NewGuest(sim.GuestConfig{Pages: 1 << 18, Seed: 1},
//		sim.HotCold(20000, 4096, 0.9, false), clock)
//	...
//	dst, err := sim.NewSink(g.Config())
//	// migrate g (Memory, DirtySource, VM) to dst (PageSink, VM), then:
//	err = dst.Verify(g) // every page equals the paused source's
package sim

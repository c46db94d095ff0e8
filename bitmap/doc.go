// Package bitmap holds livemig's dirty bitmaps: one bit per guest page, in
// KVM's dirty-log layout, on top of github.com/bits-and-blooms/bitset.
//
// # Layout
//
// A Bitmap of n pages is backed by exactly livemig.WordsFor(n) uint64 words:
// bit i%64 of word i/64 is page i, the layout KVM_GET_DIRTY_LOG fills and
// livemig.DirtySource.SyncDirty ORs into. [Bitmap.Words] hands out that
// slice without copying, and [FromWords] adopts one without copying, so a
// bitmap can be filled by KVM or a DirtySource and read here with no
// conversion. Bits of the last word past the page count are never reported.
//
// A set kept as a plain []uint64 (an engine's sent set, a memory's present
// pages, a peek at the dirty log) is read and written through [Words], a
// view of the slice that copies nothing: Words(s).Set(n), Test, their
// atomic forms, Count and NextSet. It is the one place of the bit
// arithmetic; Bitmap's methods use it too.
//
// # Concurrency
//
// The plain methods (Set, Clear, Test, Count, Union, NextSetMany, ...) are
// like those of a slice: any number of goroutines may read at once, but a
// goroutine that writes needs exclusive access. The atomic methods
// ([Bitmap.MarkAtomic], [Bitmap.TestAtomic], [Bitmap.CountAtomic],
// [Bitmap.DrainInto], [Bitmap.SnapshotInto], and SyncDirty/PeekDirty built
// on them) may be called from any number of goroutines at once, but only
// with each other: while writers mark, no goroutine may call a plain method
// on the same bitmap.
// A Bitmap used that way is a software dirty log: writer goroutines call
// MarkAtomic after they write a page, and one engine goroutine drains.
//
// # Usage
//
//	dirty := bitmap.New(pages)       // marked by writers
//	round := bitmap.New(pages)       // owned by the engine
//	// writers: write page p, then dirty.MarkAtomic(p)
//	// engine, each round:
//	round.ClearAll()
//	dirty.DrainInto(round.Words())
//	buf := make([]uint64, 1024)
//	for next := uint64(0); ; {
//		var out []uint64
//		next, out = round.NextSetMany(next, buf)
//		if len(out) == 0 {
//			break
//		}
//		for _, p := range out {
//			// send page p
//		}
//	}
package bitmap

package bitmap_test

import (
	"fmt"
	"sync"

	"github.com/livemig/livemig/bitmap"
)

// Writers mark the pages they write with MarkAtomic; the engine drains them
// into its own bitmap each round and walks the set pages into a reused buffer.
func Example() {
	const pages = 1000
	dirty := bitmap.New(pages)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := uint64(w); p < pages; p += 250 {
				_ = dirty.MarkAtomic(p) // after writing page p
			}
		}()
	}
	wg.Wait()

	round := bitmap.New(pages)
	n, err := dirty.DrainInto(round.Words())
	fmt.Println("drained", n, err, "left", dirty.Count())

	buf := make([]uint64, 5)
	for next := uint64(0); ; {
		var out []uint64
		next, out = round.NextSetMany(next, buf)
		if len(out) == 0 {
			break
		}
		fmt.Println(out)
	}
	// Output:
	// drained 16 <nil> left 0
	// [0 1 2 3 250]
	// [251 252 253 500 501]
	// [502 503 750 751 752]
	// [753]
}

// FromWords adopts a dirty log filled by KVM or a livemig.DirtySource
// without copying it.
func ExampleFromWords() {
	words := make([]uint64, 2) // as filled by KVM_GET_DIRTY_LOG for a 100-page slot
	words[0] = 1<<3 | 1<<10
	words[1] = 1<<(99-64) | 1<<63 // bit 127 is past the slot: ignored
	b, err := bitmap.FromWords(words, 100)
	if err != nil {
		panic(err)
	}
	fmt.Println(b, b.Count())
	// Output: {3 10 99} 3
}

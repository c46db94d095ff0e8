package reorder_test

import (
	"fmt"

	"github.com/livemig/livemig/reorder"
)

// bitmap returns a one-word dirty bitmap (KVM layout) with pages set.
func bitmap(pages ...uint64) []uint64 {
	var w uint64
	for _, p := range pages {
		w |= 1 << p
	}
	return []uint64{w}
}

// Three syncs of the dirty log found page 3 dirty three times and pages 1
// and 5 once each; page 6 has never been seen dirty. The next round sends
// page 6 first and page 3, the most often written, last.
func ExampleByFrequency() {
	order := reorder.ByFrequency(8, reorder.FrequencyConfig{})
	for _, sync := range [][]uint64{{1, 3}, {3}, {3, 5}} {
		order.Observe(bitmap(sync...))
	}
	fmt.Println(order.Plan(nil, bitmap(1, 3, 5, 6)))
	fmt.Println(reorder.Sequential().Plan(nil, bitmap(1, 3, 5, 6)))
	// Output:
	// [6 1 5 3]
	// [1 3 5 6]
}

// Page 5 was written again after the round's sync: it is deferred to a
// later round, except in the final round, where everything goes.
func ExampleDeferred() {
	peek := bitmap(5) // from livemig.DirtyPeeker.PeekDirty
	fmt.Println(reorder.Deferred(peek, 5, false), reorder.Deferred(peek, 4, false), reorder.Deferred(peek, 5, true))
	// Output: true false false
}

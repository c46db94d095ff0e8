package delta_test

import (
	"fmt"

	"github.com/livemig/livemig/delta"
)

func ExampleEncode() {
	old := make([]byte, 4096)
	new := make([]byte, 4096)
	copy(new[100:], "hello")
	buf := make([]byte, 0, 4096)
	d, err := delta.Encode(buf, old, new, 0)
	fmt.Printf("% x %v\n", d, err)

	page := append([]byte(nil), old...) // the destination's copy
	if err := delta.Decode(page, d); err != nil {
		fmt.Println(err)
	}
	fmt.Println(string(page[100:105]))

	_, err = delta.Encode(buf, old, old, 0)
	fmt.Println(err)
	// Output:
	// 64 05 68 65 6c 6c 6f <nil>
	// hello
	// delta: page unchanged
}

func ExampleEncoder() {
	cache, err := delta.NewSetAssoc(delta.CacheConfig{}) // 64 MiB, 4 KiB pages, 8 ways
	if err != nil {
		fmt.Println(err)
		return
	}
	enc := delta.NewEncoder(cache, 0)
	page := make([]byte, 4096)
	buf := make([]byte, 0, 4096)
	for gen := uint64(1); gen <= 3; gen++ {
		page[8] = byte(gen) // the guest dirties one byte per round
		out, res := enc.Encode(buf, 42, gen, page, false)
		fmt.Println(gen, res, len(out))
	}
	s := enc.Stats()
	fmt.Println(s.Hits, s.Misses, s.Deltas, s.BytesSaved)
	// Output:
	// 1 miss 0
	// 2 delta 3
	// 3 delta 3
	// 2 1 2 8186
}

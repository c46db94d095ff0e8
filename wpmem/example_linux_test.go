//go:build linux

package wpmem_test

import (
	"errors"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/wpmem"
)

// Track the writes to a region that code writes directly, with no call into
// the Region, and fetch them. (Compile-only: it needs Linux 6.7+ and
// userfaultfd.)
func ExampleNew() {
	r, err := wpmem.New(1024) // 4 MiB of 4 KiB pages; tracking starts here
	if errors.Is(err, livemig.ErrNotSupported) {
		fmt.Println("no kernel dirty tracking here:", err)
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	mem := r.Bytes()
	mem[5*r.PageSize()] = 1            // a plain store
	copy(mem[17*r.PageSize():], "abc") // the runtime's memmove
	dirty := make([]uint64, livemig.WordsFor(r.PageCount()))
	if err := r.SyncDirty(dirty); err != nil { // fetch and re-arm
		fmt.Println(err)
		return
	}
	fmt.Printf("%#x\n", dirty[0]) // pages 5 and 17
}

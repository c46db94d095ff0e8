package faultmem_test

import (
	"errors"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/faultmem"
)

// A post-copy destination: faults are turned into page requests to the
// source; pages that arrive are placed only if still missing.
func Example() {
	requests := make(chan uint64, 1024)
	r, err := faultmem.New(4096, 1<<16, faultmem.Config{
		OnFault: func(page uint64) {
			select {
			case requests <- page: // to the return path
			default: // the background push will bring it
			}
		},
	})
	if errors.Is(err, livemig.ErrNotSupported) {
		fmt.Println("no userfaultfd here:", err)
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()

	// Before resume (hybrid pre-copy rounds): the newest copy wins.
	page := make([]byte, 4096)
	_ = r.WritePage(0, page)

	// After resume: guest goroutines touch r.Bytes(); pages from the
	// source are placed only if the guest has not got them yet.
	if placed, err := r.Place(1, page); err == nil && !placed {
		fmt.Println("stale copy of page 1 discarded")
	}
	// Stop releases guests still waiting on missing pages; join them,
	// then Close (deferred).
	_ = r.Stop()
}

//go:build linux

package postcopy_test

import (
	"runtime"
	"testing"

	"github.com/livemig/livemig/postcopy"
)

var touched byte

// uffdToucher touches pages of a userfaultfd region with a plain load: a
// missing page blocks the goroutine in the kernel until it is placed.
func uffdToucher(b *testing.B, pages uint64, f *postcopy.FaultQueue) toucher {
	r := openFaultMem(b, pages, f.Fault)
	mem := r.Bytes()
	return toucher{r, func(n uint64) { touched += mem[int(n)*pageSize] }}
}

// oneFreeP raises GOMAXPROCS to 2 if it is lower: the guest goroutine
// blocked on a missing page holds a P, and fault service needs another
// (faultmem's package doc). It must be called in the leaf benchmark:
// testing sets GOMAXPROCS to the -cpu value before each leaf runs, so a
// value set by the parent is lost.
func oneFreeP(b *testing.B) {
	if old := runtime.GOMAXPROCS(0); old < 2 {
		runtime.GOMAXPROCS(2)
		b.Cleanup(func() { runtime.GOMAXPROCS(old) })
	}
}

// benchFaultServiceUffd runs the fault benchmark into userfaultfd memory,
// at the -cpu value of GOMAXPROCS (at least 2): compare -cpu 2,5.
func benchFaultServiceUffd(b *testing.B) {
	b.Run("uffd/main", func(b *testing.B) { oneFreeP(b); benchFaultService(b, false, uffdToucher) })
	b.Run("uffd/urgent", func(b *testing.B) { oneFreeP(b); benchFaultService(b, true, uffdToucher) })
}

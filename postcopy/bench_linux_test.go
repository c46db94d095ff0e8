//go:build linux

package postcopy_test

import (
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

func benchFaultServiceUffd(b *testing.B) {
	moreProcs(b, 1)
	b.Run("uffd/main", func(b *testing.B) { benchFaultService(b, false, uffdToucher) })
	b.Run("uffd/urgent", func(b *testing.B) { benchFaultService(b, true, uffdToucher) })
}

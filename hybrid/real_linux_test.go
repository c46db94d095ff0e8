//go:build linux

package hybrid_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/postcopy"
)

// faultMem is the real destination: guests block in the kernel on missing
// pages of a userfaultfd region.
type faultMem struct{ *faultmem.Region }

// store is a plain Go store (faultmem: no runtime routine may take the
// fault).
func (f faultMem) store(_ context.Context, n uint64, off int, v uint64) error {
	binary.LittleEndian.PutUint64(f.Bytes()[int(n)*pageSize+off:], v)
	return nil
}
func (f faultMem) contents() []byte { return f.Bytes() }
func (f faultMem) release()         { _ = f.Stop() }

func newFaultMem(t *testing.T, pages uint64, faults *postcopy.FaultQueue) guestMem {
	t.Helper()
	r, err := faultmem.New(pageSize, pages, faultmem.Config{OnFault: faults.Fault})
	if err != nil {
		if errors.Is(err, livemig.ErrNotSupported) && os.Getenv("LIVEMIG_REQUIRE_UFFD") != "1" {
			t.Skipf("userfaultfd unavailable here (set LIVEMIG_REQUIRE_UFFD=1 to fail instead): %v", err)
		}
		t.Fatalf("faultmem: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return faultMem{r}
}

// The real thing: pre-copy rounds of a region written by goroutines, then
// post-copy into a userfaultfd region whose guests write from the resume,
// over loopback TCP; stale copies are discarded at the switchover; every
// page ends equal to the source at pause plus the guests' writes.
func TestRealHybrid(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
	for _, tc := range []struct {
		name string
		w    world
	}{
		{"main connection", world{pages: 8192, rounds: 3, tcp: true}},
		{"urgent connection", world{pages: 8192, rounds: 3, tcp: true, urgent: true}},
		{"cut after the switchover", world{pages: 8192, rounds: 2, tcp: true, urgent: true,
			cutAt: func(e postcopy.Event) int64 {
				if e.Kind == postcopy.HandedOver {
					return 64 << 10
				}
				return -1
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := tc.w
			w.mem = newFaultMem
			r := w.run(t)
			r.check(t, w.pages)
			if w.cutAt != nil && r.drep.Reconnects != 1 {
				t.Fatalf("%d reconnections, want 1", r.drep.Reconnects)
			}
			t.Logf("%d stale pages discarded\n%v", r.drep.Discarded, r.rep)
		})
	}
}

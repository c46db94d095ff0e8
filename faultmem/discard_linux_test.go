//go:build linux

package faultmem

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"github.com/livemig/livemig"
)

// TestDiscard: a discarded page is missing again; a guest touching it
// faults, waits, and sees the copy placed next, not the discarded one.
func TestDiscard(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	faults := make(chan uint64, 4)
	r := newOrSkip(t, 8, Config{OnFault: func(n uint64) { faults <- n }})
	if err := r.WritePage(3, content(3)); err != nil {
		t.Fatal(err)
	}
	missing := r.Missing()
	if err := r.Discard(3); err != nil {
		t.Fatal(err)
	}
	if r.Present(3) || r.Missing() != missing+1 {
		t.Fatalf("after Discard: present %v, missing %d (was %d)", r.Present(3), r.Missing(), missing)
	}
	buf := make([]byte, ps)
	if err := r.ReadPage(3, buf); !errors.Is(err, ErrMissing) {
		t.Fatalf("ReadPage of a discarded page = %v, want ErrMissing", err)
	}
	// Discarding a missing page does nothing; past the end is an error.
	if err := r.Discard(4); err != nil || r.Missing() != missing+1 {
		t.Fatalf("Discard of a missing page = %v, missing %d", err, r.Missing())
	}
	if err := r.Discard(8); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("Discard past the end = %v", err)
	}
	mem := r.Bytes()
	got := make(chan byte)
	go func() {
		// A plain load in Go code faults on the discarded page; it must
		// not be the channel send's own read of the region (see the
		// package doc).
		v := mem[3*ps+9]
		got <- v
	}()
	select {
	case n := <-faults:
		if n != 3 {
			t.Fatalf("fault on page %d, want 3", n)
		}
	case b := <-got:
		t.Fatalf("the guest read %#x from a discarded page without faulting", b)
	}
	fresh := bytes.Repeat([]byte{0x5A}, ps)
	if placed, err := r.Place(3, fresh); !placed || err != nil {
		t.Fatalf("Place after Discard = %v, %v", placed, err)
	}
	if b := <-got; b != 0x5A {
		t.Fatalf("guest read %#x, want the new copy's 0x5a", b)
	}
	if err := r.ReadPage(3, buf); err != nil || !bytes.Equal(buf, fresh) {
		t.Fatalf("ReadPage = %v", err)
	}
}

package main

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/kvm/vmstate"
	"github.com/livemig/livemig/internal/kvm"
	"github.com/livemig/livemig/internal/kvm/guest"
)

// goHW is a stand-in for KVM in tests on machines without /dev/kvm: a
// vCPU that runs the guest program's loop (guest.S, as package guest's
// Model describes it: the random pattern) in Go, one whole batch per entry,
// over the same slots, parameter block and data region, and marks the
// pages it writes in a software dirty log. It is not a KVM guest: it tests
// the VMM's flows (runner, state, slots and Layout, engines, faultmem at
// the destination, the command's outcomes), not KVM's.
type goHW struct {
	layout *kvm.Layout
	kicked atomic.Bool
	dirty  *softDirty // nil at the destination
	loaded atomic.Bool
}

// Offsets of the parameter block, as guest.S lays it out.
const (
	pBaseA, pPagesA, pBaseB, pPagesB, pPerBatch = 4, 8, 12, 16, 20
	pCounter, pChecksum, pRNG                   = 64, 68, 76
)

// standIn is a newHardware that makes goHW.
func standIn(g geometry, _ []kvm.Slot, layout *kvm.Layout, dirtyLog string) (hardware, livemig.DirtySource, error) {
	h := &goHW{layout: layout}
	if dirtyLog == "" {
		return h, nil, nil
	}
	if err := guest.Load(layout, g.params); err != nil {
		return nil, nil, err
	}
	h.loaded.Store(true)
	h.dirty = &softDirty{bits: make([]uint64, livemig.WordsFor(layout.PageCount()))}
	return h, h.dirty, nil
}

func (h *goHW) kick() { h.kicked.Store(true) }

// enter runs one batch, as guest.S does between two OUTs.
func (h *goHW) enter() (step, error) {
	if h.kicked.Swap(false) {
		return stepInterrupted, nil
	}
	if !h.loaded.Load() {
		return 0, fmt.Errorf("stand-in vCPU entered before its state was loaded")
	}
	le := binary.LittleEndian
	p, err := h.layout.GPA(guest.ParamsGPA, kvm.PageSize)
	if err != nil {
		return 0, err
	}
	pagesA := le.Uint32(p[pPagesA:])
	n := pagesA + le.Uint32(p[pPagesB:])
	counter, sum, rng := le.Uint32(p[pCounter:]), le.Uint32(p[pChecksum:]), le.Uint32(p[pRNG:])
	for range le.Uint32(p[pPerBatch:]) {
		rng = rng*1103515245 + 12345
		pg := (rng >> 8) % n
		gpa := uint64(le.Uint32(p[pBaseA:])) + uint64(pg)*kvm.PageSize
		if pg >= pagesA {
			gpa = uint64(le.Uint32(p[pBaseB:])) + uint64(pg-pagesA)*kvm.PageSize
		}
		w, err := h.layout.GPA(gpa+uint64(counter&1023)*4, 4)
		if err != nil {
			return 0, err
		}
		v := counter<<16 + pg + 1
		sum += v - le.Uint32(w)
		le.PutUint32(w, v)
		h.mark(gpa) // after the store: a sync in between sees the page again
	}
	le.PutUint32(p[pRNG:], rng)
	le.PutUint32(p[pChecksum:], sum)
	le.PutUint32(p[pCounter:], counter+1)
	h.mark(guest.ParamsGPA)
	return stepBatch, nil
}

func (h *goHW) mark(gpa uint64) {
	if h.dirty == nil {
		return
	}
	n, err := h.layout.PageOfGPA(gpa)
	if err == nil {
		h.dirty.mark(n)
	}
}

// saveCPU: the stand-in keeps its whole state in guest memory; it saves
// the entry registers so that the state is a whole one.
func (h *goHW) saveCPU(s *vmstate.State) error {
	s.Regs = vmstate.Regs(guest.Regs())
	s.Sregs.CR0 = 0x11
	return nil
}

func (h *goHW) loadCPU(s *vmstate.State) error {
	if s.Regs.RIP != guest.CodeGPA || s.Sregs.CR0 != 0x11 {
		return fmt.Errorf("stand-in: state with RIP %#x, CR0 %#x", s.Regs.RIP, s.Sregs.CR0)
	}
	h.loaded.Store(true)
	return nil
}

func (h *goHW) close() error { return nil }

// softDirty is the stand-in's dirty log. The vCPU marks a page after its
// store (KVM marks it at the write fault, but the sync that clears the mark
// write-protects the page again, so a store after it marks it anew; a
// software log must mark after the store to be as safe).
type softDirty struct {
	mu   sync.Mutex
	bits []uint64
}

func (d *softDirty) mark(n uint64) {
	d.mu.Lock()
	d.bits[n/64] |= 1 << (n % 64)
	d.mu.Unlock()
}

func (d *softDirty) SyncDirty(dst []uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, w := range d.bits {
		dst[i] |= w
		d.bits[i] = 0
	}
	return nil
}

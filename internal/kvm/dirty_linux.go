//go:build linux && amd64

package kvm

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/livemig/livemig"
)

// startLog turns dirty logging on in every slot (the slot re-issued with
// KVM_MEM_LOG_DIRTY_PAGES) and fixes the slots until stopLog. It sets
// MANUAL_DIRTY_LOG_PROTECT2 to manual first (args[0] = 1, never
// INITIALLY_SET).
func (vm *VM) startLog(manual, ring bool) (*Layout, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	switch {
	case vm.closed:
		return nil, fmt.Errorf("kvm: start dirty log: %w", ErrClosed)
	case vm.logging:
		return nil, fmt.Errorf("kvm: start dirty log: one is running: %w", ErrBusy)
	case ring && vm.ringBytes == 0:
		return nil, fmt.Errorf("kvm: ring log without EnableDirtyRing before the first vCPU: %w", ErrBusy)
	case !ring && vm.ringBytes != 0:
		return nil, fmt.Errorf("kvm: bitmap log on a VM with dirty rings (KVM answers ENXIO): %w", ErrBusy)
	case len(vm.slots) == 0:
		return nil, fmt.Errorf("kvm: start dirty log on a VM without slots: %w", ErrBadInput)
	}
	l, err := vm.layoutLocked()
	if err != nil {
		return nil, err
	}
	if !ring && manual != vm.manual {
		if manual {
			flags, err := vm.CheckExtension(CapManualDirtyLogProtect2)
			if err != nil {
				return nil, err
			}
			if flags&manualProtectEnable == 0 {
				return nil, fmt.Errorf("kvm: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = %#x: %w", flags, livemig.ErrNotSupported)
			}
		}
		arg := uint64(0)
		if manual {
			arg = manualProtectEnable
		}
		if err := vm.enableCap(CapManualDirtyLogProtect2, arg); err != nil {
			return nil, err
		}
		vm.manual = manual
	}
	for i, s := range l.slots {
		if err := vm.setRegion(s, true); err != nil {
			for _, t := range l.slots[:i] {
				_ = vm.setRegion(t, false)
			}
			return nil, err
		}
	}
	vm.logging = true
	return l, nil
}

func (vm *VM) stopLog(l *Layout) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.closed {
		return nil
	}
	var first error
	for _, s := range l.slots {
		if err := vm.setRegion(s, false); err != nil && first == nil {
			first = err
		}
	}
	vm.logging = false
	return first
}

func (vm *VM) getDirtyLog(id uint32, buf []uint64) error {
	d := &dirtyLog{slot: id, bitmap: unsafe.Pointer(&buf[0])}
	_, err := ioctl(vm.fd, kvmGetDirtyLog, unsafe.Pointer(d))
	runtime.KeepAlive(buf)
	if err != nil {
		return fmt.Errorf("kvm: KVM_GET_DIRTY_LOG slot %d: %w", id, err)
	}
	return nil
}

// slotBufs returns one bitmap per slot of l, on the heap (the kernel
// writes them through a pointer stored as a u64: interfaces.md §8.11).
func slotBufs(l *Layout) [][]uint64 {
	b := make([][]uint64, len(l.slots))
	for i, s := range l.slots {
		b[i] = make([]uint64, livemig.WordsFor(s.Pages()))
	}
	return b
}

// BitmapLog is the plain KVM dirty bitmap (KVM_GET_DIRTY_LOG, which
// fetches, clears and re-protects atomically) as a livemig.DirtySource
// over the VM's Layout at the time it started. SyncDirty is called by one
// goroutine at a time (it serialises callers), while vCPUs run.
type BitmapLog struct {
	vm      *VM
	layout  *Layout
	mu      sync.Mutex
	bufs    [][]uint64
	stopped bool
}

var _ livemig.DirtySource = (*BitmapLog)(nil)

// StartBitmapLog turns logging on in every slot and returns the log. The
// first SyncDirty reports the writes made since this call. The VM's slots
// are fixed until Stop. Fails with ErrBusy if a log runs or the VM has
// dirty rings.
func (vm *VM) StartBitmapLog() (*BitmapLog, error) {
	l, err := vm.startLog(false, false)
	if err != nil {
		return nil, err
	}
	return &BitmapLog{vm: vm, layout: l, bufs: slotBufs(l)}, nil
}

// Layout returns the page numbering of the log's bitmaps.
func (b *BitmapLog) Layout() *Layout { return b.layout }

// SyncDirty ORs into dst (livemig numbering, Layout().PageCount() pages)
// the pages written since the previous call, and forgets them.
func (b *BitmapLog) SyncDirty(dst []uint64) error {
	if err := checkDst(dst, b.layout.pages); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return fmt.Errorf("kvm: bitmap log: %w", ErrClosed)
	}
	return getAll(b.vm, b.layout, b.bufs, dst)
}

// getAll fetches every slot's log into bufs (one per slot, in the
// layout's order) with KVM_GET_DIRTY_LOG and ORs it into dst in livemig
// numbering.
func getAll(vm *VM, l *Layout, bufs [][]uint64, dst []uint64) error {
	for i, s := range l.slots {
		if err := vm.getDirtyLog(s.ID, bufs[i]); err != nil {
			return err
		}
		orShifted(dst, bufs[i], l.base[i], s.Pages())
	}
	return nil
}

// Stop turns logging off; the slots may change again.
func (b *BitmapLog) Stop() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return nil
	}
	b.stopped = true
	return b.vm.stopLog(b.layout)
}

// ManualLog is the dirty bitmap with manual re-protection
// (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, args[0] = 1, without INITIALLY_SET):
// SyncDirty reads each slot's bitmap with KVM_GET_DIRTY_LOG, which no
// longer clears it, then clears and re-protects the pages it found with
// KVM_CLEAR_DIRTY_LOG, chunk by chunk (ChunkPages pages each, first_page a
// multiple of 64, clean chunks skipped), before it returns: the engine
// reads the pages only after SyncDirty, so a write made after a page's
// clear faults again and is reported next time. Concurrency as BitmapLog.
type ManualLog struct {
	BitmapLog
	chunk uint64
	// Clears counts the KVM_CLEAR_DIRTY_LOG calls made so far.
	Clears atomic.Uint64
}

var (
	_ livemig.DirtySource = (*ManualLog)(nil)
	_ livemig.DirtyPeeker = (*ManualLog)(nil)
)

// StartManualLog enables manual protection and logging in every slot.
// chunkPages is the clear chunk: 0 means DefaultClearChunkPages; it must
// be a multiple of 64 (ErrBadInput). KVM without the capability gives an
// error wrapping livemig.ErrNotSupported.
func (vm *VM) StartManualLog(chunkPages uint64) (*ManualLog, error) {
	if chunkPages == 0 {
		chunkPages = DefaultClearChunkPages
	}
	if chunkPages%64 != 0 || chunkPages > 1<<31 {
		return nil, fmt.Errorf("kvm: clear chunk of %d pages is not a multiple of 64 below 2^31: %w", chunkPages, ErrBadInput)
	}
	l, err := vm.startLog(true, false)
	if err != nil {
		return nil, err
	}
	return &ManualLog{BitmapLog: BitmapLog{vm: vm, layout: l, bufs: slotBufs(l)}, chunk: chunkPages}, nil
}

// SyncDirty ORs into dst the pages written since the previous call and
// re-protects them before returning.
func (m *ManualLog) SyncDirty(dst []uint64) error {
	if err := checkDst(dst, m.layout.pages); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return fmt.Errorf("kvm: manual log: %w", ErrClosed)
	}
	for i, s := range m.layout.slots {
		buf := m.bufs[i]
		if err := m.vm.getDirtyLog(s.ID, buf); err != nil {
			return err
		}
		if err := m.clear(s, buf); err != nil {
			return err
		}
		orShifted(dst, buf, m.layout.base[i], s.Pages())
	}
	return nil
}

// PeekDirty ORs into dst the pages written since the previous SyncDirty
// without clearing or re-protecting them (livemig.DirtyPeeker): with manual
// protection KVM_GET_DIRTY_LOG does not clear. The next SyncDirty reports
// them again.
func (m *ManualLog) PeekDirty(dst []uint64) error {
	if err := checkDst(dst, m.layout.pages); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return fmt.Errorf("kvm: manual log: %w", ErrClosed)
	}
	return getAll(m.vm, m.layout, m.bufs, dst)
}

// clear re-protects the pages set in buf, a chunk at a time.
func (m *ManualLog) clear(s Slot, buf []uint64) error {
	pages := s.Pages()
	for first := uint64(0); first < pages; first += m.chunk {
		n := min(m.chunk, pages-first)
		words := buf[first/64 : first/64+uint64(livemig.WordsFor(n))]
		if allZero(words) {
			continue
		}
		c := &clearDirtyLog{slot: s.ID, numPages: uint32(n), firstPage: first, bitmap: unsafe.Pointer(&words[0])}
		_, err := ioctl(m.vm.fd, kvmClearDirtyLog, unsafe.Pointer(c))
		runtime.KeepAlive(buf)
		if err != nil {
			return fmt.Errorf("kvm: KVM_CLEAR_DIRTY_LOG slot %d pages [%d,+%d): %w", s.ID, first, n, err)
		}
		m.Clears.Add(1)
	}
	return nil
}

func allZero(w []uint64) bool {
	for _, x := range w {
		if x != 0 {
			return false
		}
	}
	return true
}

// RingLog is the per-vCPU dirty ring as a livemig.DirtySource. SyncDirty
// harvests every vCPU's ring (in order, acquire/release on the entries'
// flags), resets the rings (KVM_RESET_DIRTY_RINGS, which re-protects the
// pages) and hands over the pages, together with those a vCPU harvested
// itself on a DIRTY_RING_FULL exit, all under the VM's ring lock; it is
// safe while vCPUs run. After a vCPU has left KVM_RUN, one SyncDirty
// reports everything it wrote.
type RingLog struct {
	vm      *VM
	layout  *Layout
	pending *pending // under vm.ringMu
	stopped bool     // under vm.ringMu
	full    atomic.Uint64
}

var _ livemig.DirtySource = (*RingLog)(nil)

// StartRingLog turns logging on in every slot and returns the ring log.
// The VM must have had EnableDirtyRing before its first vCPU (else
// ErrBusy).
func (vm *VM) StartRingLog() (*RingLog, error) {
	l, err := vm.startLog(false, true)
	if err != nil {
		return nil, err
	}
	r := &RingLog{vm: vm, layout: l, pending: newPending(l)}
	vm.ringMu.Lock()
	vm.ringLog = r
	vm.ringMu.Unlock()
	return r, nil
}

// Layout returns the page numbering of the log's bitmaps.
func (r *RingLog) Layout() *Layout { return r.layout }

// FullExits returns how many DIRTY_RING_FULL exits the vCPUs' Run handled
// while this log ran.
func (r *RingLog) FullExits() uint64 { return r.full.Load() }

// SyncDirty ORs into dst the pages written since the previous call.
func (r *RingLog) SyncDirty(dst []uint64) error {
	if err := checkDst(dst, r.layout.pages); err != nil {
		return err
	}
	vm := r.vm
	vm.ringMu.Lock()
	defer vm.ringMu.Unlock()
	if r.stopped {
		return fmt.Errorf("kvm: ring log: %w", ErrClosed)
	}
	vm.mu.Lock()
	vcpus := vm.vcpus
	vm.mu.Unlock()
	n := 0
	for _, c := range vcpus {
		if c.ring != nil {
			n += c.ring.harvest(r.pending)
		}
	}
	if n > 0 {
		if err := vm.resetRings(); err != nil {
			return err
		}
	}
	return r.pending.drain(dst)
}

func (vm *VM) resetRings() error {
	if _, err := ioctlVal(vm.fd, kvmResetDirtyRings, 0); err != nil {
		return fmt.Errorf("kvm: KVM_RESET_DIRTY_RINGS: %w", err)
	}
	return nil
}

// ringFull handles a DIRTY_RING_FULL exit of c: harvest its ring into the
// running log's pending pages and reset, so that c can re-enter.
func (vm *VM) ringFull(c *VCPU) error {
	vm.ringMu.Lock()
	defer vm.ringMu.Unlock()
	if c.ring == nil {
		return fmt.Errorf("kvm: vCPU %d: DIRTY_RING_FULL without a ring: %w", c.id, ErrBadInput)
	}
	var p *pending
	if l := vm.ringLog; l != nil {
		p = l.pending
		l.full.Add(1)
	}
	c.ring.harvest(p)
	return vm.resetRings()
}

// Stop turns logging off; the slots may change again.
func (r *RingLog) Stop() error {
	r.vm.ringMu.Lock()
	if r.stopped {
		r.vm.ringMu.Unlock()
		return nil
	}
	r.stopped = true
	if r.vm.ringLog == r {
		r.vm.ringLog = nil
	}
	r.vm.ringMu.Unlock()
	return r.vm.stopLog(r.layout)
}

package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/kvm/vmstate"
	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/internal/kvm"
	"github.com/livemig/livemig/internal/kvm/guest"
)

// The guest's geometry: two slots with a hole between them.
const (
	holeBytes = 1 << 20 // the hole between the slots
	perBatch  = 8       // pages the guest writes per batch
	guestSeed = 0x5eed  // its LCG's seed
	// minSlotPages keeps the parameter and code pages and a data page in
	// the first slot.
	minSlotPages = 4
	// runOnWait bounds the wait for the guest to show it runs on after the
	// resume.
	runOnWait = 30 * time.Second
)

// slotGeom is one memory slot: its ID, GPA and size.
type slotGeom struct {
	id   uint32
	gpa  uint64
	size uint64
}

// geometry is the guest's memory: its slots (laid out one after the other
// in one host mapping, so that livemig page n is byte n*4096 of it) and the
// guest program's parameters.
type geometry struct {
	slots  []slotGeom
	params guest.Params
}

// newGeometry splits memMiB MiB into two slots, the second 1 MiB above the
// end of the first, and puts the guest's data region over both.
func newGeometry(memMiB int) (geometry, error) {
	if memMiB <= 0 || memMiB > 1024 {
		return geometry{}, fmt.Errorf("-mem %d: want 1 to 1024 MiB", memMiB)
	}
	total := uint64(memMiB) << 20
	first := total / 2
	s0 := slotGeom{id: 0, gpa: 0, size: first}
	s1 := slotGeom{id: 1, gpa: first + holeBytes, size: total - first}
	if s0.size/kvm.PageSize < minSlotPages {
		return geometry{}, fmt.Errorf("-mem %d: too small", memMiB)
	}
	p := guest.Params{
		A:        guest.Range{GPA: guest.FirstDataGPA, Pages: uint32((s0.size - guest.FirstDataGPA) / kvm.PageSize)},
		B:        guest.Range{GPA: s1.gpa, Pages: uint32(s1.size / kvm.PageSize)},
		PerBatch: perBatch, Pattern: guest.Random, Seed: guestSeed,
	}
	return geometry{slots: []slotGeom{s0, s1}, params: p}, nil
}

// pages is the guest's page count.
func (g geometry) pages() uint64 {
	var n uint64
	for _, s := range g.slots {
		n += s.size / kvm.PageSize
	}
	return n
}

// bytes is the guest's memory size.
func (g geometry) bytes() int { return int(g.pages()) * kvm.PageSize }

// layout carves mem (g.bytes() long, page-aligned) into g's slots.
func (g geometry) layout(mem []byte) ([]kvm.Slot, *kvm.Layout, error) {
	if len(mem) != g.bytes() {
		return nil, nil, fmt.Errorf("slot memory of %d bytes, want %d", len(mem), g.bytes())
	}
	var slots []kvm.Slot
	off := uint64(0)
	for _, s := range g.slots {
		slots = append(slots, kvm.Slot{ID: s.id, GPA: s.gpa, Mem: mem[off : off+s.size : off+s.size]})
		off += s.size
	}
	l, err := kvm.NewLayout(slots)
	return slots, l, err
}

// checkLayout refuses a state whose slots are not g's.
func (g geometry) checkLayout(got []vmstate.Slot) error {
	if len(got) != len(g.slots) {
		return fmt.Errorf("the source's guest has %d slots, this one %d: give both sides the same -mem", len(got), len(g.slots))
	}
	for i, s := range g.slots {
		if o := got[i]; o.Slot != s.id || o.GPA != s.gpa || o.Size != s.size {
			return fmt.Errorf("the source's slot %d is [%#x,+%#x), this one's slot %d [%#x,+%#x): give both sides the same -mem",
				o.Slot, o.GPA, o.Size, s.id, s.gpa, s.size)
		}
	}
	return nil
}

func (g geometry) stateLayout() []vmstate.Slot {
	var out []vmstate.Slot
	for _, s := range g.slots {
		out = append(out, vmstate.Slot{Slot: s.id, GPA: s.gpa, Size: s.size})
	}
	return out
}

// hardware is what runs the guest: KVM (hw_kvm_linux.go), or a stand-in
// in tests on machines without /dev/kvm. The vcpu methods are the
// runner's; saveCPU and loadCPU run on the vCPU's goroutine while it is
// paused.
type hardware interface {
	vcpu
	saveCPU(s *vmstate.State) error
	loadCPU(s *vmstate.State) error
	close() error
}

// newHardware makes the VM of g over slots: at the source (dirtyLog not
// empty) with the guest loaded, its entry registers set and the dirty log
// started; at the destination with nothing loaded. Tests replace it.
var newHardware = newKVM

// probeHardware checks, before the destination listens, that it can run a
// guest; tests replace it with newHardware.
var probeHardware = func() error {
	sys, err := kvm.Open()
	if err == nil {
		sys.Close()
	}
	return err
}

// machine is one side's guest: its memory, its dirty log (source), its
// hardware and the runner of its vCPU. It is the side's livemig.VM.
type machine struct {
	g      geometry
	layout *kvm.Layout
	hw     hardware
	run    *runner
	dirty  livemig.DirtySource // source only
	sink   livemig.PageSink    // pre-copy destination only
	region *faultmem.Region    // post-copy destination only
	unmap  func() error

	mu       sync.Mutex
	pausedAt time.Time
	loaded   *vmstate.State // the state LoadState loaded (destination)
	resumed  time.Time      // when the destination resumed it
}

var _ livemig.VM = (*machine)(nil)

// newSourceMachine maps the guest's memory, loads the guest, and starts
// its VM (paused) with the dirty log of -dirty-log.
func newSourceMachine(o options, g geometry) (*machine, error) {
	mem, err := mapMemory(g.bytes())
	if err != nil {
		return nil, err
	}
	fill(mem)
	m, err := newMachine(o, g, mem, o.dirtyLog)
	if err != nil {
		_ = unmapMemory(mem)
		return nil, err
	}
	m.unmap = func() error { return unmapMemory(mem) }
	return m, nil
}

// fill writes a pattern into the guest's memory, as a booted guest's is
// not all zeros: one non-zero word per 64 bytes, every eighth page left
// zero (the guest's checksum starts from what it finds).
func fill(mem []byte) {
	for i := 0; i+8 <= len(mem); i += 64 {
		if (i/kvm.PageSize)%8 != 7 {
			binary.LittleEndian.PutUint64(mem[i:], uint64(i)*0x9E3779B97F4A7C15|1)
		}
	}
}

// newDestMachine maps the destination's slot memory, plain (onFault nil,
// pre-copy) or a userfaultfd region whose faults go to onFault (post-copy
// and hybrid), and creates its VM, paused and empty.
func newDestMachine(o options, g geometry, onFault func(uint64)) (*machine, error) {
	if onFault == nil {
		mem, err := mapMemory(g.bytes())
		if err != nil {
			return nil, err
		}
		m, err := newMachine(o, g, mem, "")
		if err != nil {
			_ = unmapMemory(mem)
			return nil, err
		}
		m.unmap = func() error { return unmapMemory(mem) }
		m.sink = flatSink(mem)
		return m, nil
	}
	r, err := faultmem.New(kvm.PageSize, g.pages(), faultmem.Config{OnFault: onFault, Logger: o.logger()})
	if err != nil {
		return nil, fmt.Errorf("userfaultfd memory: %w", err)
	}
	m, err := newMachine(o, g, r.Bytes(), "")
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	m.region = r
	m.unmap = r.Close
	return m, nil
}

func newMachine(o options, g geometry, mem []byte, dirtyLog string) (*machine, error) {
	slots, layout, err := g.layout(mem)
	if err != nil {
		return nil, err
	}
	hw, dirty, err := newHardware(g, slots, layout, dirtyLog)
	if err != nil {
		return nil, err
	}
	m := &machine{g: g, layout: layout, hw: hw, dirty: dirty}
	m.run = newRunner(hw, o.pauseTimeout, batchGap(o.rate))
	return m, nil
}

func mapMemory(n int) ([]byte, error) { return kvm.MapMemory(n) }
func unmapMemory(b []byte) error      { return kvm.UnmapMemory(b) }

// batchGap is the time between batches at rate batches per second (0: none).
func batchGap(rate float64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / rate)
}

// Pause kicks the vCPU out of the guest; once it returns, the guest writes
// no more, and the next SyncDirty reports its every write (the ring log
// harvests every ring a vCPU out of KVM_RUN filled).
func (m *machine) Pause(ctx context.Context) error {
	if err := m.run.Pause(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	m.pausedAt = time.Now()
	m.mu.Unlock()
	return nil
}

// Resume lets the vCPU run.
func (m *machine) Resume(ctx context.Context) error {
	if err := m.run.Resume(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	if m.resumed.IsZero() {
		m.resumed = time.Now()
	}
	m.mu.Unlock()
	return nil
}

// SaveState appends the vCPU's state, the slots and the guest's facts at
// the pause, in vmstate's format.
func (m *machine) SaveState(_ context.Context, dst []byte) ([]byte, error) {
	st := &vmstate.State{Layout: m.g.stateLayout()}
	if err := m.run.do(func() error { return m.hw.saveCPU(st) }); err != nil {
		return dst, fmt.Errorf("save the vCPU's state: %w", err)
	}
	counter, err := guest.Counter(m.layout)
	if err != nil {
		return dst, err
	}
	m.mu.Lock()
	st.Guest = &vmstate.Guest{PausedUnixNano: m.pausedAt.UnixNano(), Counter: uint64(counter),
		Batches: m.run.Batches(), Seed: uint64(m.g.params.Seed)}
	m.mu.Unlock()
	return vmstate.Append(dst, st)
}

// LoadState decodes state, checks that its slots are this guest's, and
// loads the vCPU's registers.
func (m *machine) LoadState(_ context.Context, state []byte) error {
	st, err := vmstate.Decode(state)
	if err != nil {
		return err
	}
	if err := m.g.checkLayout(st.Layout); err != nil {
		return fmt.Errorf("vmstate: %w: %w", err, livemig.ErrVersion)
	}
	if err := m.run.do(func() error { return m.hw.loadCPU(st) }); err != nil {
		return fmt.Errorf("load the vCPU's state: %w", err)
	}
	m.mu.Lock()
	m.loaded = st
	m.mu.Unlock()
	return nil
}

// counter reads the guest's counter.
func (m *machine) counter() (uint64, error) {
	c, err := guest.Counter(m.layout)
	return uint64(c), err
}

// fillPause puts the facts of the pause, as the state said them, and the
// resume's time into res.
func (m *machine) fillPause(res *destResult) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loaded == nil || m.loaded.Guest == nil {
		return
	}
	res.CounterAtPause = m.loaded.Guest.Counter
	if !m.resumed.IsZero() {
		res.DowntimeMS = ms(m.resumed.Sub(time.Unix(0, m.loaded.Guest.PausedUnixNano)))
	}
}

// checkRunOn waits until the resumed guest has finished a batch here, then,
// at the next batch's end (the guest's stores complete), reads its counter
// and checks its checksum. The counter must have grown past the pause's.
func (m *machine) checkRunOn(ctx context.Context, res *destResult) error {
	ctx, cancel := context.WithTimeout(ctx, runOnWait)
	defer cancel()
	if err := m.run.WaitBatches(ctx, 0); err != nil {
		return fmt.Errorf("the guest did not run on: %w", err)
	}
	var counter uint64
	var sumErr, cErr error
	err := m.run.atBatch(ctx, func() {
		counter, cErr = m.counter()
		sumErr = guest.Verify(m.layout, m.g.params)
	})
	if err != nil {
		return fmt.Errorf("the guest did not run on: %w", err)
	}
	res.CounterAfter, res.ChecksumOK = counter, sumErr == nil && cErr == nil
	switch {
	case cErr != nil:
		return cErr
	case sumErr != nil:
		return fmt.Errorf("its checksum is wrong: %w", sumErr)
	case counter <= res.CounterAtPause:
		return fmt.Errorf("its counter %d did not grow past %d, the pause's", counter, res.CounterAtPause)
	}
	return nil
}

// end tells o.observe whether the guest runs here, then closes m.
func (m *machine) end(o options, side string) {
	if o.observe != nil {
		o.observe(side, m.run.Running())
	}
	_ = m.Close()
}

// Close stops the vCPU and releases the VM and its memory. A vCPU blocked
// on a page that will never come (post-copy, link lost) is released by
// stopping the region's fault service.
func (m *machine) Close() error {
	var errs []error
	if m.region != nil && m.region.Missing() > 0 {
		// No page comes any more: release a vCPU waiting on one.
		errs = append(errs, m.region.Stop())
	}
	if err := m.run.Close(); err != nil && m.region != nil {
		_ = m.region.Stop()
		errs = append(errs, m.run.wait(runOnWait))
	} else if err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, m.hw.close())
	if m.unmap != nil {
		errs = append(errs, m.unmap())
	}
	return errors.Join(errs...)
}

// flatSink is the pre-copy destination's memory: the slots' one mapping,
// page n at byte n*4096.
type flatSink []byte

func (f flatSink) page(n uint64) ([]byte, error) {
	if n >= uint64(len(f))/kvm.PageSize {
		return nil, &livemig.PageError{Op: "write", Page: n, Err: livemig.ErrPageRange}
	}
	return f[n*kvm.PageSize : (n+1)*kvm.PageSize], nil
}

func (f flatSink) WritePage(n uint64, data []byte) error {
	p, err := f.page(n)
	if err != nil {
		return err
	}
	if len(data) != len(p) {
		return &livemig.PageError{Op: "write", Page: n, Err: fmt.Errorf("%d bytes, want %d", len(data), len(p))}
	}
	copy(p, data)
	return nil
}

func (f flatSink) ZeroPage(n uint64) error {
	p, err := f.page(n)
	if err != nil {
		return err
	}
	clear(p)
	return nil
}

func (f flatSink) ReadPage(n uint64, dst []byte) error {
	p, err := f.page(n)
	if err != nil {
		return err
	}
	copy(dst, p)
	return nil
}

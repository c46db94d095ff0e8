//go:build linux && amd64

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/kvm/vmstate"
	"github.com/livemig/livemig/internal/kvm"
	"github.com/livemig/livemig/internal/kvm/guest"
)

// ringBytes is the dirty ring's size per vCPU: 4096 entries.
const ringBytes = 64 << 10

// savedMSRs are the MSRs the state carries, those of them KVM saves
// (KVM_GET_MSR_INDEX_LIST): the TSC, SYSENTER, PAT and the syscall and
// segment-base MSRs. The guest, in 32-bit protected mode without system
// calls, uses none but the TSC; a guest of its own would list its own.
var savedMSRs = []uint32{0x10, 0x174, 0x175, 0x176, 0x277,
	0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084, 0xc0000100, 0xc0000101, 0xc0000102}

// kvmHW is a KVM VM with one vCPU.
type kvmHW struct {
	sys   *kvm.System
	vm    *kvm.VM
	cpu   *kvm.VCPU
	log   interface{ Stop() error } // the dirty log, nil if none
	msrs  []uint32
	xsave bool
}

// newKVM makes the VM of slots: with dirtyLog set (the source), the guest
// loaded into the slots' memory, its entry registers, and the dirty log
// started; without (the destination), an empty VM whose registers
// LoadState sets.
func newKVM(g geometry, slots []kvm.Slot, layout *kvm.Layout, dirtyLog string) (hw hardware, dirty livemig.DirtySource, err error) {
	h := &kvmHW{}
	defer func() {
		if err != nil {
			_ = h.close()
		}
	}()
	if h.sys, err = kvm.Open(); err != nil {
		return nil, nil, err
	}
	if h.vm, err = h.sys.NewVM(); err != nil {
		return nil, nil, err
	}
	for _, s := range slots {
		if err = h.vm.SetSlot(s); err != nil {
			return nil, nil, err
		}
	}
	if dirtyLog == "ring" {
		if err = h.vm.EnableDirtyRing(ringBytes); err != nil {
			return nil, nil, err
		}
	}
	if h.cpu, err = h.vm.NewVCPU(0); err != nil {
		return nil, nil, err
	}
	if err = h.probe(); err != nil {
		return nil, nil, err
	}
	if dirtyLog == "" {
		return h, nil, nil
	}
	if err = h.boot(g, layout); err != nil {
		return nil, nil, err
	}
	dirty, err = h.startLog(dirtyLog)
	return h, dirty, err
}

// probe learns which MSRs KVM saves and whether it has XSAVE.
func (h *kvmHW) probe() error {
	list, err := h.sys.MSRIndexList()
	if err != nil {
		return err
	}
	for _, m := range savedMSRs {
		if slices.Contains(list, m) {
			h.msrs = append(h.msrs, m)
		}
	}
	_, err = h.vm.XSaveSize()
	h.xsave = err == nil
	if err != nil && !errors.Is(err, livemig.ErrNotSupported) {
		return err
	}
	return nil
}

// boot loads the guest and sets its entry registers.
func (h *kvmHW) boot(g geometry, layout *kvm.Layout) error {
	if err := guest.Load(layout, g.params); err != nil {
		return err
	}
	s, err := h.cpu.Sregs()
	if err != nil {
		return err
	}
	if err := h.cpu.SetSregs(guest.Sregs(s)); err != nil {
		return err
	}
	return h.cpu.SetRegs(guest.Regs())
}

func (h *kvmHW) startLog(mode string) (livemig.DirtySource, error) {
	switch mode {
	case "bitmap":
		l, err := h.vm.StartBitmapLog()
		if err != nil {
			return nil, err
		}
		h.log = l
		return l, nil
	case "manual":
		l, err := h.vm.StartManualLog(0)
		if err != nil {
			return nil, err
		}
		h.log = l
		return l, nil
	case "ring":
		l, err := h.vm.StartRingLog()
		if err != nil {
			return nil, err
		}
		h.log = l
		return l, nil
	}
	return nil, fmt.Errorf("-dirty-log %q: want bitmap, manual or ring", mode)
}

// enter runs the guest to its next exit: the batch's OUT on guest.Port, a
// kick, or HLT; any other exit is an error naming it.
func (h *kvmHW) enter() (step, error) {
	e, err := h.cpu.Run(context.Background())
	if err != nil {
		return 0, err
	}
	switch {
	case e.Reason == kvm.ExitIntr:
		return stepInterrupted, nil
	case e.Reason == kvm.ExitIO && e.IO.Out && e.IO.Port == guest.Port:
		return stepBatch, nil
	case e.Reason == kvm.ExitHLT:
		return stepHalted, nil
	case e.Reason == kvm.ExitIO:
		return 0, fmt.Errorf("kvm: unexpected I/O exit on port %#x (out %v)", e.IO.Port, e.IO.Out)
	}
	return 0, fmt.Errorf("kvm: unexpected exit %v (hardware reason %#x, suberror %d)", e.Reason, e.HardwareReason, e.Suberror)
}

func (h *kvmHW) kick() { h.cpu.Kick() }

// saveCPU fills s with the vCPU's registers: general, special, FPU, XSAVE
// (if KVM has it) and the MSRs KVM saves.
func (h *kvmHW) saveCPU(s *vmstate.State) error {
	r, err := h.cpu.Regs()
	if err != nil {
		return err
	}
	s.Regs = vmstate.Regs(r)
	sr, err := h.cpu.Sregs()
	if err != nil {
		return err
	}
	s.Sregs = toStateSregs(sr)
	f, err := h.cpu.FPU()
	if err != nil {
		return err
	}
	s.FPU = append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&f)), vmstate.FPUSize)...)
	if h.xsave {
		if s.XSave, err = h.cpu.XSave(nil); err != nil {
			return err
		}
	}
	entries := make([]kvm.MSREntry, len(h.msrs))
	for i, m := range h.msrs {
		entries[i].Index = m
	}
	n, err := h.cpu.MSRs(entries)
	if err != nil {
		return err
	}
	if n != len(entries) {
		return fmt.Errorf("kvm: KVM_GET_MSRS read %d of %d MSRs, not %#x", n, len(entries), entries[n].Index)
	}
	s.MSRs = make([]vmstate.MSR, n)
	for i, e := range entries {
		s.MSRs[i] = vmstate.MSR{Index: e.Index, Value: e.Data}
	}
	return nil
}

// loadCPU sets the vCPU's registers from s: special registers first (the
// mode), then general, FPU, XSAVE and MSRs.
func (h *kvmHW) loadCPU(s *vmstate.State) error {
	if err := h.cpu.SetSregs(fromStateSregs(s.Sregs)); err != nil {
		return err
	}
	if err := h.cpu.SetRegs(kvm.Regs(s.Regs)); err != nil {
		return err
	}
	if s.FPU != nil {
		var f kvm.FPU
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&f)), vmstate.FPUSize), s.FPU)
		if err := h.cpu.SetFPU(f); err != nil {
			return err
		}
	}
	if s.XSave != nil {
		if !h.xsave {
			return fmt.Errorf("the state has XSAVE, this KVM has not: %w", livemig.ErrNotSupported)
		}
		if err := h.cpu.SetXSave(s.XSave); err != nil {
			return err
		}
	}
	entries := make([]kvm.MSREntry, len(s.MSRs))
	for i, m := range s.MSRs {
		entries[i] = kvm.MSREntry{Index: m.Index, Data: m.Value}
	}
	n, err := h.cpu.SetMSRs(entries)
	if err != nil {
		return err
	}
	if n != len(entries) {
		return fmt.Errorf("kvm: KVM_SET_MSRS refused MSR %#x (wrote %d of %d)", entries[n].Index, n, len(entries))
	}
	return nil
}

func toStateSregs(s kvm.Sregs) vmstate.Sregs {
	seg := func(g kvm.Segment) vmstate.Segment {
		return vmstate.Segment{Base: g.Base, Limit: g.Limit, Selector: g.Selector, Type: g.Type, Present: g.Present,
			DPL: g.DPL, DB: g.DB, S: g.S, L: g.L, G: g.G, AVL: g.AVL, Unu: g.Unusable}
	}
	return vmstate.Sregs{CS: seg(s.CS), DS: seg(s.DS), ES: seg(s.ES), FS: seg(s.FS), GS: seg(s.GS), SS: seg(s.SS),
		TR: seg(s.TR), LDT: seg(s.LDT), GDT: vmstate.DTable{Base: s.GDT.Base, Limit: s.GDT.Limit},
		IDT: vmstate.DTable{Base: s.IDT.Base, Limit: s.IDT.Limit}, CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4,
		CR8: s.CR8, EFER: s.EFER, APICBase: s.APICBase, InterruptBitmap: s.InterruptBitmap}
}

func fromStateSregs(s vmstate.Sregs) kvm.Sregs {
	seg := func(g vmstate.Segment) kvm.Segment {
		return kvm.Segment{Base: g.Base, Limit: g.Limit, Selector: g.Selector, Type: g.Type, Present: g.Present,
			DPL: g.DPL, DB: g.DB, S: g.S, L: g.L, G: g.G, AVL: g.AVL, Unusable: g.Unu}
	}
	return kvm.Sregs{CS: seg(s.CS), DS: seg(s.DS), ES: seg(s.ES), FS: seg(s.FS), GS: seg(s.GS), SS: seg(s.SS),
		TR: seg(s.TR), LDT: seg(s.LDT), GDT: kvm.DTable{Base: s.GDT.Base, Limit: s.GDT.Limit},
		IDT: kvm.DTable{Base: s.IDT.Base, Limit: s.IDT.Limit}, CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4,
		CR8: s.CR8, EFER: s.EFER, APICBase: s.APICBase, InterruptBitmap: s.InterruptBitmap}
}

// close stops the dirty log and closes the vCPU, the VM and /dev/kvm.
func (h *kvmHW) close() error {
	var errs []error
	if h.log != nil {
		errs = append(errs, h.log.Stop())
	}
	if h.vm != nil {
		errs = append(errs, h.vm.Close())
	}
	if h.sys != nil {
		errs = append(errs, h.sys.Close())
	}
	return errors.Join(errs...)
}

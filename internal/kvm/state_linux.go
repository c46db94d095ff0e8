//go:build linux && amd64

package kvm

import (
	"fmt"
	"unsafe"

	"github.com/livemig/livemig"
)

// XSaveSize returns the size of the vCPU's XSAVE state as KVM transfers
// it: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) if that is larger than 4096
// (then KVM_GET_XSAVE2 is used), else 4096; an error wrapping
// livemig.ErrNotSupported if KVM lacks KVM_CAP_XSAVE.
func (vm *VM) XSaveSize() (int, error) {
	has, err := vm.CheckExtension(CapXSave)
	if err != nil {
		return 0, err
	}
	if has == 0 {
		return 0, fmt.Errorf("kvm: KVM_CAP_XSAVE: %w", livemig.ErrNotSupported)
	}
	n, err := vm.CheckExtension(CapXSave2)
	if err != nil || n <= XSaveSize {
		return XSaveSize, nil
	}
	return n, nil
}

// XSave appends the vCPU's XSAVE state (KVM_GET_XSAVE or KVM_GET_XSAVE2,
// XSaveSize bytes) to dst and returns the extended slice.
func (c *VCPU) XSave(dst []byte) ([]byte, error) {
	n, err := c.vm.XSaveSize()
	if err != nil {
		return dst, err
	}
	req := uintptr(kvmGetXSave)
	if n > XSaveSize {
		req = kvmGetXSave2
	}
	buf := make([]uint32, n/4) // struct kvm_xsave is u32-aligned
	if err := c.get(req, unsafe.Pointer(&buf[0]), "KVM_GET_XSAVE"); err != nil {
		return dst, err
	}
	return append(dst, unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), n)...), nil
}

// SetXSave loads XSAVE state of XSaveSize bytes, as XSave produced it
// (KVM_SET_XSAVE). state belongs to the caller.
func (c *VCPU) SetXSave(state []byte) error {
	n, err := c.vm.XSaveSize()
	if err != nil {
		return err
	}
	if len(state) != n {
		return fmt.Errorf("kvm: vCPU %d: XSAVE state of %d bytes, need %d: %w", c.id, len(state), n, ErrBadInput)
	}
	buf := make([]uint32, n/4)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), n), state)
	return c.get(kvmSetXSave, unsafe.Pointer(&buf[0]), "KVM_SET_XSAVE")
}

// msrBuf lays out struct kvm_msrs { u32 nmsrs; u32 pad; struct
// kvm_msr_entry entries[]; } on the heap for entries.
func msrBuf(entries []MSREntry) []uint64 {
	buf := make([]uint64, 1+2*len(entries))
	buf[0] = uint64(len(entries))
	copy(unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[1])), len(entries)), entries)
	return buf
}

// MSRs reads the MSRs named by entries[i].Index into entries[i].Data
// (KVM_GET_MSRS) and returns how many it read: KVM stops at the first
// MSR it cannot read.
func (c *VCPU) MSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	buf := msrBuf(entries)
	c.kickMu.RLock()
	defer c.kickMu.RUnlock()
	if c.closed.Load() {
		return 0, fmt.Errorf("kvm: vCPU %d: KVM_GET_MSRS: %w", c.id, ErrClosed)
	}
	r, err := ioctl(c.fd, kvmGetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, fmt.Errorf("kvm: vCPU %d: KVM_GET_MSRS: %w", c.id, err)
	}
	copy(entries, unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[1])), len(entries)))
	return int(r), nil
}

// SetMSRs writes entries (KVM_SET_MSRS) and returns how many KVM wrote: it
// stops at the first MSR it refuses.
func (c *VCPU) SetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	buf := msrBuf(entries)
	c.kickMu.RLock()
	defer c.kickMu.RUnlock()
	if c.closed.Load() {
		return 0, fmt.Errorf("kvm: vCPU %d: KVM_SET_MSRS: %w", c.id, ErrClosed)
	}
	r, err := ioctl(c.fd, kvmSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, fmt.Errorf("kvm: vCPU %d: KVM_SET_MSRS: %w", c.id, err)
	}
	return int(r), nil
}

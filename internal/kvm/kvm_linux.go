//go:build linux && amd64

package kvm

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
)

// ioctl numbers: _IO/_IOR/_IOW/_IOWR(KVMIO = 0xAE, nr, struct) for x86-64,
// from include/uapi/linux/kvm.h (dir<<30 | size<<16 | 0xAE<<8 | nr, with
// dir 1 = write, 2 = read, 3 = both).
const (
	kvmGetAPIVersion       = 0xAE00     // _IO(0x00)
	kvmCreateVM            = 0xAE01     // _IO(0x01)
	kvmGetMSRIndexList     = 0xC004AE02 // _IOWR(0x02, struct kvm_msr_list: 4)
	kvmCheckExtension      = 0xAE03     // _IO(0x03)
	kvmGetVCPUMmapSize     = 0xAE04     // _IO(0x04)
	kvmCreateVCPU          = 0xAE41     // _IO(0x41)
	kvmGetDirtyLog         = 0x4010AE42 // _IOW(0x42, struct kvm_dirty_log: 16)
	kvmSetUserMemoryRegion = 0x4020AE46 // _IOW(0x46, struct kvm_userspace_memory_region: 32)
	kvmSetTSSAddr          = 0xAE47     // _IO(0x47)
	kvmRun                 = 0xAE80     // _IO(0x80)
	kvmGetRegs             = 0x8090AE81 // _IOR(0x81, struct kvm_regs: 144)
	kvmSetRegs             = 0x4090AE82 // _IOW(0x82, 144)
	kvmGetSregs            = 0x8138AE83 // _IOR(0x83, struct kvm_sregs: 312)
	kvmSetSregs            = 0x4138AE84 // _IOW(0x84, 312)
	kvmGetMSRs             = 0xC008AE88 // _IOWR(0x88, struct kvm_msrs: 8)
	kvmSetMSRs             = 0x4008AE89 // _IOW(0x89, 8)
	kvmGetFPU              = 0x81A0AE8C // _IOR(0x8c, struct kvm_fpu: 416)
	kvmSetFPU              = 0x41A0AE8D // _IOW(0x8d, 416)
	kvmEnableCap           = 0x4068AEA3 // _IOW(0xa3, struct kvm_enable_cap: 104)
	kvmGetXSave            = 0x9000AEA4 // _IOR(0xa4, struct kvm_xsave: 4096)
	kvmSetXSave            = 0x5000AEA5 // _IOW(0xa5, 4096)
	kvmGetXSave2           = 0x9000AECF // _IOR(0xcf, struct kvm_xsave: 4096)
	kvmClearDirtyLog       = 0xC018AEC0 // _IOWR(0xc0, struct kvm_clear_dirty_log: 24)
	kvmResetDirtyRings     = 0xAEC7     // _IO(0xc7)

	apiVersion = 12
)

// struct kvm_userspace_memory_region (32 bytes).
type userspaceMemoryRegion struct {
	slot          uint32
	flags         uint32
	guestPhysAddr uint64
	memorySize    uint64
	userspaceAddr uint64
}

// struct kvm_dirty_log (16 bytes). bitmap is declared as a Go pointer so
// the garbage collector sees it (interfaces.md §8.11); same layout.
type dirtyLog struct {
	slot   uint32
	pad    uint32
	bitmap unsafe.Pointer
}

// struct kvm_clear_dirty_log (24 bytes).
type clearDirtyLog struct {
	slot      uint32
	numPages  uint32
	firstPage uint64
	bitmap    unsafe.Pointer
}

// struct kvm_enable_cap (104 bytes).
type enableCap struct {
	cap   uint32
	flags uint32
	args  [4]uint64
	pad   [64]uint8
}

var (
	_ [32 - unsafe.Sizeof(userspaceMemoryRegion{})]struct{}
	_ [unsafe.Sizeof(userspaceMemoryRegion{}) - 32]struct{}
	_ [16 - unsafe.Sizeof(dirtyLog{})]struct{}
	_ [unsafe.Sizeof(dirtyLog{}) - 16]struct{}
	_ [24 - unsafe.Sizeof(clearDirtyLog{})]struct{}
	_ [unsafe.Sizeof(clearDirtyLog{}) - 24]struct{}
	_ [104 - unsafe.Sizeof(enableCap{})]struct{}
	_ [unsafe.Sizeof(enableCap{}) - 104]struct{}
)

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

func ioctlVal(fd int, req, val uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, val)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// System is an open /dev/kvm. Its methods are safe for concurrent use.
type System struct {
	fd      int
	runSize int // KVM_GET_VCPU_MMAP_SIZE
	mu      sync.Mutex
	closed  bool
}

// Open opens /dev/kvm and checks that it speaks API 12. When the machine
// has no usable KVM (no device, no permission) the error wraps
// livemig.ErrNotSupported.
func Open() (*System, error) {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) ||
			errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("kvm: open /dev/kvm: %w (%w)", livemig.ErrNotSupported, err)
		}
		return nil, fmt.Errorf("kvm: open /dev/kvm: %w", err)
	}
	v, err := ioctlVal(fd, kvmGetAPIVersion, 0)
	if err != nil || v != apiVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: /dev/kvm API version %d (err %v), need %d: %w", v, err, apiVersion, livemig.ErrNotSupported)
	}
	size, err := ioctlVal(fd, kvmGetVCPUMmapSize, 0)
	if err != nil || size < runMinSize {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE = %d (err %v): %w", size, err, livemig.ErrNotSupported)
	}
	return &System{fd: fd, runSize: int(size)}, nil
}

// CheckExtension returns KVM_CHECK_EXTENSION(cap) on /dev/kvm: 0 if the
// capability is absent, else a capability-specific value.
func (s *System) CheckExtension(cap int) (int, error) {
	r, err := ioctlVal(s.fd, kvmCheckExtension, uintptr(cap))
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_CHECK_EXTENSION(%d): %w", cap, err)
	}
	return int(r), nil
}

// MSRIndexList returns the MSRs KVM saves and restores
// (KVM_GET_MSR_INDEX_LIST).
func (s *System) MSRIndexList() ([]uint32, error) {
	n := uint32(64)
	for range 4 {
		buf := make([]uint32, 1+n) // struct kvm_msr_list { u32 nmsrs; u32 indices[]; }
		buf[0] = n
		_, err := ioctl(s.fd, kvmGetMSRIndexList, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			n = buf[0]
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		return buf[1 : 1+buf[0]], nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST keeps growing past %d: %w", n, ErrBadInput)
}

// NewVM creates a VM (KVM_CREATE_VM, type 0). The VM keeps s's descriptor
// in use: close the VM before s.
func (s *System) NewVM() (*VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("kvm: NewVM: %w", ErrClosed)
	}
	fd, err := ioctlVal(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	return &VM{sys: s, fd: int(fd)}, nil
}

// Close closes /dev/kvm. VMs made from s stay valid (the kernel holds its
// own references) but should be closed first.
func (s *System) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return unix.Close(s.fd)
}

// MapMemory maps size bytes (rounded up to PageSize) of anonymous, shared,
// zeroed memory for a slot. The caller owns it and unmaps it with
// UnmapMemory after the VM is closed.
func MapMemory(size int) ([]byte, error) {
	if size <= 0 {
		return nil, fmt.Errorf("kvm: map %d bytes: %w", size, ErrBadInput)
	}
	size = (size + PageSize - 1) &^ (PageSize - 1)
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("kvm: map %d bytes: %w", size, err)
	}
	return b, nil
}

// UnmapMemory unmaps memory from MapMemory.
func UnmapMemory(b []byte) error { return unix.Munmap(b) }

// VM is a KVM virtual machine. Its methods are safe for concurrent use.
type VM struct {
	sys *System
	fd  int

	mu        sync.Mutex // guards the fields below
	slots     map[uint32]Slot
	vcpus     []*VCPU
	logging   bool // a dirty log is running
	manual    bool // MANUAL_DIRTY_LOG_PROTECT2 enabled
	ringBytes int  // dirty ring size per vCPU, 0: off
	closed    bool

	// ringMu serialises every harvest of the dirty rings with the
	// KVM_RESET_DIRTY_RINGS after it and with the hand-over of the pending
	// pages to SyncDirty: a page may leave pending only after the reset
	// that re-protected it, or a write made between the harvest and the
	// reset by another vCPU would be lost. It guards ringLog, every ring's
	// harvest index and the pending bitmaps.
	ringMu  sync.Mutex
	ringLog *RingLog
}

// CheckExtension returns KVM_CHECK_EXTENSION(cap) on the VM (some
// capabilities, such as the dirty ring's size, are per VM).
func (vm *VM) CheckExtension(cap int) (int, error) {
	r, err := ioctlVal(vm.fd, kvmCheckExtension, uintptr(cap))
	if err != nil {
		return 0, fmt.Errorf("kvm: VM KVM_CHECK_EXTENSION(%d): %w", cap, err)
	}
	return int(r), nil
}

func (vm *VM) enableCap(cap uint32, arg0 uint64) error {
	c := &enableCap{cap: cap, args: [4]uint64{arg0}}
	if _, err := ioctl(vm.fd, kvmEnableCap, unsafe.Pointer(c)); err != nil {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP(%d, %#x): %w", cap, arg0, err)
	}
	return nil
}

// SetTSSAddr sets the three-page TSS region KVM needs on Intel hosts to run
// real mode (KVM_SET_TSS_ADDR); call it before the first vCPU runs.
func (vm *VM) SetTSSAddr(gpa uint64) error {
	if _, err := ioctlVal(vm.fd, kvmSetTSSAddr, uintptr(gpa)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSS_ADDR(%#x): %w", gpa, err)
	}
	return nil
}

func (vm *VM) setRegion(s Slot, log bool) error {
	r := &userspaceMemoryRegion{slot: s.ID, guestPhysAddr: s.GPA,
		memorySize: uint64(len(s.Mem)), userspaceAddr: uint64(addrOf(s.Mem))}
	if s.ReadOnly {
		r.flags |= memReadonly
	}
	if log {
		r.flags |= memLogDirtyPages
	}
	_, err := ioctl(vm.fd, kvmSetUserMemoryRegion, unsafe.Pointer(r))
	if err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION slot %d [%#x,+%#x) flags %#x: %w",
			s.ID, s.GPA, len(s.Mem), r.flags, err)
	}
	return nil
}

// SetSlot adds slot s to the VM, or replaces the slot of the same ID (the
// old one is deleted first). s.Mem stays the caller's (see Slot). It fails
// with ErrBusy while a dirty log runs, and with ErrBadInput if s overlaps
// another slot or is not aligned.
func (vm *VM) SetSlot(s Slot) error {
	if err := checkSlot(s); err != nil {
		return err
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	switch {
	case vm.closed:
		return fmt.Errorf("kvm: SetSlot %d: %w", s.ID, ErrClosed)
	case vm.logging:
		return fmt.Errorf("kvm: SetSlot %d while a dirty log runs: %w", s.ID, ErrBusy)
	}
	next := make([]Slot, 0, len(vm.slots)+1)
	for id, o := range vm.slots {
		if id != s.ID {
			next = append(next, o)
		}
	}
	if _, err := NewLayout(append(next, s)); err != nil {
		return err
	}
	if old, ok := vm.slots[s.ID]; ok {
		del := &userspaceMemoryRegion{slot: s.ID, guestPhysAddr: old.GPA}
		if _, err := ioctl(vm.fd, kvmSetUserMemoryRegion, unsafe.Pointer(del)); err != nil {
			return fmt.Errorf("kvm: delete slot %d: %w", s.ID, err)
		}
		delete(vm.slots, s.ID)
	}
	if err := vm.setRegion(s, false); err != nil {
		return err
	}
	if vm.slots == nil {
		vm.slots = make(map[uint32]Slot)
	}
	vm.slots[s.ID] = s
	return nil
}

// Layout returns the layout of the VM's slots in ascending slot ID order.
func (vm *VM) Layout() (*Layout, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.layoutLocked()
}

func (vm *VM) layoutLocked() (*Layout, error) {
	slots := make([]Slot, 0, len(vm.slots))
	for _, s := range vm.slots {
		slots = append(slots, s)
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].ID < slots[j].ID })
	return NewLayout(slots)
}

// DirtyRingMaxBytes returns the largest dirty ring per vCPU, in bytes,
// that KVM offers (KVM_CAP_DIRTY_LOG_RING, else _ACQ_REL), and which of
// the two capabilities offers it; 0 if neither.
func (vm *VM) DirtyRingMaxBytes() (bytes int, cap uint32, err error) {
	for _, c := range []uint32{CapDirtyLogRing, CapDirtyLogRingAcqRel} {
		n, err := vm.CheckExtension(int(c))
		if err != nil {
			return 0, 0, err
		}
		if n > 0 {
			return n, c, nil
		}
	}
	return 0, 0, nil
}

// EnableDirtyRing enables the per-vCPU dirty ring of bytes bytes (a power
// of two, at least one page and at least 64 entries of 16 bytes, at most
// DirtyRingMaxBytes). It must be called before the first NewVCPU (else
// ErrBusy); the VM then tracks dirty pages only by rings (StartRingLog).
// KVM lacking the ring gives an error wrapping livemig.ErrNotSupported.
func (vm *VM) EnableDirtyRing(bytes int) error {
	max, cap, err := vm.DirtyRingMaxBytes()
	if err != nil {
		return err
	}
	if max == 0 {
		return fmt.Errorf("kvm: dirty ring: %w", livemig.ErrNotSupported)
	}
	if bytes < PageSize || bytes < dirtyRingReserved*ringEntrySize || bytes&(bytes-1) != 0 || bytes > max {
		return fmt.Errorf("kvm: dirty ring of %d bytes: need a power of two in [%d, %d]: %w",
			bytes, PageSize, max, ErrBadInput)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if len(vm.vcpus) > 0 || vm.ringBytes != 0 || vm.logging {
		return fmt.Errorf("kvm: dirty ring enabled after a vCPU, a log or a ring: %w", ErrBusy)
	}
	if err := vm.enableCap(cap, uint64(bytes)); err != nil {
		return err
	}
	vm.ringBytes = bytes
	return nil
}

// Close closes the VM's vCPUs and the VM. Slot memory stays mapped (it is
// the caller's).
func (vm *VM) Close() error {
	vm.mu.Lock()
	if vm.closed {
		vm.mu.Unlock()
		return nil
	}
	vm.closed = true
	vcpus := vm.vcpus
	vm.vcpus = nil
	vm.mu.Unlock()
	var errs []error
	for _, c := range vcpus {
		errs = append(errs, c.Close())
	}
	errs = append(errs, unix.Close(vm.fd))
	return errors.Join(errs...)
}

//go:build linux && amd64

package kvm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VCPU is a virtual CPU. Run is called by one goroutine at a time (the
// vCPU's); Kick and Close may be called from any goroutine. The state
// methods (Regs, SetSregs, ...) may be called from any goroutine; KVM
// serialises them with Run, so they block while the vCPU is in KVM_RUN:
// call them while it is stopped.
type VCPU struct {
	vm  *VM
	fd  int
	id  int
	run []byte // the kvm_run mapping (vm.sys.runSize bytes)

	ring *ring // the dirty ring mapping, nil if none; vm.ringMu guards it

	tid    atomic.Int32 // the thread in Run, 0 outside Run
	kicked atomic.Bool  // a Kick not yet reported as ExitIntr

	runMu  sync.Mutex // held by Run; Close takes it to wait for Run
	closed atomic.Bool
	// kickMu is held shared by Kick while it touches the kvm_run page and
	// exclusively by Close while it unmaps it, so a Kick racing with Close
	// (from a context's AfterFunc, say) never writes to an unmapped page.
	kickMu sync.RWMutex
}

// NewVCPU creates vCPU id (KVM_CREATE_VCPU) and maps its kvm_run page and,
// if the VM has a dirty ring, its ring.
func (vm *VM) NewVCPU(id int) (*VCPU, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.closed {
		return nil, fmt.Errorf("kvm: NewVCPU %d: %w", id, ErrClosed)
	}
	fd, err := ioctlVal(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU(%d): %w", id, err)
	}
	c := &VCPU{vm: vm, fd: int(fd), id: id}
	c.run, err = unix.Mmap(c.fd, 0, vm.sys.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(c.fd)
		return nil, fmt.Errorf("kvm: vCPU %d: map kvm_run (%d bytes): %w", id, vm.sys.runSize, err)
	}
	if vm.ringBytes > 0 {
		mem, err := unix.Mmap(c.fd, dirtyRingPageOffset*PageSize, vm.ringBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			unix.Munmap(c.run)
			unix.Close(c.fd)
			return nil, fmt.Errorf("kvm: vCPU %d: map dirty ring (%d bytes): %w", id, vm.ringBytes, err)
		}
		c.ring = &ring{mem: mem, count: uint32(vm.ringBytes / ringEntrySize)}
	}
	vm.vcpus = append(vm.vcpus, c)
	return c, nil
}

// ID returns the vCPU's id.
func (c *VCPU) ID() int { return c.id }

// setImmediateExit stores v in kvm_run.immediate_exit. The store covers
// the aligned word of bytes 0-3 (request_interrupt_window, immediate_exit,
// padding), so that it is one atomic store; this package never requests
// an interrupt window, so byte 0 stays 0.
func (c *VCPU) setImmediateExit(v bool) {
	var w uint32
	if v {
		w = 1 << (8 * runImmediateExit)
	}
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&c.run[0])), w)
}

// Kick makes the vCPU leave KVM_RUN: Run returns an Exit with reason
// ExitIntr, within the time a signal takes to reach a thread, whatever the
// guest does (a guest in a tight loop without exits included).
//
// How: Kick records the kick, sets kvm_run.immediate_exit (so a KVM_RUN
// about to start returns at once) and sends SIGURG with tgkill to the
// thread Run is locked to (so a KVM_RUN under way returns EINTR). SIGURG
// is the Go runtime's own preemption signal, which every Go program
// tolerates at any time. A kick that arrives while the vCPU is outside
// KVM_RUN is not lost: the next Run returns ExitIntr at once. Kick of a
// closed vCPU does nothing.
func (c *VCPU) Kick() {
	c.kickMu.RLock()
	defer c.kickMu.RUnlock()
	if c.closed.Load() {
		return
	}
	// Order matters (Run does the reverse): kicked before immediate_exit,
	// so a Run that clears immediate_exit after this store sees kicked.
	c.kicked.Store(true)
	c.setImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		_ = unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// Run enters the guest (KVM_RUN) and returns its next exit for the caller
// to handle: IO, MMIO, HLT, SHUTDOWN, FAIL_ENTRY, INTERNAL_ERROR and the
// rest as decoded in Exit. Exit's slices alias the kvm_run page and are
// valid until the next Run or Close. Run handles two exits itself:
// DIRTY_RING_FULL (it harvests the vCPU's ring into the running ring log,
// resets the rings and re-enters, so no write is lost) and EINTR from a
// stray signal (it re-enters).
//
// A Kick, or ctx being done, makes Run return ExitIntr; with ctx done the
// error is ctx.Err() (the exit is still ExitIntr). Run locks its goroutine
// to its thread while it runs, so that Kick can signal that thread.
func (c *VCPU) Run(ctx context.Context) (Exit, error) {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	if c.closed.Load() {
		return Exit{}, fmt.Errorf("kvm: vCPU %d: Run: %w", c.id, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return Exit{Reason: ExitIntr}, err
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, c.Kick)
		defer stop()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.tid.Store(int32(unix.Gettid()))
	defer c.tid.Store(0)
	for {
		_, err := ioctlVal(c.fd, kvmRun, 0)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			// Clear immediate_exit before consuming the kick (Kick sets
			// them in the other order), so no kick is ever dropped.
			c.setImmediateExit(false)
			if c.kicked.Swap(false) {
				return Exit{Reason: ExitIntr}, ctx.Err()
			}
			continue
		}
		if err != nil {
			return Exit{}, fmt.Errorf("kvm: vCPU %d: KVM_RUN: %w", c.id, err)
		}
		e, err := decodeExit(c.run)
		if err != nil {
			return e, fmt.Errorf("kvm: vCPU %d: %w", c.id, err)
		}
		if e.Reason == ExitDirtyRingFull {
			if err := c.vm.ringFull(c); err != nil {
				return e, err
			}
			continue
		}
		return e, nil
	}
}

// Close kicks the vCPU out of Run, waits for Run to return, harvests its
// dirty ring into the running ring log, and unmaps and closes it.
func (c *VCPU) Close() error {
	c.kickMu.RLock()
	if c.closed.Swap(true) {
		c.kickMu.RUnlock()
		return nil
	}
	c.kicked.Store(true)
	c.setImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		_ = unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
	c.kickMu.RUnlock()
	c.runMu.Lock()
	defer c.runMu.Unlock()
	c.kickMu.Lock() // no Kick is touching kvm_run
	defer c.kickMu.Unlock()
	var errs []error
	c.vm.ringMu.Lock()
	if c.ring != nil {
		if l := c.vm.ringLog; l != nil {
			c.ring.harvest(l.pending)
		}
		errs = append(errs, unix.Munmap(c.ring.mem))
		c.ring = nil
	}
	c.vm.ringMu.Unlock()
	errs = append(errs, unix.Munmap(c.run), unix.Close(c.fd))
	c.run = nil
	return errors.Join(errs...)
}

func (c *VCPU) get(req uintptr, p unsafe.Pointer, what string) error {
	c.kickMu.RLock() // keeps Close from closing the fd under this call
	defer c.kickMu.RUnlock()
	if c.closed.Load() {
		return fmt.Errorf("kvm: vCPU %d: %s: %w", c.id, what, ErrClosed)
	}
	if _, err := ioctl(c.fd, req, p); err != nil {
		return fmt.Errorf("kvm: vCPU %d: %s: %w", c.id, what, err)
	}
	return nil
}

// Regs returns the general registers (KVM_GET_REGS).
func (c *VCPU) Regs() (Regs, error) {
	r := new(Regs)
	err := c.get(kvmGetRegs, unsafe.Pointer(r), "KVM_GET_REGS")
	return *r, err
}

// SetRegs sets the general registers (KVM_SET_REGS).
func (c *VCPU) SetRegs(r Regs) error {
	p := &r
	return c.get(kvmSetRegs, unsafe.Pointer(p), "KVM_SET_REGS")
}

// Sregs returns the special registers (KVM_GET_SREGS).
func (c *VCPU) Sregs() (Sregs, error) {
	s := new(Sregs)
	err := c.get(kvmGetSregs, unsafe.Pointer(s), "KVM_GET_SREGS")
	return *s, err
}

// SetSregs sets the special registers (KVM_SET_SREGS).
func (c *VCPU) SetSregs(s Sregs) error {
	p := &s
	return c.get(kvmSetSregs, unsafe.Pointer(p), "KVM_SET_SREGS")
}

// FPU returns the x87/SSE state (KVM_GET_FPU).
func (c *VCPU) FPU() (FPU, error) {
	f := new(FPU)
	err := c.get(kvmGetFPU, unsafe.Pointer(f), "KVM_GET_FPU")
	return *f, err
}

// SetFPU sets the x87/SSE state (KVM_SET_FPU).
func (c *VCPU) SetFPU(f FPU) error {
	p := &f
	return c.get(kvmSetFPU, unsafe.Pointer(p), "KVM_SET_FPU")
}

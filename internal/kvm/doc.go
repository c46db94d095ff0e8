// Package kvm is a thin layer over Linux KVM for x86-64 (/dev/kvm), built
// for livemig's mini-VMM and for measuring KVM's dirty logs: a VM with
// several memory slots, vCPUs that run and exit with their exits decoded,
// the vCPU state ioctls, a Layout that numbers the slots' pages the way
// livemig numbers a guest's pages, and three livemig.DirtySource
// implementations over KVM's dirty logs (the plain bitmap, the bitmap with
// manual re-protection, and the per-vCPU dirty ring).
//
// golang.org/x/sys/unix defines none of the KVM ioctls or structs, so they
// are defined here by hand from Linux's include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h (x86-64 layouts, sizes asserted at
// compile time and in tests). The package builds on Linux/amd64; elsewhere
// Open returns an error matching livemig.ErrNotSupported.
//
// # Usage
//
//	sys, err := kvm.Open()             // /dev/kvm, API 12
//	vm, err := sys.NewVM()
//	mem, err := kvm.MapMemory(1 << 20) // caller-owned slot memory
//	err = vm.SetSlot(kvm.Slot{ID: 0, GPA: 0, Mem: mem})
//	// vm.EnableDirtyRing(64 << 10) here, before the first vCPU, for StartRingLog
//	cpu, err := vm.NewVCPU(0)
//	log, err := vm.StartBitmapLog()    // or StartManualLog(0), StartRingLog()
//	exit, err := cpu.Run(ctx)          // one exit; cpu.Kick() from elsewhere
//	err = log.SyncDirty(dst)           // dst in livemig numbering: log.Layout()
//
// The Layout numbers the slots' pages for livemig: slots in ascending ID
// order, each slot's pages consecutive, the GPA holes between slots
// skipped. It is also the guest's livemig.Memory and livemig.PageView.
//
// What KVM reports: every page the guest wrote since the previous sync,
// and possibly a few it only read or fetched for the first time since
// logging started (KVM may map such a page writable at once and mark it
// dirty; seen with Linux 6.1 kvm-amd). Never fewer.
//
// # Ownership and order
//
// Slot memory belongs to the caller, who maps it (MapMemory or any
// page-aligned mmap) and unmaps it only after the VM is closed. A VM's
// methods may be called from any goroutine, but slots are fixed once a dirty
// log starts (SetSlot then fails with ErrBusy). A VCPU runs on one
// goroutine at a time; Kick may be called from any goroutine. Close the
// vCPUs, then the VM, then the System; Close of a VM closes the vCPUs it
// still has.
package kvm

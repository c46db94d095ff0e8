//go:build !linux || !amd64

package kvm

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/livemig/livemig"
)

func errNotSupported() error {
	return fmt.Errorf("kvm: KVM on %s/%s: %w", runtime.GOOS, runtime.GOARCH, livemig.ErrNotSupported)
}

// System is an open /dev/kvm. On this platform none can be opened.
type System struct{}

// Open returns an error matching livemig.ErrNotSupported on this platform.
func Open() (*System, error) { return nil, errNotSupported() }

// CheckExtension returns an error matching livemig.ErrNotSupported.
func (s *System) CheckExtension(cap int) (int, error) { return 0, errNotSupported() }

// MSRIndexList returns an error matching livemig.ErrNotSupported.
func (s *System) MSRIndexList() ([]uint32, error) { return nil, errNotSupported() }

// NewVM returns an error matching livemig.ErrNotSupported.
func (s *System) NewVM() (*VM, error) { return nil, errNotSupported() }

// Close does nothing.
func (s *System) Close() error { return nil }

// MapMemory returns an error matching livemig.ErrNotSupported.
func MapMemory(size int) ([]byte, error) { return nil, errNotSupported() }

// UnmapMemory returns an error matching livemig.ErrNotSupported.
func UnmapMemory(b []byte) error { return errNotSupported() }

// VM is a KVM virtual machine; none exists on this platform.
type VM struct{}

// CheckExtension returns an error matching livemig.ErrNotSupported.
func (vm *VM) CheckExtension(cap int) (int, error) { return 0, errNotSupported() }

// SetTSSAddr returns an error matching livemig.ErrNotSupported.
func (vm *VM) SetTSSAddr(gpa uint64) error { return errNotSupported() }

// SetSlot returns an error matching livemig.ErrNotSupported.
func (vm *VM) SetSlot(s Slot) error { return errNotSupported() }

// Layout returns an error matching livemig.ErrNotSupported.
func (vm *VM) Layout() (*Layout, error) { return nil, errNotSupported() }

// DirtyRingMaxBytes returns an error matching livemig.ErrNotSupported.
func (vm *VM) DirtyRingMaxBytes() (int, uint32, error) { return 0, 0, errNotSupported() }

// EnableDirtyRing returns an error matching livemig.ErrNotSupported.
func (vm *VM) EnableDirtyRing(bytes int) error { return errNotSupported() }

// XSaveSize returns an error matching livemig.ErrNotSupported.
func (vm *VM) XSaveSize() (int, error) { return 0, errNotSupported() }

// NewVCPU returns an error matching livemig.ErrNotSupported.
func (vm *VM) NewVCPU(id int) (*VCPU, error) { return nil, errNotSupported() }

// StartBitmapLog returns an error matching livemig.ErrNotSupported.
func (vm *VM) StartBitmapLog() (*BitmapLog, error) { return nil, errNotSupported() }

// StartManualLog returns an error matching livemig.ErrNotSupported.
func (vm *VM) StartManualLog(chunkPages uint64) (*ManualLog, error) { return nil, errNotSupported() }

// StartRingLog returns an error matching livemig.ErrNotSupported.
func (vm *VM) StartRingLog() (*RingLog, error) { return nil, errNotSupported() }

// Close does nothing.
func (vm *VM) Close() error { return nil }

// VCPU is a virtual CPU; none exists on this platform.
type VCPU struct{}

// ID returns 0.
func (c *VCPU) ID() int { return 0 }

// Kick does nothing.
func (c *VCPU) Kick() {}

// Run returns an error matching livemig.ErrNotSupported.
func (c *VCPU) Run(ctx context.Context) (Exit, error) { return Exit{}, errNotSupported() }

// Close does nothing.
func (c *VCPU) Close() error { return nil }

// Regs returns an error matching livemig.ErrNotSupported.
func (c *VCPU) Regs() (Regs, error) { return Regs{}, errNotSupported() }

// SetRegs returns an error matching livemig.ErrNotSupported.
func (c *VCPU) SetRegs(r Regs) error { return errNotSupported() }

// Sregs returns an error matching livemig.ErrNotSupported.
func (c *VCPU) Sregs() (Sregs, error) { return Sregs{}, errNotSupported() }

// SetSregs returns an error matching livemig.ErrNotSupported.
func (c *VCPU) SetSregs(s Sregs) error { return errNotSupported() }

// FPU returns an error matching livemig.ErrNotSupported.
func (c *VCPU) FPU() (FPU, error) { return FPU{}, errNotSupported() }

// SetFPU returns an error matching livemig.ErrNotSupported.
func (c *VCPU) SetFPU(f FPU) error { return errNotSupported() }

// XSave returns an error matching livemig.ErrNotSupported.
func (c *VCPU) XSave(dst []byte) ([]byte, error) { return dst, errNotSupported() }

// SetXSave returns an error matching livemig.ErrNotSupported.
func (c *VCPU) SetXSave(state []byte) error { return errNotSupported() }

// MSRs returns an error matching livemig.ErrNotSupported.
func (c *VCPU) MSRs(entries []MSREntry) (int, error) { return 0, errNotSupported() }

// SetMSRs returns an error matching livemig.ErrNotSupported.
func (c *VCPU) SetMSRs(entries []MSREntry) (int, error) { return 0, errNotSupported() }

// BitmapLog is KVM's dirty bitmap; none exists on this platform.
type BitmapLog struct{}

// Layout returns nil.
func (b *BitmapLog) Layout() *Layout { return nil }

// SyncDirty returns an error matching livemig.ErrNotSupported.
func (b *BitmapLog) SyncDirty(dst []uint64) error { return errNotSupported() }

// Stop does nothing.
func (b *BitmapLog) Stop() error { return nil }

// ManualLog is KVM's manually protected dirty bitmap; none exists here.
type ManualLog struct {
	BitmapLog
	Clears atomic.Uint64
}

// PeekDirty returns an error matching livemig.ErrNotSupported.
func (m *ManualLog) PeekDirty(dst []uint64) error { return errNotSupported() }

// RingLog is KVM's dirty ring; none exists on this platform.
type RingLog struct{}

// Layout returns nil.
func (r *RingLog) Layout() *Layout { return nil }

// FullExits returns 0.
func (r *RingLog) FullExits() uint64 { return 0 }

// SyncDirty returns an error matching livemig.ErrNotSupported.
func (r *RingLog) SyncDirty(dst []uint64) error { return errNotSupported() }

// Stop does nothing.
func (r *RingLog) Stop() error { return nil }

package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// Sentinel errors of this package. Match them with errors.Is.
var (
	// ErrBusy: the call conflicts with the VM's state (a slot change while
	// a dirty log runs, a dirty ring enabled after the first vCPU, a second
	// dirty log).
	ErrBusy = errors.New("kvm: busy")
	// ErrClosed: the VM or vCPU was closed.
	ErrClosed = errors.New("kvm: closed")
	// ErrBadInput: an argument is invalid (unaligned memory, overlapping
	// slots, a bad ring size, a truncated kvm_run).
	ErrBadInput = errors.New("kvm: bad input")
)

// PageSize is the size of a guest page as KVM's dirty logs count it.
const PageSize = 4096

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*, include/uapi/linux/kvm.h).
type ExitReason uint32

// Exit reasons.
const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	// ExitIntr: KVM_RUN returned EINTR because the vCPU was kicked (Run
	// reports it; KVM itself sets this reason for a pending signal).
	ExitIntr           ExitReason = 10
	ExitInternalError  ExitReason = 17
	ExitSystemEvent    ExitReason = 24
	ExitDirtyRingFull  ExitReason = 31
	exitReasonNamesLen            = 32
)

var exitNames = [exitReasonNamesLen]string{
	0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT",
	6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR",
	17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT", 31: "DIRTY_RING_FULL",
}

func (r ExitReason) String() string {
	if int(r) < len(exitNames) && exitNames[r] != "" {
		return exitNames[r]
	}
	return fmt.Sprintf("EXIT_%d", uint32(r))
}

// IO directions of kvm_run.io.direction.
const (
	IOIn  = 0
	IOOut = 1
)

// IOExit is a port I/O exit. Data aliases the vCPU's kvm_run page: it is
// Size*Count bytes, valid until the next Run; for an IN the caller fills it
// before the next Run, which completes the instruction.
type IOExit struct {
	Port  uint16
	Out   bool
	Size  uint8 // bytes per access: 1, 2 or 4
	Count uint32
	Data  []byte
}

// MMIOExit is an MMIO exit. Data aliases kvm_run (Len bytes): for a write
// it holds the bytes written; for a read the caller fills it before the
// next Run.
type MMIOExit struct {
	Addr  uint64
	Data  []byte
	Write bool
}

// Exit is a decoded KVM_RUN exit. Only the fields of its Reason are set.
type Exit struct {
	Reason ExitReason
	IO     IOExit   // ExitIO
	MMIO   MMIOExit // ExitMMIO
	// HardwareReason is fail_entry.hardware_entry_failure_reason
	// (ExitFailEntry) or hw.hardware_exit_reason (ExitUnknown).
	HardwareReason uint64
	CPU            uint32 // ExitFailEntry: the host CPU
	// Suberror and Data describe ExitInternalError (internal.suberror,
	// internal.data[:ndata]) and ExitSystemEvent (type, data).
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

// kvm_run layout (x86-64, include/uapi/linux/kvm.h).
const (
	runImmediateExit = 1  // u8 immediate_exit
	runExitReason    = 8  // u32 exit_reason
	runUnion         = 32 // the exit union, 256 bytes
	runMinSize       = runUnion + 256
)

// decodeExit decodes the exit held in run (a kvm_run page). It validates
// every offset it follows, so a corrupt page gives an error, not a panic.
func decodeExit(run []byte) (Exit, error) {
	if len(run) < runMinSize {
		return Exit{}, fmt.Errorf("kvm: kvm_run of %d bytes, need %d: %w", len(run), runMinSize, ErrBadInput)
	}
	le := binary.LittleEndian
	u := run[runUnion:]
	e := Exit{Reason: ExitReason(le.Uint32(run[runExitReason:]))}
	switch e.Reason {
	case ExitIO:
		// struct { u8 direction; u8 size; u16 port; u32 count; u64 data_offset; }
		e.IO = IOExit{Out: u[0] == IOOut, Size: u[1], Port: le.Uint16(u[2:]), Count: le.Uint32(u[4:])}
		off, n := le.Uint64(u[8:]), uint64(e.IO.Size)*uint64(e.IO.Count)
		if off > uint64(len(run)) || n > uint64(len(run))-off {
			return e, fmt.Errorf("kvm: IO exit on port %#x: data at offset %d, %d bytes, outside kvm_run (%d bytes): %w",
				e.IO.Port, off, n, len(run), ErrBadInput)
		}
		e.IO.Data = run[off : off+n : off+n]
	case ExitMMIO:
		// struct { u64 phys_addr; u8 data[8]; u32 len; u8 is_write; }
		n := le.Uint32(u[16:])
		if n > 8 {
			return e, fmt.Errorf("kvm: MMIO exit at %#x: length %d > 8: %w", le.Uint64(u), n, ErrBadInput)
		}
		e.MMIO = MMIOExit{Addr: le.Uint64(u), Data: u[8 : 8+n : 8+n], Write: u[20] != 0}
	case ExitFailEntry:
		e.HardwareReason, e.CPU = le.Uint64(u), le.Uint32(u[8:])
	case ExitUnknown:
		e.HardwareReason = le.Uint64(u)
	case ExitInternalError, ExitSystemEvent:
		// internal: u32 suberror; u32 ndata; u64 data[16]
		// system_event: u32 type; u32 ndata; u64 data[16]
		e.Suberror, e.NData = le.Uint32(u), le.Uint32(u[4:])
		for i := range e.Data {
			e.Data[i] = le.Uint64(u[8+8*i:])
		}
	}
	return e, nil
}

// Regs is struct kvm_regs (144 bytes).
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment (24 bytes).
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	Padding  uint8
}

// DTable is struct kvm_dtable (16 bytes).
type DTable struct {
	Base    uint64
	Limit   uint16
	Padding [3]uint16
}

// Sregs is struct kvm_sregs (312 bytes).
type Sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT Segment
	GDT, IDT                        DTable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER                            uint64
	APICBase                        uint64
	InterruptBitmap                 [4]uint64
}

// FPU is struct kvm_fpu (416 bytes).
type FPU struct {
	FPR        [8][16]byte
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	Pad1       uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]byte
	MXCSR      uint32
	Pad2       uint32
}

// MSREntry is struct kvm_msr_entry (16 bytes).
type MSREntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

// XSaveSize is the size of struct kvm_xsave (KVM_GET_XSAVE); KVM_GET_XSAVE2
// may need more (CapXSave2 says how much).
const XSaveSize = 4096

// Capabilities (KVM_CAP_*, include/uapi/linux/kvm.h) for CheckExtension.
const (
	CapUserMemory                    = 3
	CapNrMemslots                    = 10
	CapSyncMMU                       = 16
	CapXSave                         = 55
	CapMultiAddressSpace             = 118
	CapImmediateExit                 = 136
	CapManualDirtyLogProtect2        = 168
	CapDirtyLogRing                  = 192
	CapXSave2                        = 208
	CapDirtyLogRingAcqRel            = 223
	CapDirtyLogRingWithBitmap        = 225
	manualProtectEnable              = 1 // KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
	memLogDirtyPages                 = 1 // KVM_MEM_LOG_DIRTY_PAGES
	memReadonly                      = 2 // KVM_MEM_READONLY
	dirtyGFNFlagDirty         uint32 = 1 // KVM_DIRTY_GFN_F_DIRTY
	dirtyGFNFlagReset         uint32 = 2 // KVM_DIRTY_GFN_F_RESET
	dirtyRingPageOffset              = 0x40
	dirtyRingReserved                = 64 // KVM_DIRTY_RING_RSVD_ENTRIES
	ringEntrySize                    = 16 // struct kvm_dirty_gfn
)

// Compile-time checks of the sizes of the kernel's structs.
var (
	_ [144 - unsafe.Sizeof(Regs{})]struct{}
	_ [unsafe.Sizeof(Regs{}) - 144]struct{}
	_ [24 - unsafe.Sizeof(Segment{})]struct{}
	_ [unsafe.Sizeof(Segment{}) - 24]struct{}
	_ [16 - unsafe.Sizeof(DTable{})]struct{}
	_ [unsafe.Sizeof(DTable{}) - 16]struct{}
	_ [312 - unsafe.Sizeof(Sregs{})]struct{}
	_ [unsafe.Sizeof(Sregs{}) - 312]struct{}
	_ [416 - unsafe.Sizeof(FPU{})]struct{}
	_ [unsafe.Sizeof(FPU{}) - 416]struct{}
	_ [16 - unsafe.Sizeof(MSREntry{})]struct{}
	_ [unsafe.Sizeof(MSREntry{}) - 16]struct{}
)

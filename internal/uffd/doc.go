// Package uffd is a thin layer over Linux userfaultfd(2): open a
// userfaultfd, negotiate its API, register ranges in MISSING mode, place
// pages with UFFDIO_COPY / UFFDIO_ZEROPAGE, wake waiters and read fault
// messages; and the kernel's dirty tracking of process memory: asynchronous
// write-protect (OpenWPAsync, RegisterModeWP, WriteProtect) read and re-armed
// by PAGEMAP_SCAN on /proc/self/pagemap (Pagemap).
//
// golang.org/x/sys/unix defines none of the userfaultfd or PAGEMAP_SCAN
// constants or structs, so they are defined here by hand from Linux's
// include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h. The package builds on Linux only; on
// other platforms Open returns an error matching livemig.ErrNotSupported.
//
// An FD is safe for concurrent use: several goroutines may place pages while
// one goroutine reads fault messages. Close stops a blocked Read (it returns
// an error matching livemig.ErrClosed), waits for calls under way to return
// and only then closes the descriptor, so a call never reaches a reused
// descriptor number.
package uffd

import "errors"

// ErrExist is returned by Copy and ZeroPage when the destination page is
// already mapped (the kernel's EEXIST). It is benign: somebody placed the
// page first.
var ErrExist = errors.New("uffd: page already present")

// Msg is one fault message (struct uffd_msg, 32 bytes, decoded).
type Msg struct {
	// Event is the message kind; EventPagefault for a page fault.
	Event uint8
	// Flags are the fault's flags (PagefaultFlagWrite, ...).
	Flags uint64
	// Address is the faulting address, rounded down to the page unless the
	// FD was opened with FeatureExactAddress.
	Address uint64
	// PTID is the faulting thread's id when FeatureThreadID was negotiated.
	PTID uint32
}

// MsgSize is the size of one struct uffd_msg as read(2) returns it.
const MsgSize = 32

// Event kinds (UFFD_EVENT_*, include/uapi/linux/userfaultfd.h).
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// Page fault flags (UFFD_PAGEFAULT_FLAG_*, include/uapi/linux/userfaultfd.h).
const (
	PagefaultFlagWrite = 1 << 0
	PagefaultFlagWP    = 1 << 1
	PagefaultFlagMinor = 1 << 2
)

// Registration modes (UFFDIO_REGISTER_MODE_*, include/uapi/linux/userfaultfd.h).
const (
	RegisterModeMissing = 1 << 0
	RegisterModeWP      = 1 << 1
	RegisterModeMinor   = 1 << 2
)

// Copy and zero-page modes (UFFDIO_COPY_MODE_*, UFFDIO_ZEROPAGE_MODE_*,
// include/uapi/linux/userfaultfd.h).
const (
	// CopyModeDontWake places the page without waking the threads waiting
	// on it; wake them later with Wake (to batch wake-ups).
	CopyModeDontWake = 1 << 0
	// CopyModeWP places the page write-protected.
	CopyModeWP = 1 << 1
	// ZeroPageModeDontWake is CopyModeDontWake for ZeroPage.
	ZeroPageModeDontWake = 1 << 0
)

// API features (UFFD_FEATURE_*, include/uapi/linux/userfaultfd.h).
const (
	FeaturePagefaultFlagWP  = 1 << 0
	FeatureEventFork        = 1 << 1
	FeatureEventRemap       = 1 << 2
	FeatureEventRemove      = 1 << 3
	FeatureMissingHugetlbfs = 1 << 4
	FeatureMissingShmem     = 1 << 5
	FeatureEventUnmap       = 1 << 6
	FeatureSigbus           = 1 << 7
	FeatureThreadID         = 1 << 8
	FeatureMinorHugetlbfs   = 1 << 9
	FeatureMinorShmem       = 1 << 10
	FeatureExactAddress     = 1 << 11
	FeatureWPHugetlbfsShmem = 1 << 12
	FeatureWPUnpopulated    = 1 << 13
	FeaturePoison           = 1 << 14
	FeatureWPAsync          = 1 << 15
	FeatureMove             = 1 << 16
)

// Bits of the ioctls masks that API and Register report (_UFFDIO_*,
// include/uapi/linux/userfaultfd.h): bit n set means the ioctl is allowed.
const (
	IoctlRegister     = 1 << 0
	IoctlUnregister   = 1 << 1
	IoctlWake         = 1 << 2
	IoctlCopy         = 1 << 3
	IoctlZeropage     = 1 << 4
	IoctlMove         = 1 << 5
	IoctlWriteprotect = 1 << 6
	IoctlContinue     = 1 << 7
	IoctlPoison       = 1 << 8
	IoctlAPI          = 1 << 63
)

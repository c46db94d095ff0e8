//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
)

const (
	// UFFDIO_WRITEPROTECT = _IOWR(0xAA, 6, struct uffdio_writeprotect),
	// include/uapi/linux/userfaultfd.h.
	ioctlWriteprotect = 0xC018AA06

	// PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg),
	// include/uapi/linux/fs.h (Linux 6.7+).
	ioctlPagemapScan = 0xC0606610
)

// struct uffdio_writeprotect.
type uffdioWriteprotect struct {
	rng  uffdioRange
	mode uint64
}

// struct pm_scan_arg (include/uapi/linux/fs.h), all u64. vec is declared
// as a Go pointer, not a u64, so that the garbage collector and the stack
// copier see it (interfaces.md §8.11); the layout is the same on 64-bit
// platforms.
type pmScanArg struct {
	size             uint64 // sizeof(struct pm_scan_arg)
	flags            uint64
	start            uint64
	end              uint64
	walkEnd          uint64 // out: where the walk stopped
	vec              unsafe.Pointer
	vecLen           uint64
	maxPages         uint64
	categoryInverted uint64
	categoryMask     uint64
	categoryAnyofMsk uint64
	returnMask       uint64
}

// Compile-time checks of the struct sizes against the ioctl numbers.
var (
	_ [24 - unsafe.Sizeof(uffdioWriteprotect{})]struct{}
	_ [unsafe.Sizeof(uffdioWriteprotect{}) - 24]struct{}
	_ [96 - unsafe.Sizeof(pmScanArg{})]struct{}
	_ [unsafe.Sizeof(pmScanArg{}) - 96]struct{}
	_ [24 - unsafe.Sizeof(PageRegion{})]struct{}
	_ [unsafe.Sizeof(PageRegion{}) - 24]struct{}
)

// WriteProtect write-protects [start, start+length) (page-aligned, in a
// range registered with RegisterModeWP) when mode has WriteProtectModeWP,
// and removes the protection otherwise. On an FD opened with
// FeatureWPAsync the protection only tracks writes: a write to a protected
// page clears its protection in the kernel, without a message, and the
// page shows as PageIsWritten in a PAGEMAP_SCAN.
func (f *FD) WriteProtect(start, length uintptr, mode uint64) error {
	if err := f.acquire(); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	wp := uffdioWriteprotect{rng: uffdioRange{start: uint64(start), len: uint64(length)}, mode: mode}
	if _, err := ioctl(f.fd, ioctlWriteprotect, unsafe.Pointer(&wp)); err != nil {
		return fmt.Errorf("uffd: UFFDIO_WRITEPROTECT [%#x, +%#x) mode %#x: %w", start, length, mode, err)
	}
	return nil
}

// OpenWPAsync returns a userfaultfd for asynchronous write-protect, the
// kernel's dirty tracking of process memory: features
// FeaturePagefaultFlagWP | FeatureWPAsync | FeatureWPUnpopulated (the last
// so that a page never touched is protected too, and its first write is
// seen). Like Open it probes on a throw-away descriptor first; a kernel
// older than 6.7, or one without the features, gives an error matching
// livemig.ErrNotSupported that names what is missing.
//
// The descriptor is opened with UFFD_USER_MODE_ONLY. The kernel resolves an
// asynchronous write-protect fault by itself, in user or kernel mode alike,
// before the descriptor would be consulted, so writes made by system calls
// are tracked all the same (TestWPAsyncKernelModeWrite); and a process
// without CAP_SYS_PTRACE may open such a descriptor even where
// vm.unprivileged_userfaultfd is 0. Only register ranges with
// RegisterModeWP on it: missing-page faults taken in kernel mode would fail
// with EFAULT.
func OpenWPAsync() (*FD, error) {
	return open(FeaturePagefaultFlagWP|FeatureWPAsync|FeatureWPUnpopulated, userModeOnly)
}

// Pagemap is this process's /proc/self/pagemap, opened for PAGEMAP_SCAN.
// Its methods are safe for concurrent use; Close must come after every
// other call has returned.
type Pagemap struct {
	mu     sync.RWMutex // held shared by scans, exclusively by Close
	fd     int
	closed bool
}

// OpenPagemap opens /proc/self/pagemap. A missing procfs gives an error
// matching livemig.ErrNotSupported.
func OpenPagemap() (*Pagemap, error) {
	fd, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("uffd: open /proc/self/pagemap: %w (%w)", livemig.ErrNotSupported, err)
		}
		return nil, fmt.Errorf("uffd: open /proc/self/pagemap: %w", err)
	}
	return &Pagemap{fd: fd}, nil
}

// ScanOnce issues one PAGEMAP_SCAN of s into vec and returns the regions
// filled (vec[:n]) and walkEnd, the address where the walk stopped: s.End
// when it covered the whole range, less when vec filled up (or MaxPages
// was reached), and the caller resumes from walkEnd. With ScanWPMatching
// only the pages reported were write-protected. A kernel without
// PAGEMAP_SCAN (before 6.7) gives an error matching livemig.ErrNotSupported.
func (p *Pagemap) ScanOnce(s Scan, vec []PageRegion) (n int, walkEnd uintptr, err error) {
	if len(vec) == 0 {
		return 0, s.Start, fmt.Errorf("uffd: PAGEMAP_SCAN [%#x, %#x): empty output vector", s.Start, s.End)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return 0, s.Start, fmt.Errorf("uffd: PAGEMAP_SCAN: %w", livemig.ErrClosed)
	}
	arg := pmScanArg{
		size: uint64(unsafe.Sizeof(pmScanArg{})), flags: s.Flags,
		start: uint64(s.Start), end: uint64(s.End),
		vec: unsafe.Pointer(unsafe.SliceData(vec)), vecLen: uint64(len(vec)),
		maxPages: s.MaxPages, categoryInverted: s.Inverted,
		categoryMask: s.Mask, categoryAnyofMsk: s.AnyOf, returnMask: s.Return,
	}
	r, err := ioctl(p.fd, ioctlPagemapScan, unsafe.Pointer(&arg))
	runtime.KeepAlive(vec)
	if err != nil {
		what := fmt.Sprintf("PAGEMAP_SCAN [%#x, %#x) flags %#x", s.Start, s.End, s.Flags)
		if errors.Is(err, unix.ENOTTY) {
			return 0, s.Start, fmt.Errorf("uffd: %s: the kernel lacks it (Linux 6.7+): %w (%w)", what, livemig.ErrNotSupported, err)
		}
		return 0, s.Start, fmt.Errorf("uffd: %s: %w", what, err)
	}
	if int(r) > len(vec) || arg.walkEnd < arg.start || arg.walkEnd > arg.end {
		return 0, s.Start, fmt.Errorf("uffd: PAGEMAP_SCAN [%#x, %#x): kernel returned %d regions for %d, walk end %#x",
			s.Start, s.End, r, len(vec), arg.walkEnd)
	}
	return int(r), uintptr(arg.walkEnd), nil
}

// Scan runs PAGEMAP_SCAN over the whole of [s.Start, s.End), resuming at
// the walk end each time vec fills, and calls fn for every region found,
// in address order. vec is the caller's buffer; its length sets how many
// regions one ioctl returns. s.MaxPages must be 0.
func (p *Pagemap) Scan(s Scan, vec []PageRegion, fn func(PageRegion)) error {
	if s.MaxPages != 0 {
		return fmt.Errorf("uffd: PAGEMAP_SCAN [%#x, %#x): Scan resumes until the end, MaxPages must be 0", s.Start, s.End)
	}
	for s.Start < s.End {
		n, end, err := p.ScanOnce(s, vec)
		if err != nil {
			return err
		}
		for _, r := range vec[:n] {
			fn(r)
		}
		if end <= s.Start {
			return fmt.Errorf("uffd: PAGEMAP_SCAN [%#x, %#x): no progress", s.Start, s.End)
		}
		s.Start = end
	}
	return nil
}

// Close closes the file. It is idempotent.
func (p *Pagemap) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if err := unix.Close(p.fd); err != nil {
		return fmt.Errorf("uffd: close /proc/self/pagemap: %w", err)
	}
	return nil
}

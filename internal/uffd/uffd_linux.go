//go:build linux

package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
)

// ioctl numbers and the API version, from include/uapi/linux/userfaultfd.h
// (UFFDIO_* are _IOWR/_IOR(UFFDIO = 0xAA, nr, struct)). UNREGISTER and WAKE
// are _IOR, not _IOWR: the numbers are copied, not re-derived.
const (
	uffdAPI = 0xAA // UFFD_API

	ioctlAPI        = 0xC018AA3F // UFFDIO_API, struct uffdio_api (24 bytes)
	ioctlRegister   = 0xC020AA00 // UFFDIO_REGISTER, struct uffdio_register (32)
	ioctlUnregister = 0x8010AA01 // UFFDIO_UNREGISTER, struct uffdio_range (16)
	ioctlWake       = 0x8010AA02 // UFFDIO_WAKE, struct uffdio_range (16)
	ioctlCopy       = 0xC028AA03 // UFFDIO_COPY, struct uffdio_copy (40)
	ioctlZeropage   = 0xC020AA04 // UFFDIO_ZEROPAGE, struct uffdio_zeropage (32)

	// USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00), an ioctl on /dev/userfaultfd
	// (Linux 6.1+) that returns a new userfaultfd; include/uapi/linux/userfaultfd.h.
	ioctlNew = 0xAA00

	// UFFD_USER_MODE_ONLY, a flag of userfaultfd(2): the descriptor handles
	// only faults taken in user mode. Open does not use it (KVM's accesses
	// to guest memory are kernel-mode faults); OpenWPAsync does, since an
	// asynchronous write-protect fault never reaches the descriptor, and
	// then an unprivileged process may open it.
	userModeOnly = 1
)

// struct uffdio_api (include/uapi/linux/userfaultfd.h).
type uffdioAPI struct {
	api      uint64
	features uint64 // in: requested; out: supported
	ioctls   uint64 // out
}

// struct uffdio_range.
type uffdioRange struct {
	start uint64
	len   uint64
}

// struct uffdio_register.
type uffdioRegister struct {
	rng    uffdioRange
	mode   uint64
	ioctls uint64 // out
}

// struct uffdio_copy. src is declared as a Go pointer, not a u64, so that
// the garbage collector and the stack copier see it (interfaces.md §8.11):
// the layout is the same on 64-bit platforms.
type uffdioCopy struct {
	dst  uint64
	src  unsafe.Pointer
	len  uint64
	mode uint64
	copy int64 // out: bytes copied or -errno
}

// struct uffdio_zeropage.
type uffdioZeropage struct {
	rng      uffdioRange
	mode     uint64
	zeropage int64 // out: bytes zeroed or -errno
}

// Compile-time checks of the struct sizes against the ioctl numbers.
var (
	_ [24 - unsafe.Sizeof(uffdioAPI{})]struct{}
	_ [unsafe.Sizeof(uffdioAPI{}) - 24]struct{}
	_ [32 - unsafe.Sizeof(uffdioRegister{})]struct{}
	_ [unsafe.Sizeof(uffdioRegister{}) - 32]struct{}
	_ [40 - unsafe.Sizeof(uffdioCopy{})]struct{}
	_ [unsafe.Sizeof(uffdioCopy{}) - 40]struct{}
	_ [32 - unsafe.Sizeof(uffdioZeropage{})]struct{}
	_ [unsafe.Sizeof(uffdioZeropage{}) - 32]struct{}
)

// maxRetries bounds the EAGAIN retries of Copy and ZeroPage. The kernel
// returns EAGAIN while the address space is changing (a fork, an mremap):
// a short window.
const maxRetries = 10000

// readBatch is how many messages one read(2) takes at most.
const readBatch = 64

// FD is an open userfaultfd. Its methods are safe for concurrent use, but
// Read must be called by one goroutine at a time.
type FD struct {
	fd       int
	file     *os.File        // fd, in the runtime's network poller; owns fd
	rc       syscall.RawConn // file's
	stopping atomic.Bool     // Close has begun
	features uint64
	ioctls   uint64

	mu     sync.RWMutex // held shared by every call on fd, exclusively by Close
	closed bool         // under mu

	readMu sync.Mutex
	buf    [readBatch * MsgSize]byte // read(2) buffer, under readMu
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// notSupported wraps a kernel error that means userfaultfd can't be used
// here (absent, forbidden, or a feature missing) in livemig.ErrNotSupported.
func notSupported(what string, err error) error {
	switch {
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM),
		errors.Is(err, unix.EACCES), errors.Is(err, unix.ENOENT),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENODEV):
		return fmt.Errorf("uffd: %s: %w (%w)", what, livemig.ErrNotSupported, err)
	}
	return fmt.Errorf("uffd: %s: %w", what, err)
}

// openRaw returns a fresh userfaultfd (O_CLOEXEC|O_NONBLOCK), before its API
// handshake. It tries /dev/userfaultfd first (its access is governed by file
// permissions, and it serves kernel-mode faults), then the userfaultfd(2)
// system call. extra is 0 or userModeOnly.
func openRaw(extra uintptr) (int, error) {
	flags := unix.O_CLOEXEC | unix.O_NONBLOCK | extra
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), ioctlNew, flags)
		unix.Close(dev)
		if errno == 0 {
			return int(r), nil
		}
		err = errno
	}
	r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno != 0 {
		return -1, notSupported("open (/dev/userfaultfd: "+err.Error()+"; userfaultfd(2))", errno)
	}
	return int(r), nil
}

func handshake(fd int, features uint64) (uffdioAPI, error) {
	api := uffdioAPI{api: uffdAPI, features: features}
	_, err := ioctl(fd, ioctlAPI, unsafe.Pointer(&api))
	return api, err
}

// Supported returns the features and ioctls the kernel offers. It probes on
// a throw-away descriptor, since UFFDIO_API may be called only once per
// descriptor (QEMU does the same).
func Supported() (features, ioctls uint64, err error) { return supported(0) }

// supported is Supported on a descriptor opened with extra flags.
func supported(extra uintptr) (features, ioctls uint64, err error) {
	fd, err := openRaw(extra)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	api, err := handshake(fd, 0)
	if err != nil {
		return 0, 0, notSupported("UFFDIO_API", err)
	}
	return api.features, api.ioctls, nil
}

// Open returns a userfaultfd with the given features (0 is enough for
// MISSING faults on anonymous memory). It probes the kernel first; a
// feature the kernel lacks gives an error matching livemig.ErrNotSupported,
// as does a kernel or a process that can't use userfaultfd at all.
func Open(features uint64) (*FD, error) { return open(features, 0) }

// open is Open with extra flags for userfaultfd(2): 0 or userModeOnly.
func open(features uint64, extra uintptr) (*FD, error) {
	offered, _, err := supported(extra)
	if err != nil {
		return nil, err
	}
	if missing := features &^ offered; missing != 0 {
		return nil, fmt.Errorf("uffd: features %#x not offered by the kernel (it offers %#x): %w",
			missing, offered, livemig.ErrNotSupported)
	}
	fd, err := openRaw(extra)
	if err != nil {
		return nil, err
	}
	api, err := handshake(fd, features)
	if err != nil {
		unix.Close(fd)
		return nil, notSupported("UFFDIO_API", err)
	}
	// The descriptor is non-blocking, so os.NewFile adds it to the
	// runtime's poller (epoll): a Read with no message parks its goroutine
	// and frees its P and thread, instead of holding them in poll(2). That
	// matters because a goroutine blocked on a missing page holds a P too:
	// with GOMAXPROCS=2 and one such goroutine, a reader blocked in poll(2)
	// held the only other P, and every goroutine that serves the fault (the
	// requester, the network receiver that places the page) waited for
	// sysmon to retake it — 20 µs to 10 ms, some 300 µs per fault.
	file := os.NewFile(uintptr(fd), "userfaultfd")
	if err := file.SetReadDeadline(time.Time{}); err != nil {
		file.Close()
		return nil, fmt.Errorf("uffd: the runtime poller refuses the descriptor: %w", err)
	}
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("uffd: %w", err)
	}
	return &FD{fd: fd, file: file, rc: rc, features: api.features, ioctls: api.ioctls}, nil
}

// Features returns the features negotiated by Open.
func (f *FD) Features() uint64 { return f.features }

// Ioctls returns the mask of ioctls the handshake allowed (Ioctl* bits).
func (f *FD) Ioctls() uint64 { return f.ioctls }

// acquire takes f.mu shared; it fails once Close has begun.
func (f *FD) acquire() error {
	f.mu.RLock()
	if f.closed {
		f.mu.RUnlock()
		return fmt.Errorf("uffd: %w", livemig.ErrClosed)
	}
	return nil
}

// Register registers [start, start+length) (page-aligned, in this process)
// with the given modes (RegisterMode*) and returns the ioctls allowed on it.
func (f *FD) Register(start, length uintptr, mode uint64) (ioctls uint64, err error) {
	if err := f.acquire(); err != nil {
		return 0, err
	}
	defer f.mu.RUnlock()
	reg := uffdioRegister{rng: uffdioRange{start: uint64(start), len: uint64(length)}, mode: mode}
	if _, err := ioctl(f.fd, ioctlRegister, unsafe.Pointer(&reg)); err != nil {
		return 0, notSupported(fmt.Sprintf("UFFDIO_REGISTER [%#x, +%#x) mode %#x", start, length, mode), err)
	}
	return reg.ioctls, nil
}

// Unregister unregisters [start, start+length). The kernel wakes the threads
// blocked on faults in the range; they fault again as on ordinary memory
// (missing anonymous pages then read as zeros).
func (f *FD) Unregister(start, length uintptr) error {
	return f.rangeIoctl(ioctlUnregister, "UFFDIO_UNREGISTER", start, length)
}

// Wake wakes the threads blocked on faults in [start, start+length), after
// placements made with CopyModeDontWake or ZeroPageModeDontWake.
func (f *FD) Wake(start, length uintptr) error {
	return f.rangeIoctl(ioctlWake, "UFFDIO_WAKE", start, length)
}

// rangeIoctl calls ioctl req, named name, on the range [start, start+length).
func (f *FD) rangeIoctl(req uintptr, name string, start, length uintptr) error {
	if err := f.acquire(); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	rng := uffdioRange{start: uint64(start), len: uint64(length)}
	if _, err := ioctl(f.fd, req, unsafe.Pointer(&rng)); err != nil {
		return fmt.Errorf("uffd: %s [%#x, +%#x): %w", name, start, length, err)
	}
	return nil
}

// Copy atomically places src at dst, a page-aligned address in a registered
// range; len(src) must be a multiple of the host page size. Unless mode has
// CopyModeDontWake, the threads waiting on those pages are woken. src must
// not lie in a registered range. It returns ErrExist (benign) if the page is
// already mapped, and retries by itself while the kernel says EAGAIN.
func (f *FD) Copy(dst uintptr, src []byte, mode uint64) error {
	if len(src) == 0 {
		return nil
	}
	if err := f.acquire(); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	done := 0
	for try := 0; ; try++ {
		c := uffdioCopy{
			dst:  uint64(dst) + uint64(done),
			src:  unsafe.Pointer(&src[done]),
			len:  uint64(len(src) - done),
			mode: mode,
		}
		_, err := ioctl(f.fd, ioctlCopy, unsafe.Pointer(&c))
		runtime.KeepAlive(src)
		if err == nil {
			return nil
		}
		if c.copy > 0 {
			done += int(c.copy)
		}
		switch {
		case errors.Is(err, unix.EEXIST):
			return ErrExist
		case errors.Is(err, unix.EAGAIN) && try < maxRetries:
			if done >= len(src) {
				return nil
			}
			runtime.Gosched()
			continue
		}
		return fmt.Errorf("uffd: UFFDIO_COPY to %#x (%d bytes): %w", dst, len(src), err)
	}
}

// ZeroPage atomically maps zero pages at [dst, dst+length), like Copy of
// zeros without the copy. mode takes ZeroPageModeDontWake.
func (f *FD) ZeroPage(dst, length uintptr, mode uint64) error {
	if length == 0 {
		return nil
	}
	if err := f.acquire(); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	done := uintptr(0)
	for try := 0; ; try++ {
		z := uffdioZeropage{rng: uffdioRange{start: uint64(dst + done), len: uint64(length - done)}, mode: mode}
		_, err := ioctl(f.fd, ioctlZeropage, unsafe.Pointer(&z))
		if err == nil {
			return nil
		}
		if z.zeropage > 0 {
			done += uintptr(z.zeropage)
		}
		switch {
		case errors.Is(err, unix.EEXIST):
			return ErrExist
		case errors.Is(err, unix.EAGAIN) && try < maxRetries:
			if done >= length {
				return nil
			}
			runtime.Gosched()
			continue
		}
		return fmt.Errorf("uffd: UFFDIO_ZEROPAGE at %#x (%d bytes): %w", dst, length, err)
	}
}

// Read blocks until fault messages are available and decodes up to
// len(msgs) of them into msgs (at most 64 per call). It returns an error
// matching livemig.ErrClosed once Close has begun. One goroutine at a time
// may call Read. While it waits, its goroutine is parked in the runtime's
// network poller: it holds neither a P nor an OS thread.
func (f *FD) Read(msgs []Msg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := f.acquire(); err != nil {
		return 0, err
	}
	defer f.mu.RUnlock()
	f.readMu.Lock()
	defer f.readMu.Unlock()
	want := min(len(msgs), readBatch)
	var n int
	var rerr error
	err := f.rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), f.buf[:want*MsgSize])
		return !errors.Is(rerr, unix.EAGAIN) && !errors.Is(rerr, unix.EINTR)
	})
	if f.stopping.Load() && (err != nil || rerr != nil) {
		return 0, fmt.Errorf("uffd: %w", livemig.ErrClosed)
	}
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, fmt.Errorf("uffd: read: %w", err)
	}
	if n%MsgSize != 0 {
		return 0, fmt.Errorf("uffd: read %d bytes, not a whole number of %d-byte messages", n, MsgSize)
	}
	for i := 0; i < n/MsgSize; i++ {
		msgs[i] = decode(f.buf[i*MsgSize : (i+1)*MsgSize])
	}
	return n / MsgSize, nil
}

// decode parses one struct uffd_msg (include/uapi/linux/userfaultfd.h):
// u8 event at 0; for a page fault, u64 flags at 8, u64 address at 16,
// u32 ptid at 24, in the host's byte order.
func decode(b []byte) Msg {
	m := Msg{Event: b[0]}
	if m.Event == EventPagefault {
		m.Flags = binary.NativeEndian.Uint64(b[8:16])
		m.Address = binary.NativeEndian.Uint64(b[16:24])
		m.PTID = binary.NativeEndian.Uint32(b[24:28])
	}
	return m
}

// Close stops a blocked Read, waits for the calls under way to return and
// closes the descriptor. The kernel then wakes any thread still blocked on a
// fault; later faults in ranges still registered are resolved as on ordinary
// memory. Close is idempotent.
func (f *FD) Close() error {
	f.mu.RLock()
	closed := f.closed
	f.mu.RUnlock()
	if closed {
		return nil
	}
	// A deadline in the past wakes a Read parked in the poller, and any
	// Read that starts from now on returns at once.
	f.stopping.Store(true)
	if err := f.file.SetReadDeadline(time.Unix(1, 0)); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("uffd: stop the reader: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if err := f.file.Close(); err != nil {
		return fmt.Errorf("uffd: close: %w", err)
	}
	return nil
}

//go:build !linux

package uffd

import (
	"fmt"
	"runtime"

	"github.com/livemig/livemig"
)

// FD is an open userfaultfd. On this platform none can be opened.
type FD struct{}

func errNotSupported() error {
	return fmt.Errorf("uffd: userfaultfd on %s: %w", runtime.GOOS, livemig.ErrNotSupported)
}

// Supported reports that userfaultfd is absent on this platform.
func Supported() (features, ioctls uint64, err error) { return 0, 0, errNotSupported() }

// Open returns an error matching livemig.ErrNotSupported on this platform.
func Open(features uint64) (*FD, error) { return nil, errNotSupported() }

// Features returns 0.
func (f *FD) Features() uint64 { return 0 }

// Ioctls returns 0.
func (f *FD) Ioctls() uint64 { return 0 }

// Register returns an error matching livemig.ErrNotSupported.
func (f *FD) Register(start, length uintptr, mode uint64) (uint64, error) {
	return 0, errNotSupported()
}

// Unregister returns an error matching livemig.ErrNotSupported.
func (f *FD) Unregister(start, length uintptr) error { return errNotSupported() }

// Wake returns an error matching livemig.ErrNotSupported.
func (f *FD) Wake(start, length uintptr) error { return errNotSupported() }

// Copy returns an error matching livemig.ErrNotSupported.
func (f *FD) Copy(dst uintptr, src []byte, mode uint64) error { return errNotSupported() }

// ZeroPage returns an error matching livemig.ErrNotSupported.
func (f *FD) ZeroPage(dst, length uintptr, mode uint64) error { return errNotSupported() }

// Read returns an error matching livemig.ErrNotSupported.
func (f *FD) Read(msgs []Msg) (int, error) { return 0, errNotSupported() }

// Close does nothing.
func (f *FD) Close() error { return nil }

// WriteProtect returns an error matching livemig.ErrNotSupported.
func (f *FD) WriteProtect(start, length uintptr, mode uint64) error { return errNotSupported() }

// OpenWPAsync returns an error matching livemig.ErrNotSupported on this
// platform.
func OpenWPAsync() (*FD, error) { return nil, errNotSupported() }

// Pagemap is /proc/self/pagemap. On this platform none can be opened.
type Pagemap struct{}

// OpenPagemap returns an error matching livemig.ErrNotSupported.
func OpenPagemap() (*Pagemap, error) {
	return nil, fmt.Errorf("uffd: PAGEMAP_SCAN on %s: %w", runtime.GOOS, livemig.ErrNotSupported)
}

// ScanOnce returns an error matching livemig.ErrNotSupported.
func (p *Pagemap) ScanOnce(s Scan, vec []PageRegion) (int, uintptr, error) {
	return 0, s.Start, errNotSupported()
}

// Scan returns an error matching livemig.ErrNotSupported.
func (p *Pagemap) Scan(s Scan, vec []PageRegion, fn func(PageRegion)) error { return errNotSupported() }

// Close does nothing.
func (p *Pagemap) Close() error { return nil }

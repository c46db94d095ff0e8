//go:build !linux

package faultmem

import (
	"fmt"
	"runtime"
	"time"

	"github.com/livemig/livemig"
)

func errNotSupported() error {
	return fmt.Errorf("faultmem: userfaultfd on %s: %w", runtime.GOOS, livemig.ErrNotSupported)
}

// Region is a destination memory whose missing pages fault. On this
// platform none can be made.
type Region struct{}

// New returns an error matching livemig.ErrNotSupported on this platform.
func New(pageSize int, pages uint64, cfg Config) (*Region, error) { return nil, errNotSupported() }

// PageSize returns 0.
func (r *Region) PageSize() int { return 0 }

// PageCount returns 0.
func (r *Region) PageCount() uint64 { return 0 }

// Bytes returns nil.
func (r *Region) Bytes() []byte { return nil }

// Present returns false.
func (r *Region) Present(n uint64) bool { return false }

// Missing returns 0.
func (r *Region) Missing() uint64 { return 0 }

// Faults returns 0.
func (r *Region) Faults() uint64 { return 0 }

// Requests returns 0.
func (r *Region) Requests() uint64 { return 0 }

// FaultStats returns zeros.
func (r *Region) FaultStats() (n uint64, p50, p99, max time.Duration) { return 0, 0, 0, 0 }

// Place returns an error matching livemig.ErrNotSupported.
func (r *Region) Place(n uint64, data []byte) (bool, error) { return false, errNotSupported() }

// PlaceZero returns an error matching livemig.ErrNotSupported.
func (r *Region) PlaceZero(n uint64) (bool, error) { return false, errNotSupported() }

// WritePage returns an error matching livemig.ErrNotSupported.
func (r *Region) WritePage(n uint64, data []byte) error { return errNotSupported() }

// ZeroPage returns an error matching livemig.ErrNotSupported.
func (r *Region) ZeroPage(n uint64) error { return errNotSupported() }

// ReadPage returns an error matching livemig.ErrNotSupported.
func (r *Region) ReadPage(n uint64, dst []byte) error { return errNotSupported() }

// Discard returns an error matching livemig.ErrNotSupported.
func (r *Region) Discard(n uint64) error { return errNotSupported() }

// Stop does nothing.
func (r *Region) Stop() error { return nil }

// Close does nothing.
func (r *Region) Close() error { return nil }

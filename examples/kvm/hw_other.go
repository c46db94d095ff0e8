//go:build !linux || !amd64

package main

import (
	"fmt"
	"runtime"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/kvm"
)

// newKVM returns an error matching livemig.ErrNotSupported: KVM guests run
// on Linux/amd64 only.
func newKVM(geometry, []kvm.Slot, *kvm.Layout, string) (hardware, livemig.DirtySource, error) {
	return nil, nil, fmt.Errorf("KVM on %s/%s: %w", runtime.GOOS, runtime.GOARCH, livemig.ErrNotSupported)
}

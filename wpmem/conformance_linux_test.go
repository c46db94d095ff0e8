//go:build linux

package wpmem_test

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/livemig/livemig/livemigtest"
)

// The Region passes livemig's conformance checks for Memory and
// DirtySource, written by plain stores from the checks' goroutines; and,
// with a gateVM pausing a goroutine that stores into it, the VM check.
func TestConformance(t *testing.T) {
	const pages = 300
	r := newOrSkip(t, pages)
	ps := r.PageSize()
	mem := r.Bytes()
	livemigtest.TestMemory(t, r)
	livemigtest.TestDirtySource(t, r, pages, func(n uint64) {
		mem[int(n)*ps+int(n%uint64(ps))]++ // a plain store, nothing else
	})

	vm := &gateVM{state: []byte("state")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // a running guest
		defer close(done)
		for i := uint64(0); ctx.Err() == nil; i++ {
			vm.gate.RLock()
			binary.LittleEndian.PutUint64(mem[int(i%pages)*ps:], i)
			vm.gate.RUnlock()
		}
	}()
	defer func() { cancel(); _ = vm.Resume(context.Background()); <-done }()
	livemigtest.TestVM(t, vm, r, r, nil)
}

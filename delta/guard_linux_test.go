//go:build linux

package delta

import (
	"bytes"
	"syscall"
	"testing"
)

// guarded returns a slice of n bytes that ends where an inaccessible page
// begins, so that reading or writing one byte past it faults.
func guarded(t *testing.T, n int) []byte {
	t.Helper()
	ps := syscall.Getpagesize()
	size := (n+ps-1)/ps*ps + ps
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(mem) })
	if err := syscall.Mprotect(mem[size-ps:], syscall.PROT_NONE); err != nil {
		t.Fatalf("mprotect: %v", err)
	}
	return mem[size-ps-n : size-ps : size-ps]
}

// TestEncodeGuardPages: on every path, Encode reads nothing past old or
// new and writes nothing past dst's capacity when old, new and dst's
// spare capacity each end at an inaccessible page (a stray access
// faults), and gives the reference's result.
func TestEncodeGuardPages(t *testing.T) {
	paths := availablePaths(t)
	defer setPath(currentPath())
	for _, n := range []int{1, 17, 63, 64, 65, 100, 255, 256, 300, 4095, 4096} {
		for pi, pat := range patterns {
			o, nw := pagePair(pat, n, uint64(1000*n+pi))
			old, new := guarded(t, n), guarded(t, n)
			copy(old, o)
			copy(new, nw)
			for _, lim := range limitsAround(old, new) {
				lim = max(lim, 2)
				rout, rret := refEncode(old, new, lim)
				w := min(lim, 2*n+16)
				dst := guarded(t, w)[:0]
				for _, p := range paths {
					setPath(p)
					out, err := Encode(dst, old, new, lim)
					if ret := retOf(out, err); ret != rret || !bytes.Equal(out, rout) {
						t.Fatalf("%s n=%d limit %d, %s path: Encode %d %x; reference %d %x",
							pat.name, n, lim, p, ret, out, rret, rout)
					}
				}
			}
			if t.Failed() {
				return
			}
		}
	}
}

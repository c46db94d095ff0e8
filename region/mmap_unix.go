//go:build unix

package region

import "golang.org/x/sys/unix"

func mapMemory(size int) ([]byte, func() error, error) {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, err
	}
	// Huge pages where the kernel allows them (see the package
	// comment); where it does not, the advice is refused, and no harm.
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return b, func() error { return unix.Munmap(b) }, nil
}

//go:build linux

package wpmem

import (
	"errors"

	"golang.org/x/sys/unix"
)

func pageSize() int { return unix.Getpagesize() }

// errPlatform is nil: the platform may have the feature.
var errPlatform error

// mapMemory maps size bytes of private anonymous memory, zeroed and not
// yet populated.
func mapMemory(size int) ([]byte, error) {
	return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
}

func unmapMemory(b []byte) error { return unix.Munmap(b) }

// noHugePages asks for 4 KiB pages on mem (MADV_NOHUGEPAGE). A kernel
// without transparent huge pages has nothing to split: EINVAL is fine.
func noHugePages(mem []byte) error {
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}

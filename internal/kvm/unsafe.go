package kvm

import "unsafe"

// addrOf returns the address of b's first byte (0 for an empty slice).
func addrOf(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// Package wpmem is a range of this process's memory whose writes the
// kernel tracks: a livemig.Memory and livemig.DirtySource for tools that
// migrate a region of a process while any code in it goes on writing.
//
// Package region tracks writes in software: its writers call Write or
// Update, which mark the page dirty. A wpmem.Region needs no such call.
// Plain Go stores into Bytes(), copy() and the runtime's memmove, assembly,
// other goroutines and threads, cgo, and system calls that write user
// memory through the page tables (read(2) into the region, recvmsg, ...)
// are all seen, by the kernel, with no write fault delivered to user space
// and no software marking.
//
// # How
//
// The memory is registered with a userfaultfd in asynchronous
// write-protect mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7+) and
// write-protected once. A write to a protected page takes a fault that the
// kernel resolves by itself: it clears the page's uffd-wp bit and lets the
// write go on. SyncDirty reads the pages whose bit is clear with
// PAGEMAP_SCAN on /proc/self/pagemap (category PAGE_IS_WRITTEN) and, in the
// same ioctl (PM_SCAN_WP_MATCHING), protects them again. So a page costs
// one minor fault on its first write after each sync, and nothing after
// that until the next sync; a sync costs a walk of the page tables of the
// range, cheap where nothing was written, plus the re-protection of each
// 2 MiB block of page table that holds a written page: scattered writes
// cost more to sync than the same number packed together
// (docs/BENCHMARKS.md, "Kernel dirty tracking for process memory").
//
// The page size is the host's (unix.Getpagesize(): 4 KiB on x86-64): one
// bit of the dirty bitmap per host page. New advises the kernel against
// transparent huge pages on the mapping (MADV_NOHUGEPAGE), so that a write
// dirties 4 KiB and not 2 MiB; Track does the same to the caller's
// mapping. Pages never touched are protected too (UFFD_FEATURE_WP_UNPOPULATED
// installs markers in their page-table entries), so the first write to a
// page the process never touched is seen. Reading a page is not a write.
// MADV_DONTNEED of a page counts as a write (its content became zeros).
//
// # What it does not see
//
// The tracking sees only writes made through this process's user page
// tables (interfaces.md §8, gotcha 14). Writes that reach the memory
// another way bypass it: a device's DMA into pinned pages (RDMA, VFIO,
// io_uring fixed buffers, O_DIRECT reads in flight when the scan runs), a
// KVM guest's writes through KVM's own pfn caches (kvmclock, steal time),
// and writes by another process that shares the pages (MAP_SHARED is not
// supported here: the region is private anonymous memory). For a KVM
// guest, use KVM's dirty log, with this tracking alongside it, not instead
// of it.
//
// # Pausing
//
// A Region is not a livemig.VM: it does not know the code that writes it.
// The caller provides the VM, whose Pause stops every writer (its
// goroutines, its threads) and returns once they have stopped. Nothing is
// buffered between a store and the page tables: a write made before Pause
// returns is reported by the next SyncDirty, and a second sync reports
// nothing, as livemig.VM requires.
//
// # Usage
//
//	r, err := wpmem.New(pages)        // tracking starts here
//	if err != nil { ... }             // errors.Is(err, livemig.ErrNotSupported) off Linux 6.7+
//	defer r.Close()
//	mem := r.Bytes()                  // write it any way at all
//	src := livemig.Source{Memory: r, Dirty: r, VM: myVM} // myVM pauses the writers
//	rep, err := precopy.Migrate(ctx, conn, src, precopy.Config{})
//
// # Platforms
//
// Linux 6.7 or later, built with userfaultfd. No privilege is needed: the
// userfaultfd is opened with UFFD_USER_MODE_ONLY, which any process may do
// even where vm.unprivileged_userfaultfd is 0, and which still tracks writes
// made in kernel mode (the kernel resolves the fault before it would look at
// the descriptor). Elsewhere New and Track return an error matching
// livemig.ErrNotSupported that says what is missing.
package wpmem

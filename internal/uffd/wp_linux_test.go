//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
)

// The structs match the kernel's sizes (include/uapi/linux/userfaultfd.h,
// include/uapi/linux/fs.h) and the sizes the ioctl numbers encode.
func TestWPStructSizes(t *testing.T) {
	for name, got := range map[string]uintptr{
		"uffdio_writeprotect": unsafe.Sizeof(uffdioWriteprotect{}),
		"pm_scan_arg":         unsafe.Sizeof(pmScanArg{}),
		"page_region":         unsafe.Sizeof(PageRegion{}),
	} {
		want := map[string]uintptr{"uffdio_writeprotect": 24, "pm_scan_arg": 96, "page_region": 24}[name]
		if got != want {
			t.Errorf("sizeof(%s) = %d, want %d", name, got, want)
		}
	}
	// _IOWR(type, nr, size) = 3<<30 | size<<16 | type<<8 | nr.
	iowr := func(typ, nr, size uintptr) uintptr { return 3<<30 | size<<16 | typ<<8 | nr }
	if got := iowr(0xAA, 6, unsafe.Sizeof(uffdioWriteprotect{})); got != ioctlWriteprotect {
		t.Errorf("UFFDIO_WRITEPROTECT %#x, want %#x", got, ioctlWriteprotect)
	}
	if got := iowr('f', 16, unsafe.Sizeof(pmScanArg{})); got != ioctlPagemapScan {
		t.Errorf("PAGEMAP_SCAN %#x, want %#x", got, ioctlPagemapScan)
	}
}

// wpTracked is a mapping of pages host pages under asynchronous
// write-protect, protected once, with the pagemap to scan it.
type wpTracked struct {
	mem []byte
	ps  int
	pm  *Pagemap
}

func newWPTracked(t *testing.T, pages int) *wpTracked {
	t.Helper()
	f, err := OpenWPAsync()
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd asynchronous write-protect", "LIVEMIG_REQUIRE_UFFD")
	}
	t.Cleanup(func() { f.Close() })
	pm, err := OpenPagemap()
	if err != nil {
		testkit.SkipOrFail(t, err, "/proc/self/pagemap", "LIVEMIG_REQUIRE_UFFD")
	}
	t.Cleanup(func() { pm.Close() })
	ps := unix.Getpagesize()
	mem := mapRegion(t, pages*ps)
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		t.Fatal(err)
	}
	ioctls, err := f.Register(addr(mem), uintptr(len(mem)), RegisterModeWP)
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd write-protect registration", "LIVEMIG_REQUIRE_UFFD")
	}
	if ioctls&IoctlWriteprotect == 0 {
		t.Fatalf("registration allows ioctls %#x, no UFFDIO_WRITEPROTECT", ioctls)
	}
	if err := f.WriteProtect(addr(mem), uintptr(len(mem)), WriteProtectModeWP); err != nil {
		t.Fatal(err)
	}
	return &wpTracked{mem: mem, ps: ps, pm: pm}
}

// written scans for written pages (re-protecting them when clear is set)
// with an output vector of vecLen regions, and returns them as page
// ranges "a-b" (b exclusive) and the number of ioctls.
func (w *wpTracked) written(t *testing.T, clear bool, vecLen int) ([]string, int) {
	t.Helper()
	s := Scan{Flags: ScanCheckWPAsync, Start: addr(w.mem), End: addr(w.mem) + uintptr(len(w.mem)),
		Mask: PageIsWritten, Return: PageIsWritten}
	if clear {
		s.Flags |= ScanWPMatching
	}
	var got []string
	calls := 0
	vec := make([]PageRegion, vecLen)
	for s.Start < s.End {
		n, end, err := w.pm.ScanOnce(s, vec)
		if err != nil {
			t.Fatal(err)
		}
		calls++
		for _, r := range vec[:n] {
			if r.Categories != PageIsWritten {
				t.Fatalf("region %+v: categories %#x", r, r.Categories)
			}
			got = append(got, fmt.Sprintf("%d-%d", (uintptr(r.Start)-addr(w.mem))/uintptr(w.ps), (uintptr(r.End)-addr(w.mem))/uintptr(w.ps)))
		}
		s.Start = end
	}
	return got, calls
}

func (w *wpTracked) want(t *testing.T, clear bool, vecLen int, want ...string) int {
	t.Helper()
	got, calls := w.written(t, clear, vecLen)
	if !slices.Equal(got, want) {
		t.Fatalf("written %v, want %v", got, want)
	}
	return calls
}

// The kernel facts of kernel-here.md: pages 5, 17 and 18 written show as
// 5-6 and 17-19 and are re-protected; a later write shows alone. Pages never
// touched before the protection are caught on their first write (the
// marker of WP_UNPOPULATED); reads are not writes; MADV_DONTNEED counts as
// a write.
func TestWPAsyncScan(t *testing.T) {
	w := newWPTracked(t, 64)
	w.want(t, true, 16) // nothing written yet
	w.mem[5*w.ps] = 1
	w.mem[17*w.ps+100] = 2
	w.mem[19*w.ps-1] = 3
	w.want(t, false, 16, "5-6", "17-19") // a peek leaves them
	w.want(t, true, 16, "5-6", "17-19")
	w.want(t, true, 16)
	_ = load(w.mem, 30*w.ps) // a read maps the zero page: no write
	w.mem[40*w.ps] = 4
	w.want(t, true, 16, "40-41")
	if err := unix.Madvise(w.mem[40*w.ps:41*w.ps], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	w.want(t, true, 16, "40-41")
	w.mem[30*w.ps] = 5 // after the read
	w.want(t, true, 16, "30-31")
}

// A vector of one region fills at each written run: the walk resumes at
// walk_end, one ioctl per run, and every run is reported and re-protected.
func TestWPScanResumesAtWalkEnd(t *testing.T) {
	w := newWPTracked(t, 256)
	var want []string
	for p := 3; p < 256; p += 25 {
		w.mem[p*w.ps] = 1
		w.mem[(p+1)*w.ps] = 1
		want = append(want, fmt.Sprintf("%d-%d", p, p+2))
	}
	if calls := w.want(t, true, 1, want...); calls < len(want) {
		t.Fatalf("%d ioctls for %d runs in a vector of 1", calls, len(want))
	}
	w.want(t, true, 1)

	// Scan does the resuming itself.
	w.mem[7*w.ps] = 1
	w.mem[9*w.ps] = 1
	var got []uint64
	err := w.pm.Scan(Scan{Flags: ScanWPMatching | ScanCheckWPAsync, Start: addr(w.mem), End: addr(w.mem) + uintptr(len(w.mem)),
		Mask: PageIsWritten, Return: PageIsWritten}, make([]PageRegion, 1), func(r PageRegion) {
		got = append(got, (r.Start-uint64(addr(w.mem)))/uint64(w.ps))
	})
	if err != nil || !slices.Equal(got, []uint64{7, 9}) {
		t.Fatalf("Scan: %v %v, want [7 9]", got, err)
	}
}

// CHECK_WPASYNC refuses memory not under asynchronous write-protect; a
// closed Pagemap says so.
func TestWPScanErrors(t *testing.T) {
	pm, err := OpenPagemap()
	if err != nil {
		testkit.SkipOrFail(t, err, "/proc/self/pagemap", "LIVEMIG_REQUIRE_UFFD")
	}
	mem := mapRegion(t, 4*unix.Getpagesize())
	s := Scan{Flags: ScanWPMatching | ScanCheckWPAsync, Start: addr(mem), End: addr(mem) + uintptr(len(mem)),
		Mask: PageIsWritten, Return: PageIsWritten}
	vec := make([]PageRegion, 4)
	if _, _, err := pm.ScanOnce(s, vec); !errors.Is(err, unix.EPERM) {
		t.Fatalf("scan of untracked memory: %v, want EPERM", err)
	}
	if _, _, err := pm.ScanOnce(s, nil); err == nil {
		t.Fatal("scan into an empty vector accepted")
	}
	if err := pm.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pm.ScanOnce(s, vec); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("scan after Close: %v", err)
	}
	if err := pm.Close(); err != nil {
		t.Fatal(err)
	}
}

// A write made by the kernel on the process's behalf (read(2) from a pipe
// into the range: a kernel-mode fault) is tracked although OpenWPAsync's
// descriptor handles user-mode faults only: the kernel resolves the
// asynchronous fault before it would look at the descriptor.
func TestWPAsyncKernelModeWrite(t *testing.T) {
	w := newWPTracked(t, 8)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.Write(p[1], []byte("kernel")); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Read(p[0], w.mem[3*w.ps:3*w.ps+6]); n != 6 || err != nil {
		t.Fatalf("read(2) into the range: %d, %v", n, err)
	}
	w.want(t, true, 4, "3-4")
}

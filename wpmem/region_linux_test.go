//go:build linux

package wpmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/internal/testkit"
)

// newOrSkip tracks a new region of pages pages, closed at the test's end;
// it skips without the kernel feature unless LIVEMIG_REQUIRE_UFFD=1.
func newOrSkip(t testing.TB, pages uint64) *Region {
	t.Helper()
	r, err := New(pages)
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd asynchronous write-protect", "LIVEMIG_REQUIRE_UFFD")
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// synced returns the pages SyncDirty reports, in order.
func synced(t *testing.T, r *Region) []uint64 {
	t.Helper()
	dst := make([]uint64, livemig.WordsFor(r.PageCount()))
	if err := r.SyncDirty(dst); err != nil {
		t.Fatal(err)
	}
	return pagesOf(dst)
}

func pagesOf(w []uint64) []uint64 {
	var out []uint64
	for n, ok := bitmap.Words(w).NextSet(0); ok; n, ok = bitmap.Words(w).NextSet(n + 1) {
		out = append(out, n)
	}
	return out
}

func wantSynced(t *testing.T, r *Region, want ...uint64) {
	t.Helper()
	if got := synced(t, r); !slices.Equal(got, want) {
		t.Fatalf("SyncDirty reported %v, want %v", got, want)
	}
}

// Plain Go stores into pages never touched are seen, exactly; nothing
// written reports nothing; a second sync reports nothing; bits already in
// dst stay; reads are not writes.
func TestPlainStores(t *testing.T) {
	r := newOrSkip(t, 200)
	ps := r.PageSize()
	mem := r.Bytes()
	wantSynced(t, r)
	for _, n := range []int{0, 1, 63, 64, 100, 199} {
		mem[n*ps+ps/2] = byte(n) + 1
	}
	var sum byte
	for n := 120; n < 130; n++ {
		sum += mem[n*ps] // reads: no write
	}
	dst := make([]uint64, livemig.WordsFor(200))
	dst[2] = 1 << 10 // page 138: OR semantics, it stays
	if err := r.SyncDirty(dst); err != nil {
		t.Fatal(err)
	}
	if got, want := pagesOf(dst), []uint64{0, 1, 63, 64, 100, 138, 199}; !slices.Equal(got, want) {
		t.Fatalf("SyncDirty reported %v, want %v (read sum %d)", got, want, sum)
	}
	wantSynced(t, r)
	mem[100*ps] = 7 // written again after the sync
	mem[125*ps] = 7 // read before, written now
	wantSynced(t, r, 100, 125)
	wantSynced(t, r)
}

// copy() (the runtime's memmove, in assembly) across page boundaries, and
// clear() (memclr), are seen page by page.
func TestCopyAndClear(t *testing.T) {
	r := newOrSkip(t, 64)
	ps := r.PageSize()
	mem := r.Bytes()
	src := make([]byte, 3*ps)
	for i := range src {
		src[i] = byte(i*7 + 1)
	}
	copy(mem[10*ps+ps-8:], src) // pages 10 (last 8 bytes) to 13
	wantSynced(t, r, 10, 11, 12, 13)
	clear(mem[40*ps : 42*ps])
	wantSynced(t, r, 40, 41)
}

// Another goroutine's writes are seen once it is done.
func TestOtherGoroutine(t *testing.T) {
	r := newOrSkip(t, 300)
	ps := r.PageSize()
	done := make(chan struct{})
	go func() {
		defer close(done)
		mem := r.Bytes()
		for n := 3; n < 300; n += 50 {
			binary.LittleEndian.PutUint64(mem[n*ps+64:], uint64(n))
		}
	}()
	<-done
	wantSynced(t, r, 3, 53, 103, 153, 203, 253)
}

// A system call that writes user memory (read(2) from a pipe straight into
// the region, across a page boundary) is seen: the kernel's write goes
// through the page tables too.
func TestSyscallWrite(t *testing.T) {
	r := newOrSkip(t, 32)
	ps := r.PageSize()
	mem := r.Bytes()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	msg := []byte("written by the kernel, not by Go code")
	if _, err := unix.Write(p[1], msg); err != nil {
		t.Fatal(err)
	}
	at := 20*ps - 10 // the message straddles pages 19 and 20
	n, err := unix.Read(p[0], mem[at:at+len(msg)])
	if err != nil || n != len(msg) || string(mem[at:at+n]) != string(msg) {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	wantSynced(t, r, 19, 20)
}

// MADV_DONTNEED makes a page zeros: that counts as a write.
func TestDontNeedCountsAsWritten(t *testing.T) {
	r := newOrSkip(t, 16)
	ps := r.PageSize()
	mem := r.Bytes()
	mem[5*ps] = 1
	wantSynced(t, r, 5)
	if err := unix.Madvise(mem[5*ps:6*ps], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	wantSynced(t, r, 5)
}

// PeekDirty reports without clearing: the next SyncDirty reports the same.
func TestPeek(t *testing.T) {
	r := newOrSkip(t, 128)
	ps := r.PageSize()
	mem := r.Bytes()
	mem[7*ps] = 1
	mem[70*ps] = 1
	dst := make([]uint64, livemig.WordsFor(128))
	for range 2 {
		if err := r.PeekDirty(dst); err != nil {
			t.Fatal(err)
		}
		if got := pagesOf(dst); !slices.Equal(got, []uint64{7, 70}) {
			t.Fatalf("PeekDirty reported %v", got)
		}
	}
	wantSynced(t, r, 7, 70)
	wantSynced(t, r)
}

// With a vector of one region, each written run fills it: the scan
// resumes at the kernel's walk end and still reports every page, exactly,
// and whole runs of 64 pages and more land as whole words.
func TestTinyVectorResumes(t *testing.T) {
	r := newOrSkip(t, 1024)
	r.vec = r.vec[:1]
	ps := r.PageSize()
	mem := r.Bytes()
	rng := rand.New(rand.NewPCG(13, 5))
	var want []uint64
	for n := uint64(0); n < 1024; n++ {
		if (n >= 128 && n < 320) || rng.IntN(5) == 0 {
			mem[int(n)*ps+rng.IntN(ps)] = 1
			want = append(want, n)
		}
	}
	wantSynced(t, r, want...)
	wantSynced(t, r)
}

func TestSetRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		a := uint64(rng.IntN(300))
		b := a + uint64(rng.IntN(300-int(a)+1))
		w := make([]uint64, 5)
		setRange(w, a, b)
		for n := uint64(0); n < 320; n++ {
			if got := bitmap.Words(w).Test(n); got != (n >= a && n < b) {
				t.Fatalf("setRange(%d, %d): page %d is %v", a, b, n, got)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	r := newOrSkip(t, 100)
	if err := r.SyncDirty(make([]uint64, 1)); !errors.Is(err, bitmap.ErrShort) {
		t.Errorf("short dst: %v, want ErrShort", err)
	}
	if err := r.PeekDirty(nil); !errors.Is(err, bitmap.ErrShort) {
		t.Errorf("short dst: %v, want ErrShort", err)
	}
	if err := r.ReadPage(100, make([]byte, r.PageSize())); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("ReadPage(100): %v, want ErrPageRange", err)
	}
	if _, err := r.View(100); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("View(100): %v, want ErrPageRange", err)
	}
	if err := r.ReadPage(0, make([]byte, 10)); err == nil {
		t.Error("ReadPage into 10 bytes accepted")
	}
	if _, err := New(0); err == nil {
		t.Error("New(0) accepted")
	}
	if _, err := Track(r.Bytes()[1 : r.PageSize()+1]); err == nil {
		t.Error("Track of unaligned memory accepted")
	}
	// Memory already under tracking can't be tracked twice.
	if r2, err := Track(r.Bytes()); err == nil {
		r2.Close()
		t.Error("Track of tracked memory accepted")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.SyncDirty(make([]uint64, 2)); !errors.Is(err, livemig.ErrClosed) {
		t.Errorf("SyncDirty after Close: %v, want ErrClosed", err)
	}
}

// Track serves memory the caller mapped, and leaves it mapped at Close.
func TestTrack(t *testing.T) {
	ps := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 16*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	mem[3*ps] = 9 // before tracking: not reported
	r, err := Track(mem)
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd asynchronous write-protect", "LIVEMIG_REQUIRE_UFFD")
	}
	wantSynced(t, r)
	mem[3*ps+1] = 9
	mem[15*ps] = 9
	wantSynced(t, r, 3, 15)
	page := make([]byte, ps)
	if err := r.ReadPage(3, page); err != nil || page[0] != 9 || page[1] != 9 {
		t.Fatalf("ReadPage: %v %v", page[:2], err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	mem[4*ps] = 1 // still mapped, no longer protected
}

// The mapping carries MADV_NOHUGEPAGE (VmFlags "nh" in /proc/self/smaps),
// and a write into a region of many 2 MiB blocks dirties one 4 KiB page,
// not a huge page's 512.
func TestNoHugePages(t *testing.T) {
	const pages = 4096 // 16 MiB
	r := newOrSkip(t, pages)
	ps := r.PageSize()
	mem := r.Bytes()
	for _, n := range []int{600, 1536, 4095} {
		mem[n*ps+1] = 1
	}
	wantSynced(t, r, 600, 1536, 4095)
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	start := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	_, rest, found := strings.Cut(string(smaps), "\n"+start)
	if !found {
		t.Fatalf("mapping %s... not in /proc/self/smaps", start)
	}
	_, flags, _ := strings.Cut(rest, "VmFlags:")
	flags, _, _ = strings.Cut(flags, "\n")
	if !slices.Contains(strings.Fields(flags), "nh") {
		t.Fatalf("VmFlags of the mapping: %q, no nh (MADV_NOHUGEPAGE)", flags)
	}
}

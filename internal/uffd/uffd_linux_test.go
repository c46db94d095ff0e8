//go:build linux

package uffd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// openOrSkip opens a userfaultfd, skipping the test when the kernel or the
// process can't, unless LIVEMIG_REQUIRE_UFFD=1 demands it.
func openOrSkip(t *testing.T) *FD {
	t.Helper()
	f, err := Open(0)
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd", "LIVEMIG_REQUIRE_UFFD")
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mapRegion(t *testing.T, size int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// load reads mem[i] with a plain load in this function. (A channel send of
// mem[i] itself would let the runtime copy the byte straight from the region
// later, inside memmove, where the fault could not be preempted.)
//
//go:noinline
func load(mem []byte, i int) byte { return mem[i] }

func addr(b []byte) uintptr { return uintptr(unsafePointer(b)) }

func TestDecode(t *testing.T) {
	var b [MsgSize]byte
	b[0] = EventPagefault
	binary.NativeEndian.PutUint64(b[8:], PagefaultFlagWrite)
	binary.NativeEndian.PutUint64(b[16:], 0x7f0000123000)
	binary.NativeEndian.PutUint32(b[24:], 4242)
	got := decode(b[:])
	want := Msg{Event: EventPagefault, Flags: PagefaultFlagWrite, Address: 0x7f0000123000, PTID: 4242}
	if got != want {
		t.Fatalf("decode = %+v, want %+v", got, want)
	}
	b[0] = EventFork
	if got := decode(b[:]); got != (Msg{Event: EventFork}) {
		t.Fatalf("decode of a fork event = %+v", got)
	}
}

func TestFeatureProbe(t *testing.T) {
	openOrSkip(t)
	feat, ioctls, err := Supported()
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&IoctlRegister == 0 || ioctls&IoctlAPI == 0 {
		t.Errorf("ioctls %#x lack REGISTER or API", ioctls)
	}
	t.Logf("features %#x ioctls %#x", feat, ioctls)
	// A feature bit no kernel offers is refused before the handshake.
	if _, err := Open(1 << 62); !errors.Is(err, livemig.ErrNotSupported) {
		t.Fatalf("Open(1<<62) = %v, want ErrNotSupported", err)
	}
}

// TestFaultCopy: a goroutine reading a missing page blocks until Copy
// places it, then sees the placed bytes; a second Copy is ErrExist; ZeroPage
// fills another page; Wake after DONTWAKE releases a waiter.
func TestFaultCopy(t *testing.T) {
	f := openOrSkip(t)
	ps := os.Getpagesize()
	mem := mapRegion(t, 4*ps)
	ioctls, err := f.Register(addr(mem), uintptr(len(mem)), RegisterModeMissing)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(IoctlCopy | IoctlZeropage | IoctlWake); ioctls&want != want {
		t.Fatalf("range ioctls %#x lack COPY/ZEROPAGE/WAKE", ioctls)
	}
	src := bytes.Repeat([]byte{0xA5}, ps)
	got := make(chan byte)
	go func() { got <- load(mem, ps+7) }() // page 1
	msgs := make([]Msg, 4)
	n, err := f.Read(msgs)
	if err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if msgs[0].Event != EventPagefault || uintptr(msgs[0].Address) != addr(mem)+uintptr(ps) {
		t.Fatalf("message %+v, want a fault at %#x", msgs[0], addr(mem)+uintptr(ps))
	}
	if err := f.Copy(uintptr(msgs[0].Address), src, 0); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != 0xA5 {
		t.Fatalf("read %#x after placement, want 0xa5", b)
	}
	if err := f.Copy(addr(mem)+uintptr(ps), src, 0); !errors.Is(err, ErrExist) {
		t.Fatalf("second Copy = %v, want ErrExist", err)
	}
	if err := f.ZeroPage(addr(mem), uintptr(ps), 0); err != nil {
		t.Fatal(err)
	}
	if mem[0] != 0 {
		t.Fatal("zero page not zero")
	}
	if err := f.ZeroPage(addr(mem), uintptr(ps), 0); !errors.Is(err, ErrExist) {
		t.Fatalf("second ZeroPage = %v, want ErrExist", err)
	}

	// DONTWAKE then Wake.
	go func() { got <- load(mem, 2*ps) }()
	if n, err := f.Read(msgs); err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	src[0] = 0x5A
	if err := f.Copy(addr(mem)+uintptr(2*ps), src, CopyModeDontWake); err != nil {
		t.Fatal(err)
	}
	if err := f.Wake(addr(mem)+uintptr(2*ps), uintptr(ps)); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != 0x5A {
		t.Fatalf("read %#x after DONTWAKE copy and wake, want 0x5a", b)
	}
	if err := f.Unregister(addr(mem), uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}
	if mem[3*ps] != 0 { // ordinary memory now: no fault
		t.Fatal("unregistered missing page not zero")
	}
}

// TestCloseStopsRead: Close returns a Read blocked with no faults, which
// then reports ErrClosed; calls after Close do too.
func TestCloseStopsRead(t *testing.T) {
	f := openOrSkip(t)
	done := make(chan error)
	go func() {
		_, err := f.Read(make([]Msg, 1))
		done <- err
	}()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Read after Close = %v, want ErrClosed", err)
	}
	if err := f.Wake(0, 4096); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Wake after Close = %v, want ErrClosed", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestReadParks: a Read with no message to read waits parked in the
// runtime's poller ("IO wait"), holding no P, rather than in a system call
// that keeps its P until sysmon retakes it. (A goroutine blocked on a
// missing page holds a P too: with GOMAXPROCS=2, a reader in poll(2) left
// the goroutines serving the fault waiting for sysmon, ~300 µs a fault.)
func TestReadParks(t *testing.T) {
	f := openOrSkip(t)
	done := make(chan error, 1)
	go func() {
		_, err := f.Read(make([]Msg, 1))
		done <- err
	}()
	buf := make([]byte, 1<<20)
	state := "not started"
	for deadline := time.Now().Add(10 * time.Second); state != "IO wait"; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("the reader waits in state %q, want IO wait", state)
		}
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if !strings.Contains(g, "uffd.(*FD).Read(") {
				continue
			}
			// "goroutine 7 [IO wait]:" or "goroutine 7 [IO wait, 2 minutes]:"
			if a, b := strings.IndexByte(g, '['), strings.IndexAny(g, ",]"); a >= 0 && b > a {
				state = g[a+1 : b]
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Read after Close = %v, want ErrClosed", err)
	}
}

// TestCloseWakesFaulter: closing the descriptor releases a thread blocked
// on a fault in a range that stays registered; it reads zeros.
func TestCloseWakesFaulter(t *testing.T) {
	f := openOrSkip(t)
	ps := os.Getpagesize()
	mem := mapRegion(t, ps)
	if _, err := f.Register(addr(mem), uintptr(ps), RegisterModeMissing); err != nil {
		t.Fatal(err)
	}
	got := make(chan byte)
	go func() { got <- load(mem, 0) }()
	if n, err := f.Read(make([]Msg, 1)); err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; b != 0 {
		t.Fatalf("read %#x, want 0", b)
	}
}

// FuzzDecode: any 32 bytes decode without panicking; a page fault's fields
// come from their offsets, and other events carry only their kind.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < MsgSize {
			return
		}
		m := decode(b[:MsgSize])
		if m.Event != b[0] {
			t.Fatalf("event %#x, byte 0 is %#x", m.Event, b[0])
		}
		if m.Event == EventPagefault {
			if m.Flags != binary.NativeEndian.Uint64(b[8:]) || m.Address != binary.NativeEndian.Uint64(b[16:]) || m.PTID != binary.NativeEndian.Uint32(b[24:]) {
				t.Fatalf("page fault fields %+v from %x", m, b[:MsgSize])
			}
		} else if m != (Msg{Event: m.Event}) {
			t.Fatalf("event %#x decoded fields %+v", m.Event, m)
		}
	})
}

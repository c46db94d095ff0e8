package kvm

import (
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStructSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_sregs.cr0 offset", unsafe.Offsetof(Sregs{}.CR0), 224},
		{"kvm_sregs.interrupt_bitmap offset", unsafe.Offsetof(Sregs{}.InterruptBitmap), 280},
		{"kvm_fpu.last_ip offset", unsafe.Offsetof(FPU{}.LastIP), 136},
		{"kvm_fpu.mxcsr offset", unsafe.Offsetof(FPU{}.MXCSR), 408},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d bytes, want %d", c.name, c.got, c.want)
		}
	}
}

func runPage(reason ExitReason) []byte {
	run := make([]byte, 4096)
	binary.LittleEndian.PutUint32(run[runExitReason:], uint32(reason))
	return run
}

func TestDecodeExit(t *testing.T) {
	le := binary.LittleEndian
	run := runPage(ExitIO)
	u := run[runUnion:]
	u[0], u[1] = IOOut, 4
	le.PutUint16(u[2:], 0x10)
	le.PutUint32(u[4:], 1)
	le.PutUint64(u[8:], 0x1000-8)
	le.PutUint32(run[0x1000-8:], 0xdeadbeef)
	e, err := decodeExit(run)
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != ExitIO || !e.IO.Out || e.IO.Port != 0x10 || e.IO.Size != 4 || e.IO.Count != 1 ||
		len(e.IO.Data) != 4 || le.Uint32(e.IO.Data) != 0xdeadbeef {
		t.Fatalf("IO exit decoded as %+v", e)
	}

	le.PutUint64(u[8:], 0x1000-2) // data runs past the page
	if _, err := decodeExit(run); !errors.Is(err, ErrBadInput) {
		t.Fatalf("IO data past kvm_run: err = %v, want ErrBadInput", err)
	}
	le.PutUint32(u[4:], 1<<31) // count overflowing
	le.PutUint64(u[8:], 64)
	if _, err := decodeExit(run); !errors.Is(err, ErrBadInput) {
		t.Fatalf("IO count past kvm_run: err = %v, want ErrBadInput", err)
	}

	run = runPage(ExitMMIO)
	u = run[runUnion:]
	le.PutUint64(u, 0xfee00000)
	copy(u[8:], []byte{1, 2, 3, 4})
	le.PutUint32(u[16:], 4)
	u[20] = 1
	e, err = decodeExit(run)
	if err != nil || e.MMIO.Addr != 0xfee00000 || !e.MMIO.Write || string(e.MMIO.Data) != "\x01\x02\x03\x04" {
		t.Fatalf("MMIO exit decoded as %+v, %v", e, err)
	}
	le.PutUint32(u[16:], 9)
	if _, err := decodeExit(run); !errors.Is(err, ErrBadInput) {
		t.Fatalf("MMIO length 9: err = %v, want ErrBadInput", err)
	}

	run = runPage(ExitInternalError)
	u = run[runUnion:]
	le.PutUint32(u, 1)
	le.PutUint32(u[4:], 2)
	le.PutUint64(u[8:], 0x55)
	if e, _ := decodeExit(run); e.Suberror != 1 || e.NData != 2 || e.Data[0] != 0x55 {
		t.Fatalf("internal error decoded as %+v", e)
	}
	run = runPage(ExitFailEntry)
	le.PutUint64(run[runUnion:], 0x80000021)
	le.PutUint32(run[runUnion+8:], 3)
	if e, _ := decodeExit(run); e.HardwareReason != 0x80000021 || e.CPU != 3 {
		t.Fatalf("fail entry decoded as %+v", e)
	}
	if e, err := decodeExit(runPage(ExitHLT)); err != nil || e.Reason != ExitHLT {
		t.Fatalf("HLT decoded as %+v, %v", e, err)
	}
	if _, err := decodeExit(make([]byte, 100)); !errors.Is(err, ErrBadInput) {
		t.Fatalf("short kvm_run: err = %v", err)
	}
}

func TestExitReasonString(t *testing.T) {
	for r, want := range map[ExitReason]string{ExitIO: "IO", ExitDirtyRingFull: "DIRTY_RING_FULL", 99: "EXIT_99", 20: "EXIT_20"} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint32(r), got, want)
		}
	}
}

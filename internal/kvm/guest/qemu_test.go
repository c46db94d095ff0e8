//go:build linux

package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/kvm"
	"github.com/livemig/livemig/internal/testkit"
)

// multiboot builds a Multiboot (v1) kernel of the loaded guest: the bytes
// of GPA [ParamsGPA, CodeGPA+len(code)), with a header using the a.out
// kludge (load at ParamsGPA, enter at CodeGPA) in the unused upper half of
// the parameter page. A Multiboot loader (QEMU's -kernel) enters it the
// way the KVM host does: 32-bit flat protected mode, paging off.
func multiboot(t *testing.T, l *kvm.Layout) []byte {
	t.Helper()
	img, err := l.GPA(ParamsGPA, CodeGPA-ParamsGPA+len(code))
	if err != nil {
		t.Fatal(err)
	}
	img = bytes.Clone(img)
	const hdr = 0x800
	var magic, flags uint32 = 0x1BADB002, 1 << 16
	le := binary.LittleEndian
	for i, v := range []uint32{magic, flags, -(magic + flags), ParamsGPA + hdr, ParamsGPA,
		ParamsGPA + uint32(len(img)), 0, CodeGPA} {
		le.PutUint32(img[hdr+4*i:], v)
	}
	return img
}

// TestGuestUnderQEMU runs the committed guest bytes under QEMU's TCG (no
// KVM needed) until they halt after MaxBatches, dumps guest memory through
// the monitor and compares it, byte for byte over the data region, with
// the Go model replayed on host memory: the guest writes exactly the pages
// and values the model predicts, and its checksum verifies.
func TestGuestUnderQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		testkit.SkipOrFail(t, fmt.Errorf("%w: %v", livemig.ErrNotSupported, err), "QEMU", "LIVEMIG_REQUIRE_QEMU")
	}
	const size = 4 << 20
	for _, p := range []Params{
		{A: Range{GPA: 0x100000, Pages: 64}, B: Range{GPA: 0x200000, Pages: 48}, PerBatch: 7, Pattern: Random, Seed: 42, MaxBatches: 1500},
		{A: Range{GPA: 0x100000, Pages: 64}, B: Range{GPA: 0x200000, Pages: 48}, PerBatch: 50, Pattern: Sequential, MaxBatches: 30},
		{A: Range{GPA: 0x100000, Pages: 64}, B: Range{GPA: 0x200000, Pages: 48}, PerBatch: 9, Pattern: Hot, Hot: 5, Seed: 3, MaxBatches: 200, NoExit: true},
	} {
		t.Run(fmt.Sprintf("pattern%d", p.Pattern), func(t *testing.T) {
			l := hostMemory(t, size)
			if err := Load(l, p); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			kernel := filepath.Join(dir, "guest.mb")
			if err := os.WriteFile(kernel, multiboot(t, l), 0o644); err != nil {
				t.Fatal(err)
			}
			dump := runQEMU(t, bin, kernel, filepath.Join(dir, "mem.bin"), p.MaxBatches, size)
			got := hostMemory(t, size)
			all, _ := got.GPA(0, size)
			copy(all, dump)
			apply(t, l, p, int(p.MaxBatches))
			for _, r := range []Range{p.A, p.B, {GPA: ParamsGPA, Pages: 1}} {
				n := int(r.Pages) * kvm.PageSize
				if r.GPA == ParamsGPA {
					n = 128 // the block, not the Multiboot header
				}
				a, _ := got.GPA(r.GPA, n)
				b, _ := l.GPA(r.GPA, n)
				if i := firstDiff(a, b); i >= 0 {
					t.Fatalf("GPA %#x: guest wrote %#x, model says %#x", r.GPA+uint64(i), a[i], b[i])
				}
			}
			if err := Verify(got, p); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// runQEMU boots kernel under TCG, with QMP connecting to a socket of this
// test, polls the guest's counter until it reaches want, saves size bytes
// of guest memory to dump and returns them.
func runQEMU(t *testing.T, bin, kernel, dump string, want uint32, size int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sock := filepath.Join(filepath.Dir(dump), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.CommandContext(ctx, bin, "-machine", "pc-i440fx-7.2,accel=tcg", "-m", "16",
		"-display", "none", "-nodefaults", "-no-reboot", "-kernel", kernel, "-qmp", "unix:"+sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("QEMU did not connect to QMP: %v (stderr %s)", err, stderr.String())
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(50 * time.Second))
	dec, enc := json.NewDecoder(conn), json.NewEncoder(conn)
	qmp := func(cmd string, args any) json.RawMessage { // one command, its "return"
		if cmd != "" {
			if err := enc.Encode(map[string]any{"execute": cmd, "arguments": args}); err != nil {
				t.Fatal(err)
			}
		}
		for {
			var m map[string]json.RawMessage
			if err := dec.Decode(&m); err != nil {
				t.Fatalf("QMP %s: %v (stderr %s)", cmd, err, stderr.String())
			}
			if e, ok := m["error"]; ok {
				t.Fatalf("QMP %s: %s", cmd, e)
			}
			if r, ok := m["return"]; ok || m["QMP"] != nil {
				return r
			}
		}
	}
	qmp("", nil) // the greeting
	qmp("qmp_capabilities", map[string]any{})
	xp := map[string]any{"command-line": fmt.Sprintf("xp /1wx %#x", ParamsGPA+offCounter)}
	wantText := fmt.Sprintf(": 0x%08x", want)
	for a := qmp("human-monitor-command", xp); !strings.Contains(string(a), wantText); a = qmp("human-monitor-command", xp) {
		if ctx.Err() != nil {
			t.Fatalf("guest counter never reached %d under QEMU; last answer %s", want, a)
		}
	}
	qmp("pmemsave", map[string]any{"val": 0, "size": size, "filename": dump})
	qmp("quit", map[string]any{})
	b, err := os.ReadFile(dump)
	if err != nil || len(b) != size {
		t.Fatalf("memory dump: %d bytes, %v", len(b), err)
	}
	return b
}

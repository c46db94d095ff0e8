//go:build linux

// Package qemutest runs a real QEMU (qemu-system-x86_64, TCG) for the tests
// of examples/qemu: a boot-sector guest of the project's own that counts and
// dirties memory (testdata/guest), a QMP client, and the steps of saving and
// loading migration streams. It is for tests only.
package qemutest

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
)

// Binary is the QEMU the tests run.
const Binary = "qemu-system-x86_64"

// Machine is the pinned machine type: streams name the full type.
const Machine = "pc-i440fx-7.2"

// RAMBytes is the guest's RAM (-m 64).
const RAMBytes = 64 << 20

// The guest's memory map (testdata/guest/boot.S).
const (
	CounterAddr = 0x500000 // the counter, a little-endian dword
	SmallPages  = 0x100000 // 1024 pages with the counter at offsets 0 and 2048
	WholePages  = 0x600000 // 64 pages filled with counter * 0x9e3779b1
)

//go:embed guest.bin
var bootSector []byte

// Find returns the path of QEMU, or an error wrapping
// livemig.ErrNotSupported when it is not installed (tests then skip unless
// LIVEMIG_REQUIRE_QEMU=1).
func Find() (string, error) {
	p, err := exec.LookPath(Binary)
	if err != nil {
		return "", fmt.Errorf("%w: %s not found (apt-get install --no-install-recommends qemu-system-x86): %v", livemig.ErrNotSupported, Binary, err)
	}
	return p, nil
}

// Hardware is the guest's machine; the zero value is the tests' default
// (Machine, -m 64, no devices beyond -nodefaults' and the IDE disk). Source
// and destination of a migration must have the same.
type Hardware struct {
	// Machine is the machine type; "" means Machine. Pin a full type
	// (pc-q35-7.2, not q35): the stream names it.
	Machine string
	// MachineOpts are appended to -machine, e.g. "memory-backend=m0".
	MachineOpts string
	// MemMB is -m; 0 means 64.
	MemMB int
	// Args are more arguments: -device, -object, -numa ...
	Args []string
}

// Options configure a VM.
type Options struct {
	Hardware
	// Paused starts the VM with -S.
	Paused bool
	// Incoming is the -incoming argument ("exec:cat FILE", "tcp:...").
	Incoming string
	// Timeout bounds the VM's life; 0 means 60 s.
	Timeout time.Duration
}

// VM is one QEMU process, its QMP connection and its debug-port log.
type VM struct {
	Dir  string // the VM's own directory: boot.img, dbg.log, qmp.sock
	cmd  *exec.Cmd
	qmp  net.Conn
	rd   *bufio.Reader
	mu   sync.Mutex
	errb bytes.Buffer
	done chan struct{}
	werr error
}

// Start runs QEMU with the test guest in a directory of its own under dir,
// and connects to its QMP socket. The VM is stopped at the test's end.
func Start(t testing.TB, dir string, opt Options) (*VM, error) {
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	vmDir, err := os.MkdirTemp(dir, "vm")
	if err != nil {
		return nil, err
	}
	img := make([]byte, 1<<20)
	copy(img, bootSector)
	if err := os.WriteFile(filepath.Join(vmDir, "boot.img"), img, 0o644); err != nil {
		return nil, err
	}
	if opt.Timeout == 0 {
		opt.Timeout = 60 * time.Second
	}
	machine, mem := opt.Machine, opt.MemMB
	if machine == "" {
		machine = Machine
	}
	if mem == 0 {
		mem = 64
	}
	machine += ",accel=tcg"
	if opt.MachineOpts != "" {
		machine += "," + opt.MachineOpts
	}
	args := []string{
		"-machine", machine, "-m", strconv.Itoa(mem), "-display", "none", "-nodefaults",
		"-drive", "file=" + filepath.Join(vmDir, "boot.img") + ",format=raw,if=ide",
		"-debugcon", "file:" + filepath.Join(vmDir, "dbg.log"), "-global", "isa-debugcon.iobase=0xe9",
		"-qmp", "unix:" + filepath.Join(vmDir, "qmp.sock") + ",server=on,wait=off",
		"-rtc", "base=2020-01-01T00:00:00,clock=vm",
	}
	args = append(args, opt.Args...)
	if opt.Paused {
		args = append(args, "-S")
	}
	if opt.Incoming != "" {
		args = append(args, "-incoming", opt.Incoming)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opt.Timeout)
	vm := &VM{Dir: vmDir, done: make(chan struct{})}
	vm.cmd = exec.CommandContext(ctx, bin, args...)
	vm.cmd.Stderr = &lockedWriter{mu: &vm.mu, b: &vm.errb}
	vm.cmd.Dir = vmDir
	if err := vm.cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	go func() {
		vm.werr = vm.cmd.Wait()
		cancel()
		close(vm.done)
	}()
	t.Cleanup(vm.Stop)
	if err := vm.connect(filepath.Join(vmDir, "qmp.sock")); err != nil {
		return vm, err
	}
	return vm, nil
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Stderr returns what QEMU wrote on its standard error so far.
func (vm *VM) Stderr() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.errb.String()
}

// Exited reports whether QEMU has exited, and its exit error.
func (vm *VM) Exited() (bool, error) {
	select {
	case <-vm.done:
		return true, vm.werr
	default:
		return false, nil
	}
}

// Wait waits up to d for QEMU to exit and returns its exit error.
func (vm *VM) Wait(d time.Duration) error {
	select {
	case <-vm.done:
		return vm.werr
	case <-time.After(d):
		return fmt.Errorf("qemu still running after %v", d)
	}
}

func (vm *VM) connect(sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			vm.qmp, vm.rd = c, bufio.NewReader(c)
			break
		}
		if ex, _ := vm.Exited(); ex || time.Now().After(deadline) {
			return fmt.Errorf("qmp: %v; qemu stderr: %s", err, vm.Stderr())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := vm.rd.ReadBytes('\n'); err != nil { // the greeting
		return fmt.Errorf("qmp greeting: %v; qemu stderr: %s", err, vm.Stderr())
	}
	_, err := vm.Cmd("qmp_capabilities", nil)
	return err
}

// Cmd runs a QMP command and returns its "return" value.
func (vm *VM) Cmd(name string, args any) (json.RawMessage, error) {
	if vm.qmp == nil {
		return nil, errors.New("qmp: not connected")
	}
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	_ = vm.qmp.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := vm.qmp.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %v; qemu stderr: %s", name, err, vm.Stderr())
	}
	for {
		line, err := vm.rd.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %v; qemu stderr: %s", name, err, vm.Stderr())
		}
		var resp struct {
			Event  string          `json:"event"`
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %v", name, err)
		}
		if resp.Event != "" {
			continue
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", name, resp.Error.Class, resp.Error.Desc)
		}
		return resp.Return, nil
	}
}

// Migration is the part of query-migrate the tests read.
type Migration struct {
	Status string `json:"status"`
	RAM    struct {
		DirtySyncCount int   `json:"dirty-sync-count"`
		Transferred    int64 `json:"transferred"`
	} `json:"ram"`
	XBZRLE struct {
		Pages int64 `json:"pages"`
	} `json:"xbzrle-cache"`
	ErrorDesc string `json:"error-desc"`
}

// QueryMigrate runs query-migrate.
func (vm *VM) QueryMigrate() (Migration, error) {
	var m Migration
	raw, err := vm.Cmd("query-migrate", nil)
	if err == nil {
		err = json.Unmarshal(raw, &m)
	}
	return m, err
}

// WaitMigration polls query-migrate until until returns true, the
// migration fails, QEMU exits, or d passes.
func (vm *VM) WaitMigration(d time.Duration, until func(Migration) bool) (Migration, error) {
	deadline := time.Now().Add(d)
	for {
		if ex, werr := vm.Exited(); ex {
			return Migration{}, fmt.Errorf("qemu exited (%v): %s", werr, strings.TrimSpace(vm.Stderr()))
		}
		m, err := vm.QueryMigrate()
		if err != nil {
			if ex, werr := vm.Exited(); ex {
				return m, fmt.Errorf("qemu exited (%v): %s", werr, strings.TrimSpace(vm.Stderr()))
			}
			return m, err
		}
		if m.Status == "failed" {
			return m, fmt.Errorf("migration failed: %s; qemu stderr: %s", m.ErrorDesc, vm.Stderr())
		}
		if until(m) {
			return m, nil
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("migration still %q after %v", m.Status, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Completed is a WaitMigration condition.
func Completed(m Migration) bool { return m.Status == "completed" }

// Status returns query-status's status ("running", "paused", ...).
func (vm *VM) Status() (string, error) {
	raw, err := vm.Cmd("query-status", nil)
	if err != nil {
		return "", err
	}
	var s struct {
		Status string `json:"status"`
	}
	err = json.Unmarshal(raw, &s)
	return s.Status, err
}

// Pmemsave saves size bytes of guest-physical memory from addr and returns
// them.
func (vm *VM) Pmemsave(addr, size uint64) ([]byte, error) {
	f := filepath.Join(vm.Dir, fmt.Sprintf("pmem-%x.bin", addr))
	if _, err := vm.Cmd("pmemsave", map[string]any{"val": addr, "size": size, "filename": f}); err != nil {
		return nil, err
	}
	defer os.Remove(f)
	return os.ReadFile(f)
}

// Log returns the guest's debug-port output: whether it printed BOOT (and
// how often) and the counter values it printed, in order.
func (vm *VM) Log() (boots int, counters []uint32) {
	b, _ := os.ReadFile(filepath.Join(vm.Dir, "dbg.log"))
	for _, line := range strings.Split(string(b), "\n") {
		if line == "BOOT" {
			boots++
			continue
		}
		if v, err := strconv.ParseUint(line, 16, 32); err == nil && len(line) == 8 {
			counters = append(counters, uint32(v))
		}
	}
	return boots, counters
}

// WaitCounter waits up to d until the guest has printed at least n counter
// values, and returns the log.
func (vm *VM) WaitCounter(d time.Duration, n int) (boots int, counters []uint32, err error) {
	deadline := time.Now().Add(d)
	for {
		boots, counters = vm.Log()
		if len(counters) >= n {
			return boots, counters, nil
		}
		if ex, werr := vm.Exited(); ex {
			return boots, counters, fmt.Errorf("qemu exited (%v): %s", werr, vm.Stderr())
		}
		if time.Now().After(deadline) {
			return boots, counters, fmt.Errorf("the guest printed %d counter values in %v, want %d", len(counters), d, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitBoot waits up to d until the guest has printed BOOT.
func (vm *VM) WaitBoot(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if boots, _ := vm.Log(); boots > 0 {
			return nil
		}
		if ex, werr := vm.Exited(); ex {
			return fmt.Errorf("qemu exited (%v): %s", werr, vm.Stderr())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest did not boot within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends QEMU: quit over QMP, then a kill of this process if it has not
// exited within 3 s.
func (vm *VM) Stop() {
	if ex, _ := vm.Exited(); ex {
		return
	}
	if vm.qmp != nil {
		_ = vm.qmp.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = vm.qmp.Write([]byte(`{"execute":"quit"}` + "\n"))
	}
	select {
	case <-vm.done:
	case <-time.After(3 * time.Second):
		_ = vm.cmd.Process.Kill()
		<-vm.done
	}
	if vm.qmp != nil {
		vm.qmp.Close()
	}
}

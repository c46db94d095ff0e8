//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/livemig/livemig/examples/qemu/internal/qemutest"
	"github.com/livemig/livemig/examples/qemu/stream"
)

// gpaRange is where a RAM block sits in guest-physical memory.
type gpaRange struct {
	block string
	gpa   uint64
	size  uint64
}

// hwCase is a guest configuration other than the tests' default.
type hwCase struct {
	name string
	save qemutest.SaveOptions
	// ram maps the blocks that hold guest RAM to guest-physical addresses
	// (for pmemsave); blocks is the block list the stream must carry, in
	// order (names only).
	ram    []gpaRange
	blocks []string
	// kind is a record kind the stream must hold; section, a section
	// name it must hold (an iterable section other than ram, which the
	// JSON description does not describe).
	kind    stream.Kind
	section string
	// loadCaps are the capabilities the destination needs to load the
	// stream QEMU wrote.
	loadCaps []string
}

// defaultBlocks is the block list of the default guest.
var defaultBlocks = []string{"pc.ram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom",
	"/rom@etc/table-loader", "/rom@etc/acpi/rsdp"}

var hwCases = []hwCase{
	{
		name: "q35-128M",
		save: qemutest.SaveOptions{Hardware: qemutest.Hardware{Machine: "pc-q35-7.2", MemMB: 128}, Live: true, Passes: 3},
		ram:  []gpaRange{{"pc.ram", 0, 128 << 20}},
		blocks: []string{"pc.ram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom",
			"/rom@etc/table-loader", "/rom@etc/acpi/rsdp"},
	},
	{
		// A device with RAM of its own (vga.vram, written by the VGA
		// BIOS, and vga.rom), and QEMU's XBZRLE with a 1 MiB cache
		// (misses and evictions, not the 64 MiB that holds every page).
		name: "vga-xbzrle-1M",
		save: qemutest.SaveOptions{Hardware: qemutest.Hardware{Args: []string{"-device", "VGA"}},
			Live: true, Passes: 5, XBZRLE: true, XBZRLECache: 1 << 20},
		ram: []gpaRange{{"pc.ram", 0, 64 << 20}},
		blocks: []string{"pc.ram", "0000:00:02.0/vga.vram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom",
			"0000:00:02.0/vga.rom", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"},
	},
	{
		// Guest RAM in two blocks named by their memory backends.
		name: "numa-2-backends",
		save: qemutest.SaveOptions{Hardware: qemutest.Hardware{Args: []string{
			"-object", "memory-backend-ram,id=m0,size=32M", "-object", "memory-backend-ram,id=m1,size=32M",
			"-numa", "node,memdev=m0", "-numa", "node,memdev=m1"}}, Live: true, Passes: 3, XBZRLE: true},
		ram: []gpaRange{{"m0", 0, 32 << 20}, {"m1", 32 << 20, 32 << 20}},
		blocks: []string{"m0", "m1", "/rom@etc/acpi/tables", "pc.bios", "pc.rom",
			"/rom@etc/table-loader", "/rom@etc/acpi/rsdp"},
	},
	{
		// An older machine type, two vCPUs and more devices (option
		// ROMs in RAM blocks, USB, virtio).
		name: "i440fx-6.2-devices",
		save: qemutest.SaveOptions{Hardware: qemutest.Hardware{Machine: "pc-i440fx-6.2", Args: []string{
			"-smp", "2", "-device", "e1000,romfile=", "-device", "virtio-net-pci", "-device", "qemu-xhci",
			"-device", "usb-tablet", "-device", "virtio-balloon"}}, Live: true, Passes: 3},
		ram: []gpaRange{{"pc.ram", 0, 64 << 20}},
		blocks: []string{"pc.ram", "/rom@etc/acpi/tables", "pc.bios", "0000:00:03.0/virtio-net-pci.rom",
			"pc.rom", "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"},
	},
	{
		// QEMU 7.2's compress capability: COMPRESS_PAGE records (zlib).
		name:     "compress",
		save:     qemutest.SaveOptions{Live: true, Passes: 3, Capabilities: []string{"compress"}},
		ram:      []gpaRange{{"pc.ram", 0, 64 << 20}},
		blocks:   defaultBlocks,
		kind:     stream.KindCompressed,
		loadCaps: []string{"compress"},
	},
	{
		// Block migration (capability block): the disk goes in an
		// iterable section of its own, "block", with start, part and end
		// sections of data the description does not describe.
		name:    "block-migration",
		save:    qemutest.SaveOptions{Live: true, Passes: 3, Capabilities: []string{"block"}},
		ram:     []gpaRange{{"pc.ram", 0, 64 << 20}},
		blocks:  defaultBlocks,
		section: "block",
	},
}

// TestQEMUConfigurations saves live streams from guests of other
// configurations (q35 with 128 MiB, a VGA device's RAM blocks with XBZRLE
// on a small cache, RAM in two NUMA backends, an older machine type with
// more devices), then for each: every record and device section parses
// (the JSON description walks each device), extract equals QEMU's own view
// of the loaded guest (pmemsave of guest RAM; every block against the
// stream the loaded QEMU saves again), and a stream convert rewrote
// (-xbzrle, or -plain for one with XBZRLE) loads and the guest runs on.
func TestQEMUConfigurations(t *testing.T) {
	needQEMU(t)
	for _, c := range hwCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "src.mig")
			src, mig, err := qemutest.Save(t, dir, file, c.save)
			if err != nil {
				t.Fatal(err)
			}
			_, counters := src.Log()
			src.Stop()
			st := &savedStream{file: file, mig: mig}
			if len(counters) > 0 {
				st.last = counters[len(counters)-1]
			}
			s := inspectFile(t, file)
			checkParsed(t, s, c, file)
			ext := extractDir(t, file)

			vm, err := qemutest.LoadOn(t, dir, file, c.save.Hardware, c.loadCaps...)
			if err != nil {
				t.Fatal(err)
			}
			compareRAM(t, vm, c.ram, ext)
			compareResaved(t, vm, ext)
			vm.Stop()

			mode := convertXBZRLE
			switch {
			case s.Records["compressed"] > 0:
				// Each page once, zlib pages expanded: it loads without
				// the capability (and is 64 MiB where -plain writes every
				// one of QEMU's many passes as plain pages).
				mode = convertCompact
			case s.Records["xbzrle"] > 0:
				mode = convertPlain
			}
			out, cs := convertFile(t, file, mode)
			conv := extractDir(t, out)
			sameFiles(t, ext, conv, "after the converted stream", "after QEMU's")
			if mode == convertXBZRLE && cs.Deltas == 0 {
				t.Errorf("-xbzrle wrote no delta: %v", cs)
			}
			vm, err = qemutest.LoadOn(t, dir, out, c.save.Hardware)
			if err != nil {
				t.Fatal(err)
			}
			runsOnAt(t, vm, st, ext, c.ram)
		})
	}
}

// checkParsed checks inspect's summary of a stream of configuration c.
func checkParsed(t *testing.T, s *summary, c hwCase, file string) {
	t.Helper()
	fi, _ := os.Stat(file)
	machine := c.save.Machine
	if machine == "" {
		machine = qemutest.Machine
	}
	if s.Bytes != fi.Size() || s.Version != 3 || s.Machine != machine {
		t.Errorf("read %d bytes of %d, version %d, machine %q (want %q)", s.Bytes, fi.Size(), s.Version, s.Machine, machine)
	}
	var names []string
	var total uint64
	for _, b := range s.RAMBlocks {
		names = append(names, b.Name)
		total += b.Size
	}
	if len(names) != len(c.blocks) {
		t.Errorf("RAM blocks %q, want %q", names, c.blocks)
	} else {
		for i := range names {
			if names[i] != c.blocks[i] {
				t.Errorf("RAM blocks %q, want %q", names, c.blocks)
				break
			}
		}
	}
	for _, r := range c.ram {
		for _, b := range s.RAMBlocks {
			if b.Name == r.block && b.Size != r.size {
				t.Errorf("block %s of %#x bytes, want %#x", b.Name, b.Size, r.size)
			}
		}
	}
	if s.PagesSent != total/stream.PageSize || s.MaxSends < 2 {
		t.Errorf("%d pages sent of %d, a page at most %d times", s.PagesSent, total/stream.PageSize, s.MaxSends)
	}
	if c.save.XBZRLE && s.Records["xbzrle"] == 0 {
		t.Errorf("no XBZRLE records: %v", s.Records)
	}
	if s.Records["section"] != s.Records["footer"] || s.Records["eof"] != 1 || s.Records["vmdesc"] != 1 {
		t.Errorf("records %v", s.Records)
	}
	for _, d := range s.Devices {
		if d.Name == c.section {
			continue // an iterable section: no vmstate, no description
		}
		if d.WalkError != "" || d.Fields == 0 {
			t.Errorf("device %s: %d fields walked by the JSON description: %s", d.Name, d.Fields, d.WalkError)
		}
	}
	if c.kind != 0 && s.Records[c.kind.String()] == 0 {
		t.Errorf("no %v records: %v", c.kind, s.Records)
	}
	if c.section != "" {
		types := map[string]int{}
		for _, sec := range s.Sections {
			if sec.Name == c.section {
				types[sec.Type]++
			}
		}
		if types["start"] != 1 || types["end"] != 1 {
			t.Errorf("section %s: %v, want a start, parts and an end", c.section, types)
		}
	}
	t.Logf("%d bytes, %d blocks, records %v, %d devices, a page sent at most %d times",
		s.Bytes, len(s.RAMBlocks), s.Records, len(s.Devices), s.MaxSends)
}

// compareRAM compares the extracted RAM blocks with the loaded VM's
// guest-physical memory, outside the legacy window.
func compareRAM(t *testing.T, vm *qemutest.VM, ram []gpaRange, dir string) {
	t.Helper()
	for _, r := range ram {
		b, err := os.ReadFile(filepath.Join(dir, blockFile(r.block)))
		if err != nil {
			t.Fatal(err)
		}
		pmem, err := vm.Pmemsave(r.gpa, r.size)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(b)) != r.size || len(pmem) != len(b) {
			t.Fatalf("%s: %d bytes extracted, %d from pmemsave, want %d", r.block, len(b), len(pmem), r.size)
		}
		diff := 0
		for off := 0; off < len(b); off += stream.PageSize {
			if legacy(r.gpa+uint64(off)) || bytes.Equal(b[off:off+stream.PageSize], pmem[off:off+stream.PageSize]) {
				continue
			}
			if diff < 5 {
				t.Errorf("%s page at %#x differs from QEMU's memory", r.block, off)
			}
			diff++
		}
		if diff > 0 {
			t.Fatalf("%d pages of %s differ from QEMU's pmemsave", diff, r.block)
		}
	}
}

// compareResaved saves the loaded (paused) VM again and checks that every
// block extracted from the original stream equals the block in QEMU's own
// new stream: ROMs and device RAM as well as guest RAM.
func compareResaved(t *testing.T, vm *qemutest.VM, dir string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "resaved.mig")
	if _, err := vm.Cmd("migrate", map[string]any{"uri": "exec:cat > " + file}); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.WaitMigration(30*time.Second, qemutest.Completed); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, dir, extractDir(t, file), "extracted", "in the stream QEMU saved after loading it")
}

// sameFiles checks that dirs a and b hold the same files, byte for byte.
func sameFiles(t *testing.T, a, b, as, bs string) {
	t.Helper()
	fa, _ := filepath.Glob(filepath.Join(a, "*.bin"))
	fb, _ := filepath.Glob(filepath.Join(b, "*.bin"))
	if len(fa) != len(fb) || len(fa) == 0 {
		t.Fatalf("%d blocks %s, %d %s", len(fa), as, len(fb), bs)
	}
	for _, f := range fa {
		x, _ := os.ReadFile(f)
		y, err := os.ReadFile(filepath.Join(b, filepath.Base(f)))
		if err != nil || !bytes.Equal(x, y) {
			t.Errorf("block %s %s differs from %s (%v)", filepath.Base(f), as, bs, err)
		}
	}
}

// runsOnAt is runsOn for a guest whose counter lives in whichever block of
// ram covers qemutest.CounterAddr.
func runsOnAt(t *testing.T, vm *qemutest.VM, st *savedStream, dir string, ram []gpaRange) {
	t.Helper()
	for _, r := range ram {
		if qemutest.CounterAddr < r.gpa || qemutest.CounterAddr >= r.gpa+r.size {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, blockFile(r.block)))
		if err != nil {
			t.Fatal(err)
		}
		mem := binary.LittleEndian.Uint32(b[qemutest.CounterAddr-r.gpa:])
		if _, err := vm.Cmd("cont", nil); err != nil {
			t.Fatal(err)
		}
		boots, counters, err := vm.WaitCounter(20*time.Second, 2)
		if err != nil {
			t.Fatal(err)
		}
		if boots != 0 || counters[0] <= st.last || counters[0] < mem || counters[0] > mem+64 {
			t.Errorf("%d boots; first counter %#x, want past the source's last %#x, at least memory's %#x and at most 64 beyond",
				boots, counters[0], st.last, mem)
		}
		t.Logf("guest runs on: source stopped at %#x (memory %#x), destination prints %#x", st.last, mem, counters[0])
		return
	}
	t.Fatalf("no block holds the counter at %#x", qemutest.CounterAddr)
}

// TestQEMUIgnoreShared saves a guest whose RAM is a shared memory backend
// with the x-ignore-shared capability: QEMU sends none of its pages (a
// destination maps the same memory) but lists it, with the blocks'
// addresses, in the block list. The stream parses; extract writes every
// other block and says it left the shared one out, rather than write zeros
// for it; QEMU loads the stream on the same memory, and the blocks it then
// saves again are the ones extract wrote.
func TestQEMUIgnoreShared(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	hw := qemutest.Hardware{MachineOpts: "memory-backend=mem0", Args: []string{
		"-object", "memory-backend-file,id=mem0,size=64M,share=on,mem-path=" + filepath.Join(dir, "mem0")}}
	file := filepath.Join(dir, "shared.mig")
	src, _, err := qemutest.Save(t, dir, file, qemutest.SaveOptions{Hardware: hw, Capabilities: []string{"x-ignore-shared"}})
	if err != nil {
		t.Fatal(err)
	}
	src.Stop()
	s := inspectFile(t, file)
	if len(s.RAMBlocks) == 0 || s.RAMBlocks[0].Name != "mem0" {
		t.Fatalf("RAM blocks %v, want mem0 first", s.RAMBlocks)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if err := run([]string{"extract", "-o", out, file}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "mem0.bin")); err == nil || !bytes.Contains(stderr.Bytes(), []byte("mem0 not written")) {
		t.Errorf("extract wrote mem0.bin (%v) or did not say it left it out: %q", err, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(out, "pc.bios.bin")); err != nil {
		t.Errorf("extract left out pc.bios: %v", err)
	}
	vm, err := qemutest.LoadOn(t, dir, file, hw, "x-ignore-shared")
	if err != nil {
		t.Fatal(err)
	}
	compareResaved(t, vm, out)
}

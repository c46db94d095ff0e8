package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/examples/qemu/stream"
)

// cliStream writes a small stream of two RAM passes over two blocks (one
// with a "/" in its name): plain pages, a zero page, an XBZRLE delta on a
// page of the first pass, a device section, EOF and a description. It
// returns the file and what pc.ram's page 1 and the ACPI block's page 0
// hold at the end.
func cliStream(t *testing.T) (file string, ram1, acpi0 []byte) {
	t.Helper()
	old := bytes.Repeat([]byte{0x11}, stream.PageSize)
	upd := bytes.Clone(old)
	upd[10], upd[3000] = 0x22, 0x33
	d, err := delta.Encode(nil, old, upd, stream.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	acpi := bytes.Repeat([]byte{0xAC}, stream.PageSize)
	recs := []stream.Record{
		{Kind: stream.KindHeader},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-7.2"},
		{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: "ram", Version: 4},
		{Kind: stream.KindMemSize, Blocks: []stream.Block{{Name: "pc.ram", Size: 4 * stream.PageSize}, {Name: "/rom@etc/acpi/tables", Size: stream.PageSize}}},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionPart, ID: 2},
		{Kind: stream.KindPage, Block: "pc.ram", Addr: stream.PageSize, Data: old},
		{Kind: stream.KindZero, Block: "pc.ram", Addr: 0},
		{Kind: stream.KindPage, Block: "/rom@etc/acpi/tables", Addr: 0, Data: acpi},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionEnd, ID: 2},
		{Kind: stream.KindXBZRLE, Block: "pc.ram", Addr: stream.PageSize, Data: d},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 3, Name: "timer", Instance: 0, Version: 2},
		{Kind: stream.KindDevice, Data: []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3}},
		{Kind: stream.KindFooter, ID: 3},
		{Kind: stream.KindEOF},
		{Kind: stream.KindVMDesc, Data: []byte(`{"page_size":4096,"devices":[{"name":"timer","instance_id":0,"vmsd_name":"timer","version":2,` +
			`"fields":[{"name":"cpu_ticks_offset","type":"int64","size":8},{"name":"unused","type":"buffer","size":8},{"name":"cpu_clock_offset","type":"int64","size":8}]}]}`)},
	}
	var b bytes.Buffer
	w := stream.NewWriter(&b)
	for i := range recs {
		if err := w.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(t.TempDir(), "cli.mig")
	if err := os.WriteFile(file, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return file, upd, acpi
}

// TestCommandLine runs the subcommands as a user does: inspect -json
// prints one object with the keys the issue names, extract writes each
// block to DIR/NAME.bin (each "/" a "_"), convert -plain and -xbzrle
// rewrite the stream to one with the same final RAM, and a corrupt stream
// is an error naming its offset.
func TestCommandLine(t *testing.T) {
	file, ram1, acpi0 := cliStream(t)
	var out, errb bytes.Buffer
	if err := run([]string{"inspect", "-json", file}, &out, &errb); err != nil {
		t.Fatalf("inspect -json: %v (%s)", err, errb.String())
	}
	var s struct {
		Version   *int `json:"version"`
		Machine   string
		RAMBlocks []map[string]any `json:"ram_blocks"`
		Records   map[string]int
		Devices   []map[string]any
		Sections  []map[string]any
	}
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("inspect -json printed no JSON object: %v\n%s", err, out.String())
	}
	if s.Version == nil || *s.Version != 3 || s.Machine != "pc-i440fx-7.2" {
		t.Errorf("version %v machine %q", s.Version, s.Machine)
	}
	if len(s.RAMBlocks) != 2 || s.RAMBlocks[0]["name"] != "pc.ram" || s.RAMBlocks[0]["size"] != float64(4*stream.PageSize) ||
		s.RAMBlocks[1]["name"] != "/rom@etc/acpi/tables" || s.RAMBlocks[1]["size"] != float64(stream.PageSize) {
		t.Errorf("ram_blocks %v", s.RAMBlocks)
	}
	if s.Records["page"] != 2 || s.Records["zero"] != 1 || s.Records["xbzrle"] != 1 {
		t.Errorf("records %v, want page 2, zero 1, xbzrle 1", s.Records)
	}
	if len(s.Devices) != 1 || s.Devices[0]["name"] != "timer" || s.Devices[0]["instance"] != float64(0) || s.Devices[0]["version"] != float64(2) {
		t.Errorf("devices %v", s.Devices)
	}
	if len(s.Sections) != 4 || s.Sections[0]["offset"] != float64(26) || s.Sections[0]["name"] != "ram" || s.Sections[3]["name"] != "timer" {
		t.Errorf("sections %v", s.Sections)
	}
	if fields, _ := s.Devices[0]["fields"].(float64); fields != 3 {
		t.Errorf("the description walked %v fields of the device section, want 3", s.Devices[0]["fields"])
	}

	out.Reset()
	if err := run([]string{"inspect", file}, &out, &errb); err != nil || !strings.Contains(out.String(), "/rom@etc/acpi/tables") {
		t.Errorf("inspect: %v\n%s", err, out.String())
	}

	extractTo := func(file string) string {
		dir := t.TempDir()
		if err := run([]string{"extract", "-o", dir, file}, &bytes.Buffer{}, &errb); err != nil {
			t.Fatalf("extract: %v", err)
		}
		return dir
	}
	dir := extractTo(file)
	ram, _ := os.ReadFile(filepath.Join(dir, "pc.ram.bin"))
	acpi, _ := os.ReadFile(filepath.Join(dir, "_rom@etc_acpi_tables.bin"))
	if len(ram) != 4*stream.PageSize || !bytes.Equal(ram[stream.PageSize:2*stream.PageSize], ram1) || !bytes.Equal(acpi, acpi0) {
		t.Fatalf("extract: pc.ram.bin of %d bytes, page 1 as after the delta: %v; _rom@etc_acpi_tables.bin as sent: %v",
			len(ram), bytes.Equal(ram[stream.PageSize:2*stream.PageSize], ram1), bytes.Equal(acpi, acpi0))
	}

	for _, flag := range []string{"-plain", "-xbzrle", "-compact"} {
		conv := filepath.Join(t.TempDir(), "conv.mig")
		if err := run([]string{"convert", flag, file, conv}, &bytes.Buffer{}, &errb); err != nil {
			t.Fatalf("convert %s: %v", flag, err)
		}
		cdir := extractTo(conv)
		for _, f := range []string{"pc.ram.bin", "_rom@etc_acpi_tables.bin"} {
			a, _ := os.ReadFile(filepath.Join(dir, f))
			b, _ := os.ReadFile(filepath.Join(cdir, f))
			if !bytes.Equal(a, b) {
				t.Errorf("convert %s: %s differs", flag, f)
			}
		}
	}

	bad, _ := os.ReadFile(file)
	bad[60] ^= 0xFF // pc.ram's size in the block list
	badFile := filepath.Join(t.TempDir(), "bad.mig")
	if err := os.WriteFile(badFile, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"inspect", badFile}, &bytes.Buffer{}, &errb)
	if err == nil || !strings.Contains(err.Error(), "stream offset") {
		t.Errorf("inspect of a corrupt stream: %v, want an error naming the stream offset", err)
	}
}

// writeFile writes recs as a stream file.
func writeFile(t *testing.T, recs []stream.Record) string {
	t.Helper()
	var b bytes.Buffer
	w := stream.NewWriter(&b)
	for i := range recs {
		if err := w.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "s.mig")
	if err := os.WriteFile(file, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestExtractMultifd: a stream with a MULTIFD_FLUSH record (QEMU 8.0+ with
// multifd) lacks the pages its multifd channels carried: extract and
// convert -compact refuse it, naming the record's offset, rather than
// write RAM that is not the guest's.
func TestExtractMultifd(t *testing.T) {
	file := writeFile(t, []stream.Record{
		{Kind: stream.KindHeader},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-8.2"},
		{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: "ram", Version: 4},
		{Kind: stream.KindMemSize, Blocks: []stream.Block{{Name: "pc.ram", Size: 4 * stream.PageSize}}},
		{Kind: stream.KindMultifdFlush},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindEOF},
	})
	err := run([]string{"extract", "-o", t.TempDir(), file}, &bytes.Buffer{}, &bytes.Buffer{})
	if !errors.Is(err, livemig.ErrNotSupported) || !strings.Contains(err.Error(), "MULTIFD_FLUSH") || !strings.Contains(err.Error(), "stream offset 66") {
		t.Errorf("extract: %v, want ErrNotSupported naming MULTIFD_FLUSH at stream offset 66", err)
	}
	err = run([]string{"convert", "-compact", file, filepath.Join(t.TempDir(), "out.mig")}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "MULTIFD_FLUSH") {
		t.Errorf("convert -compact: %v", err)
	}
}

// TestCompactEarlyDevices: a device section before the RAM section (QEMU
// 10 sends early_setup devices such as virtio-mem there) stays before it
// in what convert -compact writes.
func TestCompactEarlyDevices(t *testing.T) {
	page := bytes.Repeat([]byte{5}, stream.PageSize)
	file := writeFile(t, []stream.Record{
		{Kind: stream.KindHeader},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-10.0"},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 1, Name: "virtio-mem-early", Version: 1},
		{Kind: stream.KindDevice, Data: []byte{1, 2, 3}},
		{Kind: stream.KindFooter, ID: 1},
		{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: "ram", Version: 4},
		{Kind: stream.KindMemSize, Blocks: []stream.Block{{Name: "pc.ram", Size: 2 * stream.PageSize}}},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionEnd, ID: 2},
		{Kind: stream.KindPage, Block: "pc.ram", Addr: stream.PageSize, Data: page},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 3, Name: "timer", Version: 2},
		{Kind: stream.KindDevice, Data: []byte{4}},
		{Kind: stream.KindFooter, ID: 3},
		{Kind: stream.KindEOF},
	})
	out := filepath.Join(t.TempDir(), "out.mig")
	if err := run([]string{"convert", "-compact", file, out}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := inspect(f)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, sec := range s.Sections {
		if sec.Type == "start" || sec.Type == "full" {
			order = append(order, sec.Name)
		}
	}
	if strings.Join(order, " ") != "virtio-mem-early ram timer" {
		t.Errorf("sections %q, want virtio-mem-early before ram, timer after", order)
	}
}

// TestMaxRAM: extract refuses a stream declaring more RAM than -max-ram,
// and takes it with a larger bound.
func TestMaxRAM(t *testing.T) {
	file, _, _ := cliStream(t) // 5 pages
	err := run([]string{"extract", "-max-ram", "16384", "-o", t.TempDir(), file}, &bytes.Buffer{}, &bytes.Buffer{})
	if !errors.Is(err, stream.ErrImageLimit) {
		t.Errorf("extract -max-ram 16384 of a 20 KiB guest: %v", err)
	}
	if err := run([]string{"extract", "-max-ram", "20480", "-o", t.TempDir(), file}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Errorf("extract -max-ram 20480: %v", err)
	}
	if imageConfig.MaxBytes != 0 {
		t.Errorf("the bound stays set after the subcommand: %d", imageConfig.MaxBytes)
	}
}

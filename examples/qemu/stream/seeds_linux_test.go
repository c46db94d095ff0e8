//go:build linux

package stream_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/livemig/livemig/examples/qemu/internal/qemutest"
	"github.com/livemig/livemig/examples/qemu/stream"
	"github.com/livemig/livemig/internal/testkit"
)

var updateSeeds = flag.Bool("update-seeds", false, "save streams from QEMU and rewrite testdata/fuzz/FuzzReader/qemu-* from them")

// TestUpdateFuzzSeeds rewrites the fuzz corpus's seeds from streams a real
// QEMU saves (see testdata/README.md). It runs only with -update-seeds.
func TestUpdateFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite testdata/fuzz/FuzzReader/qemu-* from QEMU's streams")
	}
	if _, err := qemutest.Find(); err != nil {
		testkit.SkipOrFail(t, err, "QEMU", "LIVEMIG_REQUIRE_QEMU")
	}
	dir := t.TempDir()
	streams := map[string]qemutest.SaveOptions{
		"stopped": {},
		"xbzrle":  {Live: true, Passes: 5, XBZRLE: true},
		// Eight RAM blocks (guest RAM in two NUMA backends, a VGA's),
		// XBZRLE on a 1 MiB cache.
		"multiblock": {Hardware: qemutest.Hardware{Args: []string{"-device", "VGA",
			"-object", "memory-backend-ram,id=m0,size=32M", "-object", "memory-backend-ram,id=m1,size=32M",
			"-numa", "node,memdev=m0", "-numa", "node,memdev=m1"}}, Live: true, Passes: 4, XBZRLE: true, XBZRLECache: 1 << 20},
		"q35": {Hardware: qemutest.Hardware{Machine: "pc-q35-7.2"}, Live: true, Passes: 3},
	}
	seeds := map[string][]byte{}
	// A post-copy migration's stream: commands, the PACKAGED sub-stream,
	// pages after the switch, no description.
	pc, err := qemutest.Postcopy(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	pc.Src.Stop()
	pc.Dst.Stop()
	precs, err := readAll(pc.Stream, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	seeds["qemu-postcopy-shrunk"] = write(t, shrink(t, precs, 3))
	for name, opt := range streams {
		file := filepath.Join(dir, name+".mig")
		vm, _, err := qemutest.Save(t, dir, file, opt)
		if err != nil {
			t.Fatal(err)
		}
		vm.Stop()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := readAll(b, stream.Config{})
		if err != nil {
			t.Fatal(err)
		}
		seeds["qemu-"+name+"-shrunk"] = write(t, shrink(t, recs, 3))
		if name == "stopped" {
			seeds["qemu-stopped-head"] = b[:4096]
		}
	}
	out := filepath.Join("testdata", "fuzz", "FuzzReader")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		f := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(out, name), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes", name, len(b))
	}
}

// shrink keeps the structure of a real stream and little of its RAM: the
// header, the configuration, the RAM section's start, the first three parts
// and the end with at most keep records of each page kind each (one plain
// page), every device
// section, EOF, and the JSON description cut to its first three devices.
func shrink(t *testing.T, recs []stream.Record, keep int) []stream.Record {
	var out []stream.Record
	parts := 0
	counts := map[stream.Kind]int{}
	skip := false // inside a RAM part left out
	for _, r := range recs {
		switch {
		case r.Kind == stream.KindSection && r.Name == stream.RAMName:
			clear(counts)
			skip = r.Type == stream.SectionPart && parts >= 3
			if r.Type == stream.SectionPart {
				parts++
			}
		case r.Kind.IsPage():
			if counts[r.Kind] >= keep || (r.Kind == stream.KindPage && counts[r.Kind] >= 1) {
				continue
			}
			counts[r.Kind]++
		case r.Kind == stream.KindVMDesc:
			var d struct {
				PageSize int               `json:"page_size"`
				Devices  []json.RawMessage `json:"devices"`
			}
			if err := json.Unmarshal(r.Data, &d); err != nil {
				t.Fatal(err)
			}
			d.Devices = d.Devices[:min(3, len(d.Devices))]
			var b bytes.Buffer
			if err := json.NewEncoder(&b).Encode(d); err != nil {
				t.Fatal(err)
			}
			r.Data = bytes.TrimSpace(b.Bytes())
		}
		if skip && (r.Kind.IsRAM() || r.Kind == stream.KindSection || r.Kind == stream.KindFooter) {
			if r.Kind == stream.KindFooter {
				skip = false
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

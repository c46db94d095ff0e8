package stream_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"
)

const descJSON = `{"page_size":4096,"devices":[{"name":"dev","instance_id":1,"vmsd_name":"dev","version":2,
 "fields":[
  {"name":"a","type":"uint32","size":4},
  {"name":"regs","array_len":2,"type":"uint16","size":2},
  {"name":"seg","array_len":2,"type":"struct","size":99,"struct":{"vmsd_name":"seg","version":1,
     "fields":[{"name":"base","type":"uint8","size":1}],
     "subsections":[{"vmsd_name":"seg/extra","version":1,"fields":[{"name":"x","type":"uint8","size":1}]}]}},
  {"name":"tmp","type":"tmp","vmsd_name":"t","fields":[{"name":"m","type":"uint16","size":2}],"size":10}],
 "subsections":[{"vmsd_name":"dev/more","version":1,"fields":[{"name":"b","type":"uint8","size":1}]}]}]}`

func TestVMDescWalk(t *testing.T) {
	d, err := stream.ParseVMDesc([]byte(descJSON))
	if err != nil {
		t.Fatal(err)
	}
	dd, ok := d.Device("dev", 1)
	if !ok {
		t.Fatal("no device dev/1")
	}
	sub := func(name string, fields ...byte) []byte {
		b := append([]byte{5, byte(len(name))}, name...)
		b = append(b, 0, 0, 0, 1)
		return append(b, fields...)
	}
	var data []byte
	data = append(data, 0, 0, 0, 7, 0, 1, 0, 2) // a, regs
	data = append(data, 0x10)                   // seg[0].base
	data = append(data, sub("seg/extra", 0x11)...)
	data = append(data, 0x20) // seg[1].base, no subsection
	data = append(data, 0xAA, 0xBB)
	data = append(data, sub("dev/more", 0x33)...)
	var paths []string
	if err := dd.Walk(data, func(f stream.Field) { paths = append(paths, f.Path) }); err != nil {
		t.Fatal(err)
	}
	want := "dev.a dev.regs[0] dev.regs[1] dev.seg[0].base dev.seg[0]/extra.x dev.seg[1].base dev.tmp.m dev/more.b"
	if got := strings.Join(paths, " "); got != want {
		t.Errorf("fields\n%s\nwant\n%s", got, want)
	}
	for name, bad := range map[string][]byte{
		"short":            data[:len(data)-1],
		"long":             append(append([]byte(nil), data...), 0),
		"unknown sub":      append(append([]byte(nil), data[:len(data)-len(sub("dev/more", 0x33))]...), sub("dev/what", 1)...),
		"cut subsection":   data[:len(data)-3],
		"cut in the array": data[:5],
	} {
		if err := dd.Walk(bad, nil); !errors.Is(err, livemig.ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := stream.ParseVMDesc([]byte("{")); !errors.Is(err, livemig.ErrCorrupt) {
		t.Errorf("bad JSON: %v", err)
	}
}

// TestVMDescHostile walks descriptions that would loop or recurse for ever.
func TestVMDescHostile(t *testing.T) {
	deep := strings.Repeat(`{"name":"f","type":"struct","struct":{"vmsd_name":"s","fields":[`, 100) +
		strings.Repeat(`]}}`, 100)
	for name, js := range map[string]string{
		"huge array": `{"devices":[{"name":"d","vmsd_name":"d","fields":[{"name":"z","type":"uint8","size":0,"array_len":2000000000}]}]}`,
		"deep":       `{"devices":[{"name":"d","vmsd_name":"d","fields":[` + deep + `]}]}`,
	} {
		d, err := stream.ParseVMDesc([]byte(js))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := d.Devices[0].Walk([]byte{1, 2, 3}, nil); !errors.Is(err, livemig.ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzVMDesc parses a description and walks bytes with each of its devices:
// no panic, fields inside the bytes, errors wrapping livemig.ErrCorrupt.
func FuzzVMDesc(f *testing.F) {
	f.Add(descJSON, []byte{0, 0, 0, 7, 0, 1, 0, 2, 0x10, 5, 9, 's', 'e', 'g', '/', 'e', 'x', 't', 'r', 'a', 0, 0, 0, 1, 0x11, 0x20, 0xAA, 0xBB})
	f.Fuzz(func(t *testing.T, js string, data []byte) {
		d, err := stream.ParseVMDesc([]byte(js))
		if err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("ParseVMDesc: %v", err)
			}
			return
		}
		for i := range d.Devices {
			err := d.Devices[i].Walk(data, func(fl stream.Field) {
				if fl.Offset < 0 || fl.Offset+len(fl.Data) > len(data) {
					t.Fatalf("field %s at %d+%d outside the %d bytes", fl.Path, fl.Offset, len(fl.Data), len(data))
				}
			})
			if err != nil && !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("Walk: %v", err)
			}
		}
	})
}

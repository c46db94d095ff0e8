package stream

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/livemig/livemig"
)

// VMDesc is the JSON description QEMU appends to a pre-copy stream after
// EOF: for each device section it wrote, the layout of the fields it wrote
// (names, types, sizes, array lengths, nested structures and the
// subsections it sent). It is how a reader can walk the bytes of a device
// section, which carry no tags and no length.
type VMDesc struct {
	PageSize int          `json:"page_size"`
	Devices  []DeviceDesc `json:"devices"`
}

// DeviceDesc describes one device section.
type DeviceDesc struct {
	Name     string `json:"name"`
	Instance uint32 `json:"instance_id"`
	VMSDDesc
}

// VMSDDesc is a vmstate description: fields, then the subsections sent.
type VMSDDesc struct {
	VMSD        string      `json:"vmsd_name"`
	Version     int         `json:"version"`
	Fields      []FieldDesc `json:"fields"`
	Subsections []VMSDDesc  `json:"subsections"`
}

// FieldDesc is one field: Size bytes per element, ArrayLen elements (0
// means one). A "struct" field holds Struct for each element; a "tmp" field
// holds its fields inline (Fields).
type FieldDesc struct {
	Name     string      `json:"name"`
	Type     string      `json:"type"`
	Size     int         `json:"size"`
	ArrayLen int         `json:"array_len"`
	Index    *int        `json:"index"`
	Struct   *VMSDDesc   `json:"struct"`
	Fields   []FieldDesc `json:"fields"`
}

// ParseVMDesc parses the JSON description (a KindVMDesc record's Data).
func ParseVMDesc(data []byte) (*VMDesc, error) {
	var d VMDesc
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%w: JSON description: %v", livemig.ErrCorrupt, err)
	}
	return &d, nil
}

// Device returns the description of the device section name, instance.
func (d *VMDesc) Device(name string, instance uint32) (*DeviceDesc, bool) {
	for i := range d.Devices {
		if d.Devices[i].Name == name && d.Devices[i].Instance == instance {
			return &d.Devices[i], true
		}
	}
	return nil, false
}

// Field is a leaf field met by Walk: its path (device.struct[2].field),
// its type and its bytes in the section.
type Field struct {
	Path   string
	Type   string
	Offset int
	Data   []byte
}

// walk limits: nesting depth and the number of fields visited, so that a
// hostile description cannot make Walk loop or recurse without bound.
const (
	maxWalkDepth = 64
	maxWalkSteps = 1 << 20
)

type walker struct {
	data  []byte
	pos   int
	steps int
	visit func(Field)
}

// Walk walks a device section's bytes (a KindDevice record's Data) with
// its description: every field in order, its subsections where the bytes
// hold them. visit, if not nil, is called for each leaf field; its Data
// aliases data. Walk returns an error wrapping livemig.ErrCorrupt if the
// bytes end before the description does or go on after it: the section's
// extent and its description disagree.
func (dd *DeviceDesc) Walk(data []byte, visit func(Field)) error {
	w := &walker{data: data, visit: visit}
	if err := w.vmsd(&dd.VMSDDesc, dd.Name, 0); err != nil {
		return err
	}
	if w.pos != len(data) {
		return fmt.Errorf("%w: device %s: the description accounts for %d of the section's %d bytes", livemig.ErrCorrupt, dd.Name, w.pos, len(data))
	}
	return nil
}

func (w *walker) vmsd(d *VMSDDesc, path string, depth int) error {
	if depth > maxWalkDepth {
		return fmt.Errorf("%w: description nested deeper than %d", livemig.ErrCorrupt, maxWalkDepth)
	}
	if err := w.fields(d.Fields, path, depth); err != nil {
		return err
	}
	// Subsections: 05, the name, be32 version, fields; one of d's own
	// only if its name starts with d's (else it belongs to a parent).
	for w.pos < len(w.data) && w.data[w.pos] == typeSubsection {
		if w.pos+2 > len(w.data) {
			return w.short(path)
		}
		n := int(w.data[w.pos+1])
		if w.pos+2+n+4 > len(w.data) {
			return w.short(path)
		}
		name := string(w.data[w.pos+2 : w.pos+2+n])
		if len(name) < len(d.VMSD) || name[:len(d.VMSD)] != d.VMSD {
			return nil
		}
		var sub *VMSDDesc
		for i := range d.Subsections {
			if d.Subsections[i].VMSD == name {
				sub = &d.Subsections[i]
			}
		}
		if sub == nil {
			return fmt.Errorf("%w: %s: subsection %q at byte %d is not in the description", livemig.ErrCorrupt, path, name, w.pos)
		}
		_ = binary.BigEndian.Uint32(w.data[w.pos+2+n:]) // its version
		w.pos += 2 + n + 4
		if err := w.vmsd(sub, path+name[len(d.VMSD):], depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (w *walker) short(path string) error {
	return fmt.Errorf("%w: %s: the section ends at byte %d before its description does", livemig.ErrCorrupt, path, len(w.data))
}

func (w *walker) fields(fs []FieldDesc, path string, depth int) error {
	for _, f := range fs {
		n := max(f.ArrayLen, 1)
		p := path + "." + f.Name
		if f.Index != nil {
			p = fmt.Sprintf("%s[%d]", p, *f.Index)
		}
		for i := range n {
			if w.steps++; w.steps > maxWalkSteps {
				return fmt.Errorf("%w: description of more than %d fields", livemig.ErrCorrupt, maxWalkSteps)
			}
			ep := p
			if f.ArrayLen > 0 && (w.visit != nil || f.Type == "struct" || f.Fields != nil) {
				ep = fmt.Sprintf("%s[%d]", p, i)
			}
			switch {
			case f.Type == "struct" && f.Struct != nil:
				if err := w.vmsd(f.Struct, ep, depth+1); err != nil {
					return err
				}
			case f.Fields != nil: // "tmp": the fields inline
				if depth+1 > maxWalkDepth {
					return fmt.Errorf("%w: description nested deeper than %d", livemig.ErrCorrupt, maxWalkDepth)
				}
				if err := w.fields(f.Fields, ep, depth+1); err != nil {
					return err
				}
			default:
				if f.Size < 0 || f.Size > len(w.data)-w.pos {
					return w.short(ep)
				}
				if w.visit != nil {
					w.visit(Field{Path: ep, Type: f.Type, Offset: w.pos, Data: w.data[w.pos : w.pos+f.Size]})
				}
				w.pos += f.Size
			}
		}
	}
	return nil
}

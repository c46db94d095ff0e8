package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"
)

type blockJSON struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
}

type deviceJSON struct {
	Name     string `json:"name"`
	Instance uint32 `json:"instance"`
	Version  uint32 `json:"version"`
	Offset   int64  `json:"offset"`
	Bytes    int    `json:"bytes"`
	// Fields counts the fields the JSON description walks in the
	// section's bytes (0 without a description); WalkError says where
	// the bytes and the description disagree.
	Fields    int    `json:"fields,omitempty"`
	WalkError string `json:"walk_error,omitempty"`
}

type sectionJSON struct {
	Offset   int64  `json:"offset"`
	Type     string `json:"type"`
	ID       uint32 `json:"id"`
	Name     string `json:"name"`
	Instance uint32 `json:"instance"`
	Version  uint32 `json:"version,omitempty"`
	Bytes    int64  `json:"bytes"` // header to footer, inclusive
	Packaged bool   `json:"packaged,omitempty"`
}

type commandJSON struct {
	Offset   int64  `json:"offset"`
	Name     string `json:"name"`
	Length   int    `json:"length"`
	Packaged bool   `json:"packaged,omitempty"`
}

// summary is what inspect finds in a stream.
type summary struct {
	Version   uint32            `json:"version"`
	Machine   string            `json:"machine"`
	RAMBlocks []blockJSON       `json:"ram_blocks"`
	Records   map[string]uint64 `json:"records"`
	Devices   []deviceJSON      `json:"devices"`
	Sections  []sectionJSON     `json:"sections"`
	Commands  []commandJSON     `json:"commands"`
	// PagesSent counts the distinct pages any record set; MaxSends is the
	// most times one page was sent (the number of passes it took part in).
	PagesSent   uint64 `json:"pages_sent"`
	MaxSends    int    `json:"max_sends"`
	VMDesc      int    `json:"vmdesc_bytes"`
	VMDescError string `json:"vmdesc_error,omitempty"`
	Bytes       int64  `json:"bytes"`
}

// inspect reads a whole stream and sums it up.
func inspect(in io.Reader) (*summary, error) {
	s := &summary{Records: map[string]uint64{}, RAMBlocks: []blockJSON{}, Devices: []deviceJSON{}, Sections: []sectionJSON{}, Commands: []commandJSON{}}
	r := stream.NewReader(in, stream.Config{})
	var sends sendCounts
	var counts [32]uint64
	var devData [][]byte // each device section's bytes, to walk with the description
	kept := 0
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return s, err
		}
		counts[rec.Kind]++
		switch rec.Kind {
		case stream.KindHeader:
			s.Version = rec.Version
		case stream.KindConfiguration:
			s.Machine = rec.Machine
		case stream.KindSection:
			s.Sections = append(s.Sections, sectionJSON{Offset: rec.Offset, Type: rec.Type.String(), ID: rec.ID,
				Name: rec.Name, Instance: rec.Instance, Version: rec.Version, Packaged: rec.Packaged})
		case stream.KindFooter:
			if n := len(s.Sections); n > 0 {
				s.Sections[n-1].Bytes = rec.Offset + 5 - s.Sections[n-1].Offset
			}
		case stream.KindDevice:
			if n := len(s.Sections); n > 0 && s.Sections[n-1].Type != "part" && s.Sections[n-1].Type != "end" {
				sec := s.Sections[n-1]
				s.Devices = append(s.Devices, deviceJSON{Name: sec.Name, Instance: sec.Instance, Version: sec.Version,
					Offset: sec.Offset, Bytes: len(rec.Data)})
				var d []byte
				if kept+len(rec.Data) <= maxKeptDevices {
					d = bytes.Clone(rec.Data)
					kept += len(d)
				}
				devData = append(devData, d)
			}
		case stream.KindCommand:
			n := len(rec.Data)
			if rec.Command == stream.CmdPackaged {
				n = int(rec.Length)
			}
			s.Commands = append(s.Commands, commandJSON{Offset: rec.Offset, Name: rec.Command.String(), Length: n, Packaged: rec.Packaged})
		case stream.KindVMDesc:
			s.VMDesc = len(rec.Data)
			s.walkDevices(rec.Data, devData)
		case stream.KindMemSize:
			s.RAMBlocks = s.RAMBlocks[:0]
			for _, b := range rec.Blocks {
				s.RAMBlocks = append(s.RAMBlocks, blockJSON{Name: b.Name, Size: b.Size})
			}
			sends.init(r.Layout().Pages())
		case stream.KindZero, stream.KindPage, stream.KindXBZRLE, stream.KindCompressed:
			sends.add(rec.Page)
		}
	}
	for k, n := range counts {
		if n > 0 {
			s.Records[stream.Kind(k).String()] = n
		}
	}
	s.PagesSent, s.MaxSends = sends.sum()
	s.Bytes = r.Offset()
	return s, nil
}

// sendCounts counts how often each page was sent (up to 255), in chunks
// allocated on a chunk's first page record: the memory follows the pages
// the stream sends, not the RAM its block list declares (which the Reader
// bounds by Config.MaxRAM).
type sendCounts struct {
	chunks [][]uint8
}

const sendChunk = 4096

func (c *sendCounts) init(pages uint64) {
	if c.chunks == nil {
		c.chunks = make([][]uint8, (pages+sendChunk-1)/sendChunk)
	}
}

// add counts a send of page n, which the Reader checked against the layout.
func (c *sendCounts) add(n uint64) {
	ch := &c.chunks[n/sendChunk]
	if *ch == nil {
		*ch = make([]uint8, sendChunk)
	}
	if v := &(*ch)[n%sendChunk]; *v < 255 {
		*v++
	}
}

// sum returns the number of pages sent and the most sends of one page.
func (c *sendCounts) sum() (pages uint64, most int) {
	for _, ch := range c.chunks {
		for _, n := range ch {
			if n > 0 {
				pages++
			}
			most = max(most, int(n))
		}
	}
	return pages, most
}

// maxKeptDevices bounds the device bytes inspect keeps to walk them with
// the description at the stream's end.
const maxKeptDevices = 64 << 20

// walkDevices walks each device section's bytes with the JSON description.
func (s *summary) walkDevices(desc []byte, data [][]byte) {
	d, err := stream.ParseVMDesc(desc)
	if err != nil {
		s.VMDescError = err.Error()
		return
	}
	for i := range s.Devices {
		dev := &s.Devices[i]
		dd, ok := d.Device(dev.Name, dev.Instance)
		switch {
		case !ok:
			dev.WalkError = "not in the description"
		case data[i] == nil:
			dev.WalkError = "not kept (over the bound)"
		default:
			n := 0
			if err := dd.Walk(data[i], func(stream.Field) { n++ }); err != nil {
				dev.WalkError = err.Error()
			}
			dev.Fields = n
		}
	}
}

func (s *summary) writeJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(s)
}

func (s *summary) writeText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "stream\tversion %d, %d bytes\n", s.Version, s.Bytes)
	fmt.Fprintf(tw, "machine\t%s\n", s.Machine)
	fmt.Fprintf(tw, "\nRAM blocks\n")
	var total uint64
	for _, b := range s.RAMBlocks {
		fmt.Fprintf(tw, "  %s\t%#x\t(%d pages)\n", b.Name, b.Size, b.Size/stream.PageSize)
		total += b.Size
	}
	fmt.Fprintf(tw, "  total\t%#x\t(%d pages; %d sent, a page at most %d times)\n", total, total/stream.PageSize, s.PagesSent, s.MaxSends)
	fmt.Fprintf(tw, "\nrecords\n")
	keys := make([]string, 0, len(s.Records))
	for k := range s.Records {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s\t%d\n", k, s.Records[k])
	}
	if s.VMDesc > 0 {
		fmt.Fprintf(tw, "  (JSON description: %d bytes)\n", s.VMDesc)
	}
	if len(s.Commands) > 0 {
		fmt.Fprintf(tw, "\ncommands\n")
		for _, c := range s.Commands {
			fmt.Fprintf(tw, "  %d\t%s\tlength %d%s\n", c.Offset, c.Name, c.Length, packaged(c.Packaged))
		}
	}
	fmt.Fprintf(tw, "\ndevices\n")
	for _, d := range s.Devices {
		walk := ""
		switch {
		case d.WalkError != "":
			walk = "\t" + d.WalkError
		case d.Fields > 0:
			walk = fmt.Sprintf("\t%d fields", d.Fields)
		}
		fmt.Fprintf(tw, "  %s\tinstance %d\tversion %d\t%d bytes%s\n", d.Name, d.Instance, d.Version, d.Bytes, walk)
	}
	if s.VMDescError != "" {
		fmt.Fprintf(tw, "  (JSON description: %s)\n", s.VMDescError)
	}
	fmt.Fprintf(tw, "\nsections\n")
	for _, c := range s.Sections {
		ver := ""
		if c.Type == "start" || c.Type == "full" {
			ver = fmt.Sprintf("v%d", c.Version)
		}
		fmt.Fprintf(tw, "  %d\t%s\tid %d\t%s\t%d\t%s\t%d bytes%s\n", c.Offset, c.Type, c.ID, c.Name, c.Instance, ver, c.Bytes, packaged(c.Packaged))
	}
	return tw.Flush()
}

func packaged(p bool) string {
	if p {
		return "\t(packaged)"
	}
	return ""
}

// blockFile is the file name extract gives a block.
func blockFile(name string) string { return strings.ReplaceAll(name, "/", "_") + ".bin" }

// extract applies the stream's RAM records and writes every block to dir;
// it returns the files written.
func extract(in io.Reader, dir string) ([]string, error) {
	names, _, err := extractBlocks(in, dir)
	return names, err
}

// extractBlocks is extract, which also returns the blocks it left out: with
// the x-ignore-shared capability, QEMU sends no page of a block backed by
// shared memory (the destination maps the same memory), and a block no
// record touched is then not written: its contents are not in the stream.
func extractBlocks(in io.Reader, dir string) (names, skipped []string, err error) {
	r := stream.NewReader(in, stream.Config{})
	img, err := readImageFrom(r)
	if err != nil {
		return nil, nil, err
	}
	ignShared := false
	if c := r.Capabilities(); slices.Contains(c, "x-ignore-shared") {
		ignShared = true
	}
	if img.Layout() == nil {
		return nil, nil, fmt.Errorf("extract: the stream has no RAM block list")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	for i, b := range img.Layout().Blocks() {
		if ignShared && !anySent(img, b) {
			skipped = append(skipped, b.Name)
			continue
		}
		name := filepath.Join(dir, blockFile(b.Name))
		f, err := os.Create(name)
		if err != nil {
			return names, skipped, err
		}
		err = img.WriteBlock(f, i)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return names, skipped, err
		}
		names = append(names, name)
	}
	return names, skipped, nil
}

// anySent reports whether a record of the stream set a page of block b.
func anySent(img *stream.Image, b stream.Block) bool {
	for p := b.First; p < b.First+b.Pages(); p++ {
		if img.Sent(p) {
			return true
		}
	}
	return false
}

// imageConfig bounds the images extract, convert and the relay build: the
// RAM a stream may declare (stream.DefaultMaxImage, 16 GiB). The fuzz tests
// lower it.
var imageConfig = stream.ImageConfig{}

// readImage reads a whole stream into an Image. A stream with a
// MULTIFD_FLUSH record is refused: its pages went on multifd channels, which
// are not in it, so the image would lack them.
func readImage(in io.Reader) (*stream.Image, error) {
	return readImageFrom(stream.NewReader(in, stream.Config{}))
}

// readImageFrom is readImage from a Reader.
func readImageFrom(r *stream.Reader) (*stream.Image, error) {
	img, _ := stream.NewImage(nil, imageConfig)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return img, nil
		}
		if err != nil {
			return img, err
		}
		if rec.Kind == stream.KindMultifdFlush {
			return img, &livemig.StreamError{Offset: rec.Offset, What: "ram record",
				Err: fmt.Errorf("%w: a MULTIFD_FLUSH record: the stream's pages went on multifd channels, which are not in it", livemig.ErrNotSupported)}
		}
		if err := img.Apply(&rec); err != nil {
			return img, err
		}
	}
}

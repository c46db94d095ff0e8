package stream_test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/examples/qemu/stream"
)

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func be64s(v ...uint64) []byte {
	var b []byte
	for _, x := range v {
		b = binary.BigEndian.AppendUint64(b, x)
	}
	return b
}

func pattern(seed byte) []byte {
	p := make([]byte, stream.PageSize)
	for i := range p {
		p[i] = seed + byte(i*7) + byte(i>>9)
	}
	return p
}

var sampleBlocks = []stream.Block{
	{Name: "pc.ram", Size: 16 * stream.PageSize},
	{Name: "/rom@etc/acpi/tables", Size: 2 * stream.PageSize},
	{Name: "pc.bios", Size: 4 * stream.PageSize},
}

// trickyDevice is device state holding bytes that look like the start of
// its footer (7E and the section id 5) without a well-formed record after.
var trickyDevice = []byte{
	1, 2, 0x7E, 3,
	0x7E, 0, 0, 0, 5, 0x01, 0, 0, 0, 9, 3, 'a', 0x01, 'b', 0, 0, 0, 0, 0, 0, 0, 0, // START with a non-printable idstr
	0x7E, 0, 0, 0, 5, 0x00, 0x07, // EOF not followed by the description
	0x7E, 0, 0, 0, 5, 0x08, 0, 2, 0, 9, // PING with a bad length
	0x7E, 0, 0, 0, 5, 0x02, 0, 0, 0, 77, // PART of an unbound section
	0x7E, 0, 0, 0, 6, 0x04, 0, 0, 0, 6, 3, 'c', 'p', 'u', 0, 0, 0, 0, 0, 0, 0, 1, // another section's id
	0x7E,
}

type sampleStream struct {
	recs        []stream.Record
	old, new, z []byte // pc.ram page 0 before and after the delta; page 2 compressed
}

// sample returns the records of a stream that uses every kind of record,
// CONTINUE across sections, a PACKAGED sub-stream and tricky device bytes.
func sample(t testing.TB) sampleStream {
	old, upd := pattern(1), pattern(1)
	upd[100], upd[2000], upd[4095] = 0xEE, 0xEF, 0xF0
	d, err := delta.Encode(nil, old, upd, stream.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	zw := zlib.NewWriter(&zb)
	zw.Write(pattern(3))
	zw.Close()
	discard := append([]byte{0, 6}, "pc.ram"...)
	discard = append(discard, 0)
	discard = append(discard, be64s(0, 4096)...)
	recs := []stream.Record{
		{Kind: stream.KindHeader, Version: 3},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-7.2"},
		{Kind: stream.KindCommand, Command: stream.CmdOpenReturnPath},
		{Kind: stream.KindCommand, Command: stream.CmdPing, Data: be32(1)},
		{Kind: stream.KindCommand, Command: stream.CmdPostcopyAdvise, Data: be64s(4096, 4096)},
		{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: "ram", Version: 4},
		{Kind: stream.KindMemSize, Blocks: sampleBlocks},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionPart, ID: 2},
		{Kind: stream.KindPage, Block: "pc.ram", Addr: 0, Data: old},
		{Kind: stream.KindZero, Block: "pc.ram", Addr: stream.PageSize},
		{Kind: stream.KindZero, Block: "pc.bios", Addr: 3 * stream.PageSize, Fill: 0xAB},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionPart, ID: 2},
		{Kind: stream.KindPage, Block: "pc.bios", Addr: 0, Data: pattern(9)}, // CONTINUE across the sections
		{Kind: stream.KindXBZRLE, Block: "pc.ram", Addr: 0, Data: d},
		{Kind: stream.KindCompressed, Block: "pc.ram", Addr: 2 * stream.PageSize, Data: zb.Bytes()},
		{Kind: stream.KindMultifdFlush},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 5, Name: "timer", Version: 2},
		{Kind: stream.KindDevice, Data: trickyDevice},
		{Kind: stream.KindFooter, ID: 5},
		{Kind: stream.KindCommand, Command: stream.CmdPostcopyDiscard, Data: discard},
		{Kind: stream.KindCommand, Command: stream.CmdPing, Data: be32(2)},
		{Kind: stream.KindCommand, Command: stream.CmdPackaged},
		{Kind: stream.KindCommand, Command: stream.CmdPostcopyListen},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 6, Name: "cpu", Instance: 1, Version: 12},
		{Kind: stream.KindDevice, Data: []byte("registers\x7E\x00\x00\x00")},
		{Kind: stream.KindFooter, ID: 6},
		{Kind: stream.KindCommand, Command: stream.CmdPing, Data: be32(3)},
		{Kind: stream.KindCommand, Command: stream.CmdPostcopyRun},
		{Kind: stream.KindPackageEnd},
		{Kind: stream.KindCommand, Command: stream.CmdPing, Data: be32(4)},
		{Kind: stream.KindSection, Type: stream.SectionEnd, ID: 2},
		{Kind: stream.KindZero, Block: "pc.ram", Addr: 5 * stream.PageSize},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 7, Name: "globalstate", Version: 1},
		{Kind: stream.KindDevice, Data: append(be32(8), "running\x00"...)},
		{Kind: stream.KindFooter, ID: 7},
		{Kind: stream.KindEOF},
		{Kind: stream.KindVMDesc, Data: []byte(`{"page_size":4096,"devices":[]}`)},
	}
	return sampleStream{recs: recs, old: old, new: upd, z: pattern(3)}
}

func write(t testing.TB, recs []stream.Record) []byte {
	t.Helper()
	var b bytes.Buffer
	w := stream.NewWriter(&b)
	for i := range recs {
		if err := w.Write(&recs[i]); err != nil {
			t.Fatalf("record %d (%v): %v", i, recs[i].Kind, err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readAll reads every record, copying what is borrowed.
func readAll(in []byte, cfg stream.Config) ([]stream.Record, error) {
	r := stream.NewReader(bytes.NewReader(in), cfg)
	var recs []stream.Record
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		rec.Data = bytes.Clone(rec.Data)
		rec.Blocks = append([]stream.Block(nil), rec.Blocks...)
		recs = append(recs, rec)
	}
}

func TestWriteRead(t *testing.T) {
	s := sample(t)
	b := write(t, s.recs)
	got, err := readAll(b, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(s.recs) {
		t.Fatalf("read %d records, wrote %d", len(got), len(s.recs))
	}
	inPkg := false
	for i, g := range got {
		w := s.recs[i]
		if g.Kind != w.Kind {
			t.Fatalf("record %d: kind %v, want %v", i, g.Kind, w.Kind)
		}
		if i > 0 && g.Offset <= got[i-1].Offset && g.Kind != stream.KindPackageEnd && got[i-1].Kind != stream.KindPackageEnd {
			t.Errorf("record %d at offset %d, not after %d", i, g.Offset, got[i-1].Offset)
		}
		if w.Kind == stream.KindCommand && w.Command == stream.CmdPackaged {
			inPkg = true
		} else if w.Kind == stream.KindPackageEnd {
			inPkg = false
			if !g.Packaged {
				t.Errorf("record %d: package end not marked packaged", i)
			}
		} else if g.Packaged != inPkg {
			t.Errorf("record %d (%v): packaged %v, want %v", i, g.Kind, g.Packaged, inPkg)
		}
		if !bytes.Equal(g.Data, w.Data) && w.Command != stream.CmdPackaged {
			t.Errorf("record %d (%v): data differs", i, g.Kind)
		}
		if g.Block != w.Block || g.Addr != w.Addr || g.Fill != w.Fill || g.Command != w.Command {
			t.Errorf("record %d: got %+v, want %+v", i, g, w)
		}
		if w.Name != "" && g.Name != w.Name {
			t.Errorf("record %d: name %q, want %q", i, g.Name, w.Name)
		}
	}
	// Names and page numbers the reader derives.
	if got[9].Name != "ram" || got[36].Name != "ram" || got[39].Name != "ram" || got[24].Name != "timer" {
		t.Errorf("derived names: %q %q %q %q", got[9].Name, got[36].Name, got[39].Name, got[24].Name)
	}
	if !got[16].Continue || got[16].Page != 16+2 {
		t.Errorf("pc.bios page 0 across sections: continue %v page %d, want true, 18", got[16].Continue, got[16].Page)
	}
	if got[17].Continue || !got[37].Continue || got[37].Page != 5 {
		t.Errorf("continue flags: %v %v, page %d", got[17].Continue, got[37].Continue, got[37].Page)
	}
	if got[27].Length == 0 {
		t.Errorf("PACKAGED length 0")
	}
	if got[0].Version != 3 || got[1].Machine != "pc-i440fx-7.2" || got[29].Instance != 1 || got[29].Version != 12 {
		t.Errorf("header fields: %+v %+v %+v", got[0], got[1], got[29])
	}
	if b2 := write(t, got); !bytes.Equal(b, b2) {
		t.Errorf("rewriting the records read gives other bytes")
	}
}

func TestImage(t *testing.T) {
	s := sample(t)
	got, err := readAll(write(t, s.recs), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := stream.NewImage(nil, stream.ImageConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if err := img.Apply(&got[i]); err != nil {
			t.Fatal(err)
		}
	}
	if img.PageCount() != 22 {
		t.Fatalf("%d pages", img.PageCount())
	}
	page := make([]byte, stream.PageSize)
	check := func(n uint64, want []byte) {
		t.Helper()
		if err := img.ReadPage(n, page); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(page, want) {
			t.Errorf("page %d differs", n)
		}
	}
	ab := bytes.Repeat([]byte{0xAB}, stream.PageSize)
	check(0, s.new)
	check(1, make([]byte, stream.PageSize))
	check(2, s.z)
	check(16+2, pattern(9))
	check(16+2+3, ab)
	for n, want := range map[uint64]bool{0: true, 1: true, 2: true, 3: false, 5: true, 18: true, 21: true, 20: false} {
		if img.Sent(n) != want {
			t.Errorf("Sent(%d) = %v", n, !want)
		}
	}
	if st := img.Stats(); st.Zero != 3 || st.Page != 2 || st.XBZRLE != 1 || st.Compressed != 1 || st.Unsent != 1 {
		t.Errorf("stats %+v", st)
	}
	var blk bytes.Buffer
	if err := img.WriteBlock(&blk, 2); err != nil {
		t.Fatal(err)
	}
	if blk.Len() != 4*stream.PageSize || !bytes.Equal(blk.Bytes()[:stream.PageSize], pattern(9)) || !bytes.Equal(blk.Bytes()[3*stream.PageSize:], ab) {
		t.Errorf("block pc.bios written wrong")
	}
	if err := img.ReadPage(22, page); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("ReadPage past the end: %v", err)
	}
	var _ livemig.Memory = img
	var _ livemig.PageSink = img
	var _ livemig.PageReader = img
}

func TestLayout(t *testing.T) {
	l, err := stream.NewLayout(sampleBlocks)
	if err != nil {
		t.Fatal(err)
	}
	if l.Pages() != 22 || l.Bytes() != 22*stream.PageSize {
		t.Fatalf("pages %d", l.Pages())
	}
	for n := range l.Pages() {
		i, off, err := l.Locate(n)
		if err != nil {
			t.Fatal(err)
		}
		back, err := l.Page(l.Blocks()[i].Name, off)
		if err != nil || back != n {
			t.Fatalf("page %d -> %s+%#x -> %d, %v", n, l.Blocks()[i].Name, off, back, err)
		}
	}
	if _, _, err := l.Locate(22); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("Locate past the end: %v", err)
	}
	if _, err := l.Page("pc.bios", 4*stream.PageSize); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("Page past the block: %v", err)
	}
	if _, err := l.Page("nope", 0); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("Page of an unknown block: %v", err)
	}
	for _, bad := range [][]stream.Block{
		{{Name: "a", Size: 100}},
		{{Name: "", Size: 4096}},
		{{Name: "a", Size: 4096}, {Name: "a", Size: 4096}},
	} {
		if _, err := stream.NewLayout(bad); !errors.Is(err, livemig.ErrCorrupt) {
			t.Errorf("NewLayout(%v): %v", bad, err)
		}
	}
	// Zero-sized blocks take no page numbers.
	l, _ = stream.NewLayout([]stream.Block{{Name: "a", Size: 4096}, {Name: "e", Size: 0}, {Name: "b", Size: 4096}})
	if i, _, _ := l.Locate(1); l.Blocks()[i].Name != "b" {
		t.Errorf("page 1 in block %s", l.Blocks()[i].Name)
	}
}

// offsets returns each record's offset in the sample stream.
func offsets(t *testing.T, b []byte) []int64 {
	got, err := readAll(b, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	o := make([]int64, len(got))
	for i, r := range got {
		o[i] = r.Offset
	}
	return o
}

func TestCorrupt(t *testing.T) {
	s := sample(t)
	good := write(t, s.recs)
	off := offsets(t, good)
	type mut struct {
		name string
		edit func(b []byte) []byte
		at   int64 // the error's offset
		is   error
	}
	set := func(at int64, v ...byte) func([]byte) []byte {
		return func(b []byte) []byte { copy(b[at:], v); return b }
	}
	muts := []mut{
		{"magic", set(0, 'X'), 0, livemig.ErrCorrupt},
		{"version", set(7, 2), 4, livemig.ErrVersion},
		{"machine name length", set(off[1]+1, 0xFF), off[1] + 1, livemig.ErrCorrupt},
		{"unknown command", set(off[2]+2, 0x63), off[2], livemig.ErrCorrupt},
		{"command length", set(off[3]+4, 9), off[3], livemig.ErrCorrupt},
		{"ram version", set(off[5]+1+4+4+4+3, 5), off[5], livemig.ErrVersion},
		{"block list total", set(off[6]+5, 0), off[6] + 8, livemig.ErrCorrupt},
		{"footer id", set(off[8]+4, 9), off[8], livemig.ErrCorrupt},
		{"missing footer", set(off[14], 0x00), off[14], livemig.ErrCorrupt},
		// The first section with no footer: a stream of a machine type
		// before 2.4, which has none.
		{"no footers", set(off[8], 0x02), off[8], livemig.ErrNotSupported},
		{"ram flags", set(off[10]+7, 0x03), off[10], livemig.ErrCorrupt},
		{"unknown block", set(off[10]+9, 'X'), off[10], livemig.ErrCorrupt},
		{"offset past block", set(off[11]+4, 0x7F), off[11], livemig.ErrCorrupt},
		{"xbzrle encoding", set(off[17]+8+1+6, 2), off[17] + 8 + 1 + 6, livemig.ErrCorrupt},
		{"xbzrle length", set(off[17]+8+1+6+1, 0x10, 0x01), off[17] + 8 + 1 + 6 + 1, livemig.ErrCorrupt},
		{"xbzrle delta", set(off[17]+8+1+6+3+1, 0x80, 0x80, 0x80), off[17] + 8 + 1 + 6 + 3 + 1, livemig.ErrCorrupt},
		{"compressed length", set(off[18]+8, 0, 0, 0x20, 0), off[18] + 8, livemig.ErrCorrupt},
		{"unknown section id", set(off[15]+4, 0x33), off[15], livemig.ErrCorrupt},
		{"record type", set(off[26], 0x55), off[26], livemig.ErrCorrupt},
		{"packaged length", set(off[27]+5, 0x7F), off[27], stream.ErrLimit},
		{"description length", set(off[44]+1, 0x7F), off[44], stream.ErrLimit},
		{"after EOF", set(off[44], 0x07), off[41], io.ErrUnexpectedEOF}, // the device section's end is uncertain
		{"rdma hook", set(off[37]+7, 0x80), off[37], livemig.ErrNotSupported},
	}
	for _, m := range muts {
		t.Run(m.name, func(t *testing.T) {
			b := m.edit(bytes.Clone(good))
			_, err := readAll(b, stream.Config{})
			var se *livemig.StreamError
			if !errors.As(err, &se) {
				t.Fatalf("error %v, want a *livemig.StreamError", err)
			}
			if !errors.Is(err, m.is) {
				t.Errorf("error %v, want one wrapping %v", err, m.is)
			}
			if se.Offset != m.at {
				t.Errorf("error at offset %d, want %d: %v", se.Offset, m.at, err)
			}
		})
	}
}

// TestTruncated cuts the sample stream at every byte: each cut is an error
// wrapping io.ErrUnexpectedEOF at or before the cut, except where what is
// left is a well-formed stream ending with EOF (a stream may end without
// its description).
func TestTruncated(t *testing.T) {
	s := sample(t)
	good := write(t, s.recs)
	off := offsets(t, good)
	for n := range len(good) {
		recs, err := readAll(good[:n], stream.Config{BufferSize: 8 << 10})
		if int64(n) == off[len(off)-1] { // right after EOF
			if err != nil {
				t.Errorf("cut after EOF: %v", err)
			}
			continue
		}
		if err == nil && recs[len(recs)-1].Kind == stream.KindEOF {
			// A cut inside device bytes that hold the section's footer
			// and an EOF marker reads as a shorter, well-formed stream.
			continue
		}
		var se *livemig.StreamError
		if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.As(err, &se) || se.Offset > int64(n) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
}

// TestMutations flips random bytes of the sample stream: no panic, and every
// error is a StreamError inside the stream.
func TestMutations(t *testing.T) {
	s := sample(t)
	good := write(t, s.recs)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		b := bytes.Clone(good)
		for range 1 + rng.IntN(3) {
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		}
		recs, err := readAll(b, stream.Config{BufferSize: 8 << 10})
		if err != nil {
			var se *livemig.StreamError
			if !errors.As(err, &se) || se.Offset < 0 || se.Offset > int64(len(b)) {
				t.Fatalf("error %v", err)
			}
		}
		img, _ := stream.NewImage(nil, stream.ImageConfig{MaxBytes: 1 << 20})
		for i := range recs {
			if img.Apply(&recs[i]) != nil {
				break
			}
		}
	}
}

// TestLimits checks that lengths from the stream are checked before any
// allocation: a description claiming 16 MiB in a short stream allocates
// little, and bounds below a section's size are errors.
func TestLimits(t *testing.T) {
	s := sample(t)
	good := write(t, s.recs)
	off := offsets(t, good)
	cut := bytes.Clone(good[:off[44]+5])
	copy(cut[off[44]+1:], be32(16<<20))
	cut = append(cut, `{"x":1}`...)
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	_, err := readAll(cut, stream.Config{})
	runtime.ReadMemStats(&ms1)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut description: %v", err)
	}
	if a := ms1.TotalAlloc - ms0.TotalAlloc; a > 2<<20 {
		t.Errorf("reading a cut description allocated %d bytes", a)
	}
	if _, err := readAll(good, stream.Config{MaxVMDesc: 10}); !errors.Is(err, stream.ErrLimit) {
		t.Errorf("MaxVMDesc 10: %v", err)
	}
	if _, err := readAll(good, stream.Config{MaxSection: 16}); !errors.Is(err, stream.ErrLimit) {
		t.Errorf("MaxSection 16: %v", err)
	}
	if _, err := readAll(good, stream.Config{MaxBlocks: 2}); !errors.Is(err, stream.ErrLimit) {
		t.Errorf("MaxBlocks 2: %v", err)
	}
	_, err = readAll(good, stream.Config{MaxRAM: 8 * stream.PageSize})
	var se *livemig.StreamError
	if !errors.Is(err, stream.ErrLimit) || !errors.As(err, &se) || se.Offset != off[6] {
		t.Errorf("MaxRAM of 8 pages, a block list of 22 at offset %d: %v", off[6], err)
	}
	// A 9-byte block list declaring 2^63 bytes: refused at the default.
	huge := bytes.Clone(good[:off[6]])
	huge = append(huge, be64s(1<<63|0x04)...)
	huge = append(huge, 1, 'x')
	huge = append(huge, be64s(1<<63)...)
	if _, err := readAll(huge, stream.Config{}); !errors.Is(err, stream.ErrLimit) {
		t.Errorf("a block list of 2^63 bytes: %v", err)
	}
	got, _ := readAll(good, stream.Config{})
	img, _ := stream.NewImage(nil, stream.ImageConfig{MaxBytes: 8 * stream.PageSize})
	if err := img.Apply(&got[6]); !errors.Is(err, stream.ErrLimit) {
		t.Errorf("image of 8 pages given 22: %v", err)
	}
}

// TestWriterRejects checks records the Writer refuses.
func TestWriterRejects(t *testing.T) {
	bad := [][]stream.Record{
		{{Kind: stream.KindHeader, Version: 2}},
		{{Kind: stream.KindConfiguration}},
		{{Kind: stream.KindSection, Type: stream.SectionFull}},
		{{Kind: stream.KindSection, Type: 9, Name: "x"}},
		{{Kind: stream.KindCommand, Command: stream.CmdPing}},
		{{Kind: stream.KindCommand, Command: 99}},
		{{Kind: stream.KindPackageEnd}},
		{{Kind: stream.KindCommand, Command: stream.CmdPackaged}, {Kind: stream.KindCommand, Command: stream.CmdPackaged}},
		{{Kind: stream.KindPage, Block: "pc.ram", Data: make([]byte, stream.PageSize)}},
		{{Kind: stream.KindMemSize, Blocks: sampleBlocks}, {Kind: stream.KindPage, Block: "pc.ram", Data: make([]byte, 10)}},
		{{Kind: stream.KindMemSize, Blocks: sampleBlocks}, {Kind: stream.KindZero, Block: "nope"}},
		{{Kind: stream.KindMemSize, Blocks: sampleBlocks}, {Kind: stream.KindZero, Block: "pc.ram", Addr: 17}},
		{{Kind: stream.KindMemSize, Blocks: sampleBlocks}, {Kind: stream.KindXBZRLE, Block: "pc.ram", Data: []byte{0, 0}}},
		{{Kind: 99}},
	}
	for i, recs := range bad {
		w := stream.NewWriter(io.Discard)
		var err error
		for j := range recs {
			if err = w.Write(&recs[j]); err != nil {
				break
			}
		}
		if !errors.Is(err, stream.ErrWriter) {
			t.Errorf("case %d: %v, want ErrWriter", i, err)
		}
	}
}

// TestConfigurationSubsections reads a configuration with the three
// subsections QEMU may send, and writes it back as it was.
func TestConfigurationSubsections(t *testing.T) {
	var b []byte
	b = append(b, be32(stream.Magic)...)
	b = append(b, be32(3)...)
	b = append(b, 7)
	b = append(b, be32(13)...)
	b = append(b, "pc-q35-10.0.0"[:13]...)
	sub := func(name string, fields ...byte) {
		b = append(b, 5, byte(len(name)))
		b = append(b, name...)
		b = append(b, be32(1)...)
		b = append(b, fields...)
	}
	sub("configuration/target-page-bits", be32(12)...)
	sub("configuration/capabilities", append(be32(1), append([]byte{15}, "x-ignore-shared"...)...)...)
	sub("configuration/uuid", bytes.Repeat([]byte{0x42}, 16)...)
	b = append(b, 1)
	b = append(b, be32(2)...)
	b = append(b, 3, 'r', 'a', 'm')
	b = append(b, be32(0)...)
	b = append(b, be32(4)...)
	b = append(b, be64s(stream.PageSize|4)...)
	b = append(b, 6)
	b = append(b, "pc.ram"...)
	b = append(b, be64s(stream.PageSize, 0x100000, 0x10)...) // size, address (x-ignore-shared), EOS
	b = append(b, 0x7E)
	b = append(b, be32(2)...)
	b = append(b, 0)
	got, err := readAll(b, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := got[1]
	if c.Machine != "pc-q35-10.0.0" || c.PageBits != 12 || len(c.Capabilities) != 1 || c.Capabilities[0] != "x-ignore-shared" || !bytes.Equal(c.UUID, bytes.Repeat([]byte{0x42}, 16)) {
		t.Errorf("configuration %+v", c)
	}
	if got[3].Blocks[0].Addr != 0x100000 {
		t.Errorf("block address %#x", got[3].Blocks[0].Addr)
	}
	if out := write(t, got); !bytes.Equal(out, b) {
		t.Errorf("rewritten configuration differs:\n%x\n%x", out, b)
	}
	// Built by hand, without the raw bytes: the Writer encodes the fields.
	got[1].Data = nil
	if out := write(t, got); !bytes.Equal(out, b) {
		t.Errorf("configuration written from its fields differs:\n%x\n%x", out, b)
	}
}

// TestStalledEnd feeds a stream through a pipe that stops right after the
// last device section's footer and EOF, as a source QEMU with a return
// path and no JSON description does while it waits for the destination:
// the Reader returns the last sections (fewer bytes than it looks ahead
// past a footer), their footers and EOF without waiting for more input,
// and the stream then ends cleanly.
func TestStalledEnd(t *testing.T) {
	recs := []stream.Record{
		{Kind: stream.KindHeader},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-7.2"},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 6, Name: "acpi_build", Version: 1},
		{Kind: stream.KindDevice, Data: []byte{1, 0}},
		{Kind: stream.KindFooter, ID: 6},
		{Kind: stream.KindSection, Type: stream.SectionFull, ID: 7, Name: "globalstate", Version: 1},
		{Kind: stream.KindDevice, Data: append(be32(8), "running\x00"...)},
		{Kind: stream.KindFooter, ID: 7},
		{Kind: stream.KindEOF},
	}
	b := write(t, recs)
	pr, pw := io.Pipe()
	release := make(chan struct{})
	go func() {
		pw.Write(b)
		<-release
		pw.Close()
	}()
	r := stream.NewReader(pr, stream.Config{})
	got := make(chan stream.Kind)
	go func() {
		defer close(got)
		for {
			rec, err := r.Next()
			if err != nil {
				if err != io.EOF {
					t.Errorf("after the release: %v", err)
				}
				return
			}
			got <- rec.Kind
		}
	}()
	deadline := time.After(10 * time.Second)
	for i, want := range []stream.Kind{stream.KindHeader, stream.KindConfiguration, stream.KindSection, stream.KindDevice, stream.KindFooter,
		stream.KindSection, stream.KindDevice, stream.KindFooter, stream.KindEOF} {
		select {
		case k := <-got:
			if k != want {
				t.Fatalf("record %d: %v, want %v", i, k, want)
			}
		case <-deadline:
			t.Fatalf("record %d (%v) not returned while the input stalls after EOF", i, want)
		}
	}
	close(release)
	if _, ok := <-got; ok {
		t.Error("a record after EOF")
	}
}

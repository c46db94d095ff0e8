package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"
	"github.com/livemig/livemig/transport"
)

// streamSeeds adds the stream package's corpus (streams derived from
// QEMU's, see stream/testdata/README.md) to f's seeds.
func streamSeeds(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("stream", "testdata", "fuzz", "FuzzReader", "*"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			line := sc.Text()
			if q, ok := strings.CutPrefix(line, "[]byte("); ok {
				s, err := strconv.Unquote(strings.TrimSuffix(q, ")"))
				if err != nil {
					f.Fatalf("%s: %v", file, err)
				}
				f.Add([]byte(s))
			}
		}
	}
}

// fuzzBounds lowers the bounds of the images the command builds for the
// fuzz run, and restores them after.
func fuzzBounds(f *testing.F) {
	saved := imageConfig
	imageConfig = stream.ImageConfig{MaxBytes: 128 << 20}
	f.Cleanup(func() { imageConfig = saved })
}

// checkStreamError fails t unless err is a *livemig.StreamError inside
// the n bytes of input, or one of the errors the command adds of its own.
func checkStreamError(t *testing.T, err error, n int) {
	t.Helper()
	var se *livemig.StreamError
	switch {
	case errors.As(err, &se):
		if se.Offset < 0 || se.Offset > int64(n) {
			t.Fatalf("error %v outside the %d bytes of input", err, n)
		}
	case errors.Is(err, stream.ErrWriter):
		// convert: a record the Writer refuses (a compacted page of a
		// stream whose block list came after its page records).
	default:
		t.Fatalf("error %v is not a StreamError", err)
	}
}

// FuzzInspect runs inspect on arbitrary bytes: no panic, no allocation
// driven by what a block list declares (a 2^40-byte one costs a table, not
// a page counter per page), and every error a StreamError in the input.
func FuzzInspect(f *testing.F) {
	streamSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := inspect(bytes.NewReader(in))
		if err != nil {
			checkStreamError(t, err, len(in))
			return
		}
		if s.Bytes > int64(len(in)) {
			t.Fatalf("inspect read %d bytes of %d", s.Bytes, len(in))
		}
	})
}

// FuzzConvert runs convert in each mode on arbitrary bytes: no panic, and
// what it writes reads back as a stream; a copy is the input's bytes.
func FuzzConvert(f *testing.F) {
	streamSeeds(f)
	fuzzBounds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, mode := range []convertMode{convertCopy, convertPlain, convertXBZRLE, convertCompact} {
			var out bytes.Buffer
			st, err := convert(bytes.NewReader(in), &out, mode)
			if err != nil {
				if mode != convertCompact || !strings.HasPrefix(err.Error(), "compact:") {
					checkStreamError(t, err, len(in))
				}
				continue
			}
			if mode == convertCopy && !bytes.Equal(out.Bytes(), in[:st.In]) {
				t.Fatalf("a copy of %d bytes differs from the input", st.In)
			}
			r := stream.NewReader(bytes.NewReader(out.Bytes()), stream.Config{})
			img, _ := stream.NewImage(nil, imageConfig)
			for {
				rec, err := r.Next()
				if err != nil {
					if err != io.EOF {
						t.Fatalf("mode %d: the converted stream does not read: %v", mode, err)
					}
					break
				}
				if err := img.Apply(&rec); err != nil {
					t.Fatalf("mode %d: the converted stream does not apply: %v", mode, err)
				}
			}
		}
	})
}

// TestInspectDeclaredRAM gives inspect block lists that declare far more
// RAM than the stream sends: 512 GiB with one page record costs a table of
// chunks, not a counter per page (it allocated 128 MiB before); 2^62 bytes
// is an error at the block list's offset.
func TestInspectDeclaredRAM(t *testing.T) {
	build := func(size uint64) []byte {
		var b bytes.Buffer
		w := stream.NewWriter(&b)
		for _, rec := range []stream.Record{
			{Kind: stream.KindHeader},
			{Kind: stream.KindConfiguration, Machine: "pc-i440fx-7.2"},
			{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: "ram", Version: 4},
			{Kind: stream.KindMemSize, Blocks: []stream.Block{{Name: "pc.ram", Size: size}}},
			{Kind: stream.KindZero, Block: "pc.ram", Addr: size - stream.PageSize, Fill: 1},
			{Kind: stream.KindEOS},
			{Kind: stream.KindFooter, ID: 2},
			{Kind: stream.KindEOF},
		} {
			if err := w.Write(&rec); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	s, err := inspect(bytes.NewReader(build(512 << 30)))
	runtime.ReadMemStats(&ms1)
	if err != nil || s.PagesSent != 1 || s.MaxSends != 1 {
		t.Fatalf("inspect: %v, %d pages sent", err, s.PagesSent)
	}
	if a := ms1.TotalAlloc - ms0.TotalAlloc; a > 8<<20 {
		t.Errorf("inspect of a 512 GiB block list with one page allocated %d bytes", a)
	}
	huge := build(1 << 62)
	_, err = inspect(bytes.NewReader(huge))
	var se *livemig.StreamError
	if !errors.Is(err, stream.ErrLimit) || !errors.As(err, &se) || se.Offset != 43 {
		t.Errorf("a block list of 2^62 bytes: %v, want ErrLimit at offset 43", err)
	}
}

// FuzzDestHalf hands the destination half's writer messages decoded from
// arbitrary bytes (block lists and pages of every encoding): no panic, and
// an error for what a source half never sends.
func FuzzDestHalf(f *testing.F) {
	fuzzBounds(f)
	ram := blockList(stream.Block{Name: "pc.ram", Size: 4 * stream.PageSize}, stream.Block{Name: "pc.bios", Size: stream.PageSize})
	seed := append([]byte{0, 0, byte(len(ram))}, ram...)
	seed = append(seed, 1, 0, 0, 0, 2, byte(transport.EncZero), 0, 0)
	seed = append(seed, 1, 0, 0, 0, 4, byte(transport.EncRaw), 0x10, 0)
	seed = append(seed, bytes.Repeat([]byte{9}, stream.PageSize)...)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		d := &destWriter{out: &countWriter{w: &out}, buf: make([]byte, stream.PageSize)}
		d.w = stream.NewWriter(d.out)
		for len(in) >= 3 {
			kind := in[0] % 2
			switch kind {
			case 0: // a block list: u16 length, the list
				n := min(int(binary.BigEndian.Uint16(in[1:])), len(in)-3)
				if err := d.blocks(in[3 : 3+n]); err != nil {
					return
				}
				in = in[3+n:]
			case 1: // a page: u32 number, u8 encoding, u16 length, data
				if len(in) < 8 {
					return
				}
				n := min(int(binary.BigEndian.Uint16(in[6:])), len(in)-8)
				m := transport.Msg{Kind: kindQPage, Page: uint64(binary.BigEndian.Uint32(in[1:])), Enc: transport.Encoding(in[5]), Data: in[8 : 8+n]}
				if err := d.page(&m); err != nil {
					return
				}
				in = in[8+n:]
			}
		}
	})
}

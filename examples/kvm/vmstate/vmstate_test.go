package vmstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"

	"github.com/livemig/livemig"
)

// sample is a state with every section, its values drawn from seed.
func sample(seed uint64) *State {
	r := rand.New(rand.NewPCG(seed, 1))
	s := &State{FPU: make([]byte, FPUSize), XSave: make([]byte, 4096)}
	for _, p := range s.Regs.words() {
		*p = r.Uint64()
	}
	for _, g := range s.Sregs.segments() {
		*g = Segment{Base: r.Uint64(), Limit: r.Uint32(), Selector: uint16(r.Uint32()), Type: 11, Present: 1, DPL: 0, DB: 0,
			S: 1, L: 1, G: 1, AVL: 0, Unu: 0}
	}
	s.Sregs.GDT = DTable{Base: r.Uint64(), Limit: 0x27}
	s.Sregs.IDT = DTable{Base: r.Uint64(), Limit: 0xfff}
	for _, c := range s.Sregs.control() {
		*c = r.Uint64()
	}
	s.Sregs.InterruptBitmap[2] = r.Uint64()
	for i := range s.FPU {
		s.FPU[i] = byte(r.Uint32())
	}
	for i := range s.XSave {
		s.XSave[i] = byte(r.Uint32())
	}
	s.MSRs = []MSR{{0xc0000080, 0x500}, {0x174, r.Uint64()}, {0x10, r.Uint64()}}
	s.Layout = []Slot{{0, 0, 0, 1 << 20}, {1, 1, 2 << 20, 3 << 20}}
	s.Guest = &Guest{PausedUnixNano: int64(r.Uint64() >> 1), Counter: r.Uint64(), Batches: 7, Seed: 42}
	return s
}

func TestRoundTrip(t *testing.T) {
	for seed := range uint64(8) {
		s := sample(seed)
		if seed%2 == 1 {
			s.FPU, s.XSave, s.MSRs, s.Guest = nil, nil, nil, nil
		}
		prefix := []byte("kept")
		b, err := Append(prefix, s)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[:4], []byte("kept")) {
			t.Fatal("Append changed dst's bytes")
		}
		got, err := Decode(b[4:])
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Fatalf("seed %d: decoded\n%+v\nwant\n%+v", seed, got, s)
		}
	}
}

// The format is pinned: the size of a state with every section, and its
// first bytes.
func TestPinned(t *testing.T) {
	b, err := Append(nil, sample(0))
	if err != nil {
		t.Fatal(err)
	}
	want := headerLen + (secHdrLen + RegsSize) + (secHdrLen + SregsSize) + (secHdrLen + FPUSize) + (secHdrLen + 4096) +
		(secHdrLen + 8 + 3*16) + (secHdrLen + 8 + 2*24) + (secHdrLen + GuestSize) + secHdrLen + crcLen
	if len(b) != want {
		t.Errorf("%d bytes, want %d", len(b), want)
	}
	if !bytes.Equal(b[:14], []byte{'L', 'M', 'K', 'S', 1, 0, 0, 0, 1, 0, RegsSize, 0, 0, 0}) {
		t.Errorf("header % x", b[:14])
	}
}

// withCRC fixes b's trailing CRC after an edit.
func withCRC(b []byte) []byte {
	n := len(b) - crcLen
	binary.LittleEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b
}

// A reader skips a section it does not know.
func TestUnknownSectionSkipped(t *testing.T) {
	s := sample(3)
	b, err := Append(nil, s)
	if err != nil {
		t.Fatal(err)
	}
	// Insert section 99 right after the header.
	extra := section(nil, 99, func(x []byte) []byte { return append(x, "from a later version"...) })
	b = append(b[:headerLen:headerLen], append(extra, b[headerLen:]...)...)
	got, err := Decode(withCRC(b))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatal("state changed by an unknown section")
	}
}

func TestBadInput(t *testing.T) {
	good, err := Append(nil, sample(5))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	regsLen := headerLen + 2 // the Regs section's length field
	for name, c := range map[string]struct {
		b    []byte
		want error
	}{
		"empty":     {nil, livemig.ErrCorrupt},
		"magic":     {edit(func(b []byte) []byte { b[0] = 'X'; return withCRC(b) }), livemig.ErrCorrupt},
		"version":   {edit(func(b []byte) []byte { b[4] = 2; return withCRC(b) }), livemig.ErrVersion},
		"flags":     {edit(func(b []byte) []byte { b[6] = 1; return withCRC(b) }), livemig.ErrCorrupt},
		"crc":       {edit(func(b []byte) []byte { b[100] ^= 1; return b }), livemig.ErrCorrupt},
		"truncated": {withCRC(append([]byte(nil), good[:len(good)/2]...)), livemig.ErrCorrupt},
		"length past end": {edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[regsLen:], 1<<31)
			return withCRC(b)
		}), livemig.ErrCorrupt},
		"regs length": {edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[regsLen:], RegsSize-8)
			return withCRC(b)
		}), livemig.ErrCorrupt},
		"missing regs": {edit(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[headerLen:], 200) // Regs becomes an unknown tag
			return withCRC(b)
		}), ErrMissing},
		"twice": {withCRC(append(append(append([]byte(nil), good[:headerLen]...),
			good[headerLen:headerLen+secHdrLen+RegsSize]...), good[headerLen:]...)), livemig.ErrCorrupt},
		"too big": {make([]byte, MaxSize+1), livemig.ErrCorrupt},
	} {
		_, err := Decode(c.b)
		var se *livemig.StreamError
		if !errors.Is(err, c.want) || !errors.As(err, &se) {
			t.Errorf("%s: %v, want an error wrapping %v", name, err, c.want)
		}
	}
	// Every truncation and every single bit flip is an error.
	for n := range len(good) {
		if _, err := Decode(good[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", n)
		}
	}
	for i := range len(good) * 8 {
		b := append([]byte(nil), good...)
		b[i/8] ^= 1 << (i % 8)
		if _, err := Decode(b); err == nil {
			t.Fatalf("bit %d flipped: accepted", i)
		}
	}
}

func TestAppendRefuses(t *testing.T) {
	for name, s := range map[string]*State{
		"fpu":   {FPU: make([]byte, 10)},
		"xsave": {XSave: make([]byte, MaxXSave+1)},
		"msrs":  {MSRs: make([]MSR, MaxMSRs+1)},
		"slots": {Layout: make([]Slot, MaxSlots+1)},
	} {
		if b, err := Append([]byte("x"), s); err == nil || string(b) != "x" {
			t.Errorf("%s: %q, %v", name, b, err)
		}
	}
}

var update = flag.Bool("update", false, "rewrite the seed corpus in testdata/fuzz/FuzzDecode")

// seeds are the fuzz target's seed inputs: whole states, a minimal one, one
// with a section from a later version, and broken ones.
func seeds(t testing.TB) [][]byte {
	var out [][]byte
	for seed := range uint64(2) {
		b, err := Append(nil, sample(seed))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	small := sample(9)
	small.XSave, small.FPU, small.MSRs = nil, nil, nil
	min, err := Append(nil, small)
	if err != nil {
		t.Fatal(err)
	}
	extra := section(nil, 99, func(x []byte) []byte { return append(x, "later"...) })
	later := withCRC(append(append(append([]byte(nil), min[:headerLen]...), extra...), min[headerLen:]...))
	return append(out, min, later, min[:len(min)/2], []byte(Magic))
}

// TestSeedCorpus writes (with -update) or checks the seed corpus files
// under testdata/fuzz, which go test runs as FuzzDecode's inputs.
func TestSeedCorpus(t *testing.T) {
	for i, b := range seeds(t) {
		path := filepath.Join("testdata", "fuzz", "FuzzDecode", fmt.Sprintf("seed-%d", i))
		want := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s: stale or missing (%v): run go test -run TestSeedCorpus -update", path, err)
		}
	}
}

// FuzzDecode: Decode never panics on any input, and what it accepts
// encodes back to a state that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, b := range seeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Append(nil, s)
		if err != nil {
			t.Fatalf("a decoded state does not encode: %v", err)
		}
		s2, err := Decode(again)
		if err != nil || !reflect.DeepEqual(s, s2) {
			t.Fatalf("re-encoded state: %v", err)
		}
	})
}

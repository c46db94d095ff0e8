package guest

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"unsafe"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/kvm"
)

// hostMemory returns a Layout of one slot of size bytes at GPA 0 over
// page-aligned Go memory, standing in for a VM's memory in tests that run
// no vCPU.
func hostMemory(t testing.TB, size int) *kvm.Layout {
	t.Helper()
	b := make([]byte, size+kvm.PageSize)
	off := (kvm.PageSize - int(uintptr(unsafe.Pointer(&b[0]))%kvm.PageSize)) % kvm.PageSize
	l, err := kvm.NewLayout([]kvm.Slot{{ID: 0, GPA: 0, Mem: b[off : off+size]}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// apply replays batches batches of the model on host memory, as the guest
// would write them, keeping the checksum and counter: the reference the
// guest's own run is compared with.
func apply(t testing.TB, l *kvm.Layout, p Params, batches int) {
	t.Helper()
	m := NewModel(p)
	le := binary.LittleEndian
	block, _ := l.GPA(ParamsGPA, kvm.PageSize)
	for b := uint32(0); b < uint32(batches); b++ {
		for _, pg := range m.Next(nil) {
			d, err := l.GPA(p.GPA(pg)+uint64(b&1023)*4, 4)
			if err != nil {
				t.Fatal(err)
			}
			old, v := le.Uint32(d), b<<16+pg+1
			le.PutUint32(d, v)
			le.PutUint32(block[offChecksum:], le.Uint32(block[offChecksum:])+v-old)
		}
		le.PutUint32(block[offCounter:], b+1)
	}
	le.PutUint32(block[offCursor:], m.cursor)
	le.PutUint32(block[offRNG:], m.rng)
}

func TestModelPatterns(t *testing.T) {
	p := Params{A: Range{GPA: 0x10000, Pages: 3}, B: Range{GPA: 0x40000, Pages: 2}, PerBatch: 4}
	m := NewModel(p)
	if got := m.Next(m.Next(nil)); !slices.Equal(got, []uint32{0, 1, 2, 3, 4, 0, 1, 2}) {
		t.Fatalf("sequential: %v", got)
	}
	if p.GPA(2) != 0x12000 || p.GPA(3) != 0x40000 || p.GPA(4) != 0x41000 {
		t.Fatalf("GPAs %#x %#x %#x", p.GPA(2), p.GPA(3), p.GPA(4))
	}
	p.Pattern, p.Hot, p.Seed, p.PerBatch = Hot, 2, 9, 100
	for _, pg := range NewModel(p).Next(nil) {
		if pg >= 2 {
			t.Fatalf("hot page %d outside a hot set of 2", pg)
		}
	}
	p.Pattern = Random
	a, b := NewModel(p).Next(nil), NewModel(p).Next(nil)
	if !slices.Equal(a, b) || slices.Max(a) != 4 || slices.Min(a) != 0 {
		t.Fatalf("random: %v and %v", a, b)
	}
}

func TestLoadValidates(t *testing.T) {
	l := hostMemory(t, 1<<20)
	ok := Params{A: Range{GPA: FirstDataGPA, Pages: 4}, B: Range{GPA: 0x80000, Pages: 4}, PerBatch: 1}
	if err := Load(l, ok); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(p *Params){
		"empty":       func(p *Params) { p.A.Pages, p.B.Pages = 0, 0 },
		"over code":   func(p *Params) { p.A.GPA = CodeGPA },
		"unaligned":   func(p *Params) { p.B.GPA = 0x80004 },
		"outside":     func(p *Params) { p.B.GPA = 1<<20 - kvm.PageSize },
		"overlap":     func(p *Params) { p.B.GPA = FirstDataGPA + kvm.PageSize },
		"no hot set":  func(p *Params) { p.Pattern = Hot },
		"bad pattern": func(p *Params) { p.Pattern = 7 },
		"big hot set": func(p *Params) { p.Pattern, p.Hot = Hot, 9 },
	} {
		p := ok
		f(&p)
		if err := Load(l, p); !errors.Is(err, kvm.ErrBadInput) {
			t.Errorf("%s: err = %v, want ErrBadInput", name, err)
		}
	}
}

func TestVerify(t *testing.T) {
	l := hostMemory(t, 1<<20)
	p := Params{A: Range{GPA: 0x10000, Pages: 16}, B: Range{GPA: 0x40000, Pages: 16}, PerBatch: 5, Pattern: Random, Seed: 1}
	d, _ := l.GPA(0x10000, 4)
	d[0] = 7 // the region need not start zeroed
	if err := Load(l, p); err != nil {
		t.Fatal(err)
	}
	apply(t, l, p, 300)
	if err := Verify(l, p); err != nil {
		t.Fatal(err)
	}
	if c, _ := Counter(l); c != 300 {
		t.Fatalf("counter %d", c)
	}
	d, _ = l.GPA(0x40000+3*kvm.PageSize+100, 1)
	d[0] ^= 1
	if err := Verify(l, p); !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("Verify after a flipped bit: %v", err)
	}
}

func TestExpected(t *testing.T) {
	l := hostMemory(t, 1<<20)
	p := Params{A: Range{GPA: 0x10000, Pages: 16}, B: Range{GPA: 0x40000, Pages: 16}, PerBatch: 3}
	dst := make([]uint64, livemig.WordsFor(l.PageCount()))
	if err := NewModel(p).Expected(l, 2, dst); err != nil {
		t.Fatal(err)
	}
	// Pages 0..5 of the region: GPA 0x10000.. = pages 16..21; and the
	// parameter page 1.
	want := uint64(1)<<1 | 0x3f<<16
	if dst[0] != want || slices.ContainsFunc(dst[1:], func(w uint64) bool { return w != 0 }) {
		t.Fatalf("expected %x, want %x", dst, want)
	}
}

package kvm

import (
	"errors"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/livemigtest"
)

// aligned returns n zeroed bytes starting on a page boundary (from the Go
// heap: Layout only needs the alignment).
func aligned(n int) []byte {
	b := make([]byte, n+PageSize)
	off := (PageSize - int(addrOf(b)%PageSize)) % PageSize
	return b[off : off+n : off+n]
}

func twoSlots(t *testing.T) *Layout {
	t.Helper()
	// Slot 3 first in layout order though its GPA is higher: order is the
	// caller's, numbering follows it.
	l, err := NewLayout([]Slot{
		{ID: 0, GPA: 0, Mem: aligned(5 * PageSize)},
		{ID: 3, GPA: 0x100000, Mem: aligned(70 * PageSize)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLayoutBothWays(t *testing.T) {
	l := twoSlots(t)
	if l.PageCount() != 75 || l.PageSize() != PageSize {
		t.Fatalf("PageCount %d PageSize %d", l.PageCount(), l.PageSize())
	}
	for n := uint64(0); n < l.PageCount(); n++ {
		id, off, err := l.Slot(n)
		if err != nil {
			t.Fatal(err)
		}
		back, err := l.Page(id, off)
		if err != nil || back != n {
			t.Fatalf("page %d -> slot %d offset %d -> %d, %v", n, id, off, back, err)
		}
	}
	if id, off, _ := l.Slot(5); id != 3 || off != 0 {
		t.Fatalf("page 5 is slot %d offset %d, want slot 3 offset 0", id, off)
	}
	if n, _ := l.PageOfGPA(0x100000 + 2*PageSize + 17); n != 7 {
		t.Fatalf("PageOfGPA in slot 3 = %d, want 7", n)
	}
	if _, err := l.PageOfGPA(0x80000); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("GPA in the hole: err = %v", err)
	}
	if _, _, err := l.Slot(75); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("Slot(75): err = %v", err)
	}
	if _, err := l.Page(3, 70); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("Page(3, 70): err = %v", err)
	}
	if _, err := l.Page(1, 0); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("Page of an unknown slot: err = %v", err)
	}
	if _, err := l.GPA(4*PageSize, 2*PageSize); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("GPA range across the hole: err = %v", err)
	}
}

func TestLayoutMemory(t *testing.T) {
	l := twoSlots(t)
	s := l.Slots()
	s[1].Mem[2*PageSize] = 0xab // slot 3, offset 2: page 7
	v, err := l.View(7)
	if err != nil || v[0] != 0xab || len(v) != PageSize {
		t.Fatalf("View(7) = [%d]%x..., %v", len(v), v[:1], err)
	}
	dst := make([]byte, PageSize)
	if err := l.ReadPage(7, dst); err != nil || dst[0] != 0xab {
		t.Fatalf("ReadPage(7) = %x, %v", dst[:1], err)
	}
	if err := l.ReadPage(7, dst[:10]); !errors.Is(err, ErrBadInput) {
		t.Fatalf("short buffer: err = %v", err)
	}
	if err := l.ReadPage(75, dst); !errors.Is(err, livemig.ErrPageRange) {
		t.Fatalf("page past the end: err = %v", err)
	}
	g, err := l.GPA(0x100000+2*PageSize, 1)
	if err != nil || g[0] != 0xab {
		t.Fatalf("GPA = %x, %v", g, err)
	}
}

func TestLayoutRejects(t *testing.T) {
	m := aligned(4 * PageSize)
	for name, slots := range map[string][]Slot{
		"overlap":     {{ID: 0, GPA: 0, Mem: m[:2*PageSize]}, {ID: 1, GPA: PageSize, Mem: m[2*PageSize:]}},
		"same id":     {{ID: 0, GPA: 0, Mem: m[:PageSize]}, {ID: 0, GPA: 0x10000, Mem: m[PageSize:]}},
		"odd size":    {{ID: 0, GPA: 0, Mem: m[:100]}},
		"empty":       {{ID: 0, GPA: 0, Mem: nil}},
		"odd GPA":     {{ID: 0, GPA: 12, Mem: m}},
		"odd address": {{ID: 0, GPA: 0, Mem: m[1 : 1+PageSize]}},
	} {
		if _, err := NewLayout(slots); !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: err = %v, want ErrBadInput", name, err)
		}
	}
}

// TestLayoutConformance runs livemig's Memory conformance suite on a
// Layout of two slots with a hole between them.
func TestLayoutConformance(t *testing.T) {
	l := twoSlots(t)
	for i, s := range l.Slots() {
		for j := range s.Mem {
			s.Mem[j] = byte(i*31 + j*7)
		}
	}
	livemigtest.TestMemory(t, l)
}

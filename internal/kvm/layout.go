package kvm

import (
	"fmt"
	"sort"

	"github.com/livemig/livemig"
)

// Slot is one guest memory slot: the guest-physical range [GPA, GPA+len(Mem))
// backed by the host bytes Mem. Mem belongs to the caller; it must be
// page-aligned (an mmap), a non-zero multiple of PageSize long, and stay
// mapped until the VM is closed.
type Slot struct {
	ID       uint32 // the KVM slot number (address space 0)
	GPA      uint64 // page-aligned
	Mem      []byte
	ReadOnly bool // KVM_MEM_READONLY: guest writes exit as MMIO
}

// Pages returns the slot's page count.
func (s Slot) Pages() uint64 { return uint64(len(s.Mem)) / PageSize }

// Layout maps a VM's slots onto livemig page numbers: the slots in the
// order given, each slot's pages consecutive, with no numbers for the GPA
// holes between slots. With slots A (n0 pages) and B (n1 pages), page 0 is
// A's first page, page n0-1 A's last and page n0 B's first, whatever their
// GPAs. A Layout is immutable and safe for concurrent use.
//
// Layout is also the guest's livemig.Memory and livemig.PageView over the
// slots' host memory: ReadPage copies from it, View aliases it.
type Layout struct {
	slots []Slot   // in layout order
	base  []uint64 // base[i]: livemig number of slots[i]'s first page
	pages uint64
}

var (
	_ livemig.Memory   = (*Layout)(nil)
	_ livemig.PageView = (*Layout)(nil)
)

// NewLayout returns the layout of slots, in the order given. It checks
// that every slot's GPA and memory are page-aligned and non-empty, that
// IDs are distinct and that no two slots overlap in guest-physical space;
// otherwise it returns an error wrapping ErrBadInput. The Layout keeps
// the slots' Mem slices (aliases, not copies).
func NewLayout(slots []Slot) (*Layout, error) {
	l := &Layout{slots: append([]Slot(nil), slots...), base: make([]uint64, len(slots))}
	ids := make(map[uint32]bool, len(slots))
	for i, s := range l.slots {
		if err := checkSlot(s); err != nil {
			return nil, err
		}
		if ids[s.ID] {
			return nil, fmt.Errorf("kvm: slot %d listed twice: %w", s.ID, ErrBadInput)
		}
		ids[s.ID] = true
		l.base[i] = l.pages
		l.pages += s.Pages()
	}
	byGPA := append([]Slot(nil), l.slots...)
	sort.Slice(byGPA, func(i, j int) bool { return byGPA[i].GPA < byGPA[j].GPA })
	for i := 1; i < len(byGPA); i++ {
		p, s := byGPA[i-1], byGPA[i]
		if p.GPA+uint64(len(p.Mem)) > s.GPA {
			return nil, fmt.Errorf("kvm: slot %d [%#x,%#x) overlaps slot %d at %#x: %w",
				p.ID, p.GPA, p.GPA+uint64(len(p.Mem)), s.ID, s.GPA, ErrBadInput)
		}
	}
	return l, nil
}

func checkSlot(s Slot) error {
	switch {
	case len(s.Mem) == 0 || len(s.Mem)%PageSize != 0:
		return fmt.Errorf("kvm: slot %d: memory of %d bytes is not a non-zero multiple of %d: %w",
			s.ID, len(s.Mem), PageSize, ErrBadInput)
	case s.GPA%PageSize != 0:
		return fmt.Errorf("kvm: slot %d: GPA %#x not page-aligned: %w", s.ID, s.GPA, ErrBadInput)
	case s.GPA+uint64(len(s.Mem)) < s.GPA:
		return fmt.Errorf("kvm: slot %d: GPA %#x + %d wraps: %w", s.ID, s.GPA, len(s.Mem), ErrBadInput)
	case uintptr(addrOf(s.Mem))%PageSize != 0:
		return fmt.Errorf("kvm: slot %d: host memory at %#x not page-aligned: %w", s.ID, addrOf(s.Mem), ErrBadInput)
	}
	return nil
}

// Slots returns a copy of the slots in layout order.
func (l *Layout) Slots() []Slot { return append([]Slot(nil), l.slots...) }

// PageSize returns PageSize.
func (l *Layout) PageSize() int { return PageSize }

// PageCount returns the number of pages of all slots.
func (l *Layout) PageCount() uint64 { return l.pages }

func (l *Layout) index(id uint32) int {
	for i := range l.slots {
		if l.slots[i].ID == id {
			return i
		}
	}
	return -1
}

// Base returns the livemig number of slot id's first page, and false if
// the layout has no such slot.
func (l *Layout) Base(id uint32) (uint64, bool) {
	i := l.index(id)
	if i < 0 {
		return 0, false
	}
	return l.base[i], true
}

// Page returns the livemig number of page offset of slot id. An unknown
// slot or an offset past the slot's end is an error wrapping
// livemig.ErrPageRange.
func (l *Layout) Page(id uint32, offset uint64) (uint64, error) {
	i := l.index(id)
	if i < 0 || offset >= l.slots[i].Pages() {
		return 0, fmt.Errorf("kvm: slot %d page %d not in the layout: %w", id, offset, livemig.ErrPageRange)
	}
	return l.base[i] + offset, nil
}

// Slot returns the slot and the page offset within it of livemig page n;
// n >= PageCount() is an error wrapping livemig.ErrPageRange.
func (l *Layout) Slot(n uint64) (id uint32, offset uint64, err error) {
	i, err := l.find(n)
	if err != nil {
		return 0, 0, err
	}
	return l.slots[i].ID, n - l.base[i], nil
}

func (l *Layout) find(n uint64) (int, error) {
	if n >= l.pages {
		return 0, &livemig.PageError{Op: "kvm: locate", Page: n, Err: livemig.ErrPageRange}
	}
	// The last slot whose base is <= n.
	i := sort.Search(len(l.base), func(i int) bool { return l.base[i] > n }) - 1
	return i, nil
}

// PageOfGPA returns the livemig number of the page holding gpa, and an
// error wrapping livemig.ErrPageRange if no slot holds it (a hole).
func (l *Layout) PageOfGPA(gpa uint64) (uint64, error) {
	for i, s := range l.slots {
		if gpa >= s.GPA && gpa-s.GPA < uint64(len(s.Mem)) {
			return l.base[i] + (gpa-s.GPA)/PageSize, nil
		}
	}
	return 0, fmt.Errorf("kvm: GPA %#x is in no slot: %w", gpa, livemig.ErrPageRange)
}

// GPA returns the host bytes of [gpa, gpa+n), which must lie inside one
// slot; otherwise an error wrapping livemig.ErrPageRange. The slice
// aliases guest memory.
func (l *Layout) GPA(gpa uint64, n int) ([]byte, error) {
	for _, s := range l.slots {
		if gpa >= s.GPA && n >= 0 && gpa-s.GPA <= uint64(len(s.Mem)) && uint64(n) <= uint64(len(s.Mem))-(gpa-s.GPA) {
			off := gpa - s.GPA
			return s.Mem[off : off+uint64(n) : off+uint64(n)], nil
		}
	}
	return nil, fmt.Errorf("kvm: GPA range [%#x,+%d) is not inside one slot: %w", gpa, n, livemig.ErrPageRange)
}

// View returns the host bytes of livemig page n (aliasing guest memory,
// which the guest may write at any time; see livemig.PageView).
func (l *Layout) View(n uint64) ([]byte, error) {
	i, err := l.find(n)
	if err != nil {
		return nil, err
	}
	off := (n - l.base[i]) * PageSize
	return l.slots[i].Mem[off : off+PageSize : off+PageSize], nil
}

// ReadPage copies livemig page n into dst, which must be PageSize bytes.
func (l *Layout) ReadPage(n uint64, dst []byte) error {
	if len(dst) != PageSize {
		return &livemig.PageError{Op: "kvm: read", Page: n,
			Err: fmt.Errorf("buffer of %d bytes, need %d: %w", len(dst), PageSize, ErrBadInput)}
	}
	v, err := l.View(n)
	if err != nil {
		return err
	}
	copy(dst, v)
	return nil
}

// Package vmstate is the CPU state of a KVM guest as examples/kvm migrates
// it: a versioned, self-describing byte format that a livemig.VM's SaveState
// produces and its LoadState reads.
//
// # Format
//
// All integers are little-endian.
//
//	magic   "LMKS"                      4 bytes
//	version u16 (Version)               2 bytes
//	flags   u16 (0)                     2 bytes
//	section*                            tag u16, length u32, body
//	end     tag 0, length 0
//	crc     u32 CRC32C (Castagnoli) of every byte before it
//
// A section is a tag, the length of its body and the body. A reader skips a
// section whose tag it does not know (a later version's addition), refuses a
// known tag whose body has the wrong length, a tag that appears twice, and
// a state without the required sections (Regs, Sregs, Layout). The known
// sections:
//
//	TagRegs   (1)  kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags, 18 × u64
//	TagSregs  (2)  kvm_sregs: 8 segments (cs ds es fs gs ss tr ldt; each u64 base,
//	               u32 limit, u16 selector, 9 × u8 type present dpl db s l g avl
//	               unusable, u8 pad), gdt and idt (u64 base, u16 limit, 3 × u16 pad),
//	               cr0 cr2 cr3 cr4 cr8 efer apic_base (u64 each), interrupt_bitmap 4 × u64:
//	               312 bytes, the kernel struct's layout
//	TagFPU    (3)  kvm_fpu, 416 bytes as the kernel lays it out (opaque here)
//	TagXSave  (4)  an XSAVE area (kvm_xsave), 1 to MaxXSave bytes (opaque here)
//	TagMSRs   (5)  u32 count, u32 pad, count × (u32 index, u32 pad, u64 value)
//	TagLayout (6)  u32 count, u32 pad, count × (u32 slot, u32 flags, u64 gpa, u64 size):
//	               the guest's memory slots, which the destination must match
//	TagGuest  (7)  the guest program's facts: u64 pause wall time (Unix ns),
//	               u64 counter at the pause, u64 batches, u64 seed
//
// Decode never panics, and allocates at most a small multiple of its input,
// which it refuses beyond MaxSize. Its errors are *livemig.StreamError values
// wrapping livemig.ErrCorrupt (livemig.ErrVersion for another version), with
// the offset of the bad item.
package vmstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/livemig/livemig"
)

// Version is the format version Encode writes and Decode reads.
const Version = 1

// Magic starts every state.
const Magic = "LMKS"

// Limits of the format.
const (
	MaxSize   = 1 << 20 // a whole state
	MaxXSave  = 1 << 16 // an XSAVE area (kvm_xsave2 may exceed 4 KiB)
	MaxMSRs   = 1024
	MaxSlots  = 512
	headerLen = 8
	secHdrLen = 6
	crcLen    = 4
)

// Section tags.
const (
	TagEnd    uint16 = 0
	TagRegs   uint16 = 1
	TagSregs  uint16 = 2
	TagFPU    uint16 = 3
	TagXSave  uint16 = 4
	TagMSRs   uint16 = 5
	TagLayout uint16 = 6
	TagGuest  uint16 = 7
)

// Fixed section sizes.
const (
	RegsSize    = 18 * 8
	SregsSize   = 312
	FPUSize     = 416
	GuestSize   = 4 * 8
	segmentSize = 24
	dtableSize  = 16
)

// Regs are the general registers (struct kvm_regs).
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is a segment register (struct kvm_segment).
type Segment struct {
	Base                                      uint64
	Limit                                     uint32
	Selector                                  uint16
	Type, Present, DPL, DB, S, L, G, AVL, Unu uint8
}

// DTable is a descriptor table register (struct kvm_dtable).
type DTable struct {
	Base  uint64
	Limit uint16
}

// Sregs are the special registers (struct kvm_sregs).
type Sregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT Segment
	GDT, IDT                        DTable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER, APICBase                  uint64
	InterruptBitmap                 [4]uint64
}

// MSR is one model-specific register.
type MSR struct {
	Index uint32
	Value uint64
}

// Slot is one memory slot of the guest: GPA and size in bytes.
type Slot struct {
	Slot  uint32
	Flags uint32
	GPA   uint64
	Size  uint64
}

// Guest holds the guest program's facts at the pause.
type Guest struct {
	PausedUnixNano int64  // the source's wall clock at the pause
	Counter        uint64 // the guest's counter at the pause
	Batches        uint64 // batches the source host saw complete
	Seed           uint64 // the guest's parameter
}

// State is one vCPU's state and the guest's facts. FPU and XSave are the
// kernel's structs as bytes; nil when absent.
type State struct {
	Regs   Regs
	Sregs  Sregs
	FPU    []byte // FPUSize bytes, or nil
	XSave  []byte // 1..MaxXSave bytes, or nil
	MSRs   []MSR
	Layout []Slot
	Guest  *Guest // nil when absent
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Append appends s, encoded, to dst and returns the extended slice. It
// fails on a state it could not decode again: FPU or XSave of a bad size,
// too many MSRs or slots.
func Append(dst []byte, s *State) ([]byte, error) {
	switch {
	case s.FPU != nil && len(s.FPU) != FPUSize:
		return dst, fmt.Errorf("vmstate: FPU is %d bytes, want %d", len(s.FPU), FPUSize)
	case s.XSave != nil && (len(s.XSave) == 0 || len(s.XSave) > MaxXSave):
		return dst, fmt.Errorf("vmstate: XSAVE area is %d bytes, want 1..%d", len(s.XSave), MaxXSave)
	case len(s.MSRs) > MaxMSRs:
		return dst, fmt.Errorf("vmstate: %d MSRs, at most %d", len(s.MSRs), MaxMSRs)
	case len(s.Layout) > MaxSlots:
		return dst, fmt.Errorf("vmstate: %d slots, at most %d", len(s.Layout), MaxSlots)
	}
	start := len(dst)
	dst = append(dst, Magic...)
	dst = binary.LittleEndian.AppendUint16(dst, Version)
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	dst = section(dst, TagRegs, func(b []byte) []byte { return appendRegs(b, &s.Regs) })
	dst = section(dst, TagSregs, func(b []byte) []byte { return appendSregs(b, &s.Sregs) })
	if s.FPU != nil {
		dst = section(dst, TagFPU, func(b []byte) []byte { return append(b, s.FPU...) })
	}
	if s.XSave != nil {
		dst = section(dst, TagXSave, func(b []byte) []byte { return append(b, s.XSave...) })
	}
	if s.MSRs != nil {
		dst = section(dst, TagMSRs, func(b []byte) []byte { return appendMSRs(b, s.MSRs) })
	}
	dst = section(dst, TagLayout, func(b []byte) []byte { return appendLayout(b, s.Layout) })
	if g := s.Guest; g != nil {
		dst = section(dst, TagGuest, func(b []byte) []byte {
			for _, v := range []uint64{uint64(g.PausedUnixNano), g.Counter, g.Batches, g.Seed} {
				b = binary.LittleEndian.AppendUint64(b, v)
			}
			return b
		})
	}
	dst = section(dst, TagEnd, func(b []byte) []byte { return b })
	if len(dst)-start+crcLen > MaxSize {
		return dst[:start], fmt.Errorf("vmstate: state of %d bytes, at most %d", len(dst)-start+crcLen, MaxSize)
	}
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

// section appends a section of tag whose body body appends.
func section(dst []byte, tag uint16, body func([]byte) []byte) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, tag)
	at := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = body(dst)
	binary.LittleEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	return dst
}

func (r *Regs) words() []*uint64 {
	return []*uint64{&r.RAX, &r.RBX, &r.RCX, &r.RDX, &r.RSI, &r.RDI, &r.RSP, &r.RBP,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15, &r.RIP, &r.RFLAGS}
}

func appendRegs(b []byte, r *Regs) []byte {
	for _, p := range r.words() {
		b = binary.LittleEndian.AppendUint64(b, *p)
	}
	return b
}

func (s *Sregs) segments() []*Segment {
	return []*Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS, &s.TR, &s.LDT}
}

func (s *Sregs) control() []*uint64 {
	return []*uint64{&s.CR0, &s.CR2, &s.CR3, &s.CR4, &s.CR8, &s.EFER, &s.APICBase}
}

func appendSregs(b []byte, s *Sregs) []byte {
	le := binary.LittleEndian
	for _, g := range s.segments() {
		b = le.AppendUint64(b, g.Base)
		b = le.AppendUint32(b, g.Limit)
		b = le.AppendUint16(b, g.Selector)
		b = append(b, g.Type, g.Present, g.DPL, g.DB, g.S, g.L, g.G, g.AVL, g.Unu, 0)
	}
	for _, d := range []DTable{s.GDT, s.IDT} {
		b = le.AppendUint64(b, d.Base)
		b = le.AppendUint16(b, d.Limit)
		b = append(b, 0, 0, 0, 0, 0, 0)
	}
	for _, p := range s.control() {
		b = le.AppendUint64(b, *p)
	}
	for _, w := range s.InterruptBitmap {
		b = le.AppendUint64(b, w)
	}
	return b
}

func appendMSRs(b []byte, msrs []MSR) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(msrs)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, m := range msrs {
		b = binary.LittleEndian.AppendUint32(b, m.Index)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint64(b, m.Value)
	}
	return b
}

func appendLayout(b []byte, slots []Slot) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(slots)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, s := range slots {
		b = binary.LittleEndian.AppendUint32(b, s.Slot)
		b = binary.LittleEndian.AppendUint32(b, s.Flags)
		b = binary.LittleEndian.AppendUint64(b, s.GPA)
		b = binary.LittleEndian.AppendUint64(b, s.Size)
	}
	return b
}

// errAt is a corrupt-state error at offset off.
func errAt(off int, what string, err error) error {
	return &livemig.StreamError{Offset: int64(off), What: "vmstate: " + what, Err: err}
}

// ErrMissing marks a state without a required section (it wraps
// livemig.ErrCorrupt too).
var ErrMissing = errors.New("vmstate: required section missing")

// Decode reads a state. It checks the whole input (magic, version, CRC,
// every section's length) before it decodes a section, and keeps no
// reference to b.
func Decode(b []byte) (*State, error) {
	if len(b) > MaxSize {
		return nil, errAt(0, "state", fmt.Errorf("%d bytes, at most %d: %w", len(b), MaxSize, livemig.ErrCorrupt))
	}
	if len(b) < headerLen+secHdrLen+crcLen {
		return nil, errAt(0, "state", fmt.Errorf("%d bytes, too short: %w", len(b), livemig.ErrCorrupt))
	}
	if string(b[:4]) != Magic {
		return nil, errAt(0, "magic", fmt.Errorf("%q, want %q: %w", b[:4], Magic, livemig.ErrCorrupt))
	}
	le := binary.LittleEndian
	if v := le.Uint16(b[4:]); v != Version {
		return nil, errAt(4, "version", fmt.Errorf("version %d, this reader knows %d: %w", v, Version, livemig.ErrVersion))
	}
	if f := le.Uint16(b[6:]); f != 0 {
		return nil, errAt(6, "flags", fmt.Errorf("unknown flags %#x: %w", f, livemig.ErrCorrupt))
	}
	body := len(b) - crcLen
	if got, want := crc32.Checksum(b[:body], castagnoli), le.Uint32(b[body:]); got != want {
		return nil, errAt(body, "checksum", fmt.Errorf("CRC32C %#08x, computed %#08x: %w", want, got, livemig.ErrCorrupt))
	}
	s := new(State)
	seen := map[uint16]bool{}
	off := headerLen
	for {
		if off+secHdrLen > body {
			return nil, errAt(off, "section header", fmt.Errorf("truncated, no end section: %w", livemig.ErrCorrupt))
		}
		tag, n := le.Uint16(b[off:]), le.Uint32(b[off+2:])
		start := off + secHdrLen
		if uint64(n) > uint64(body-start) {
			return nil, errAt(off, fmt.Sprintf("section %d", tag), fmt.Errorf("length %d past the end (%d left): %w", n, body-start, livemig.ErrCorrupt))
		}
		sec := b[start : start+int(n)]
		if tag == TagEnd {
			if n != 0 || start != body {
				return nil, errAt(off, "end section", fmt.Errorf("length %d, %d bytes after it: %w", n, body-start-int(n), livemig.ErrCorrupt))
			}
			break
		}
		if seen[tag] {
			return nil, errAt(off, fmt.Sprintf("section %d", tag), fmt.Errorf("appears twice: %w", livemig.ErrCorrupt))
		}
		seen[tag] = true
		if err := s.decodeSection(tag, sec); err != nil {
			return nil, errAt(off, fmt.Sprintf("section %d", tag), err)
		}
		off = start + int(n)
	}
	for _, t := range []uint16{TagRegs, TagSregs, TagLayout} {
		if !seen[t] {
			return nil, errAt(off, fmt.Sprintf("section %d", t), fmt.Errorf("%w: %w", ErrMissing, livemig.ErrCorrupt))
		}
	}
	return s, nil
}

// decodeSection decodes one known section into s; an unknown tag is skipped.
func (s *State) decodeSection(tag uint16, b []byte) error {
	fixed := func(want int) error {
		if len(b) != want {
			return fmt.Errorf("%d bytes, want %d: %w", len(b), want, livemig.ErrCorrupt)
		}
		return nil
	}
	le := binary.LittleEndian
	switch tag {
	case TagRegs:
		if err := fixed(RegsSize); err != nil {
			return err
		}
		for i, p := range s.Regs.words() {
			*p = le.Uint64(b[8*i:])
		}
	case TagSregs:
		if err := fixed(SregsSize); err != nil {
			return err
		}
		decodeSregs(&s.Sregs, b)
	case TagFPU:
		if err := fixed(FPUSize); err != nil {
			return err
		}
		s.FPU = append([]byte(nil), b...)
	case TagXSave:
		if len(b) == 0 || len(b) > MaxXSave {
			return fmt.Errorf("%d bytes, want 1..%d: %w", len(b), MaxXSave, livemig.ErrCorrupt)
		}
		s.XSave = append([]byte(nil), b...)
	case TagMSRs:
		return s.decodeMSRs(b)
	case TagLayout:
		return s.decodeLayout(b)
	case TagGuest:
		if err := fixed(GuestSize); err != nil {
			return err
		}
		s.Guest = &Guest{PausedUnixNano: int64(le.Uint64(b)), Counter: le.Uint64(b[8:]),
			Batches: le.Uint64(b[16:]), Seed: le.Uint64(b[24:])}
	}
	return nil
}

func decodeSregs(s *Sregs, b []byte) {
	le := binary.LittleEndian
	for i, g := range s.segments() {
		p := b[i*segmentSize:]
		*g = Segment{Base: le.Uint64(p), Limit: le.Uint32(p[8:]), Selector: le.Uint16(p[12:]),
			Type: p[14], Present: p[15], DPL: p[16], DB: p[17], S: p[18], L: p[19], G: p[20], AVL: p[21], Unu: p[22]}
	}
	p := b[8*segmentSize:]
	s.GDT = DTable{Base: le.Uint64(p), Limit: le.Uint16(p[8:])}
	s.IDT = DTable{Base: le.Uint64(p[dtableSize:]), Limit: le.Uint16(p[dtableSize+8:])}
	p = p[2*dtableSize:]
	for i, c := range s.control() {
		*c = le.Uint64(p[8*i:])
	}
	p = p[7*8:]
	for i := range s.InterruptBitmap {
		s.InterruptBitmap[i] = le.Uint64(p[8*i:])
	}
}

// counted checks a section of a u32 count, a u32 pad and count entries of
// size bytes, at most limit of them, and returns the count.
func counted(b []byte, size, limit int, what string) (int, error) {
	if len(b) < 8 {
		return 0, fmt.Errorf("%d bytes, no %s count: %w", len(b), what, livemig.ErrCorrupt)
	}
	n := binary.LittleEndian.Uint32(b)
	if n > uint32(limit) {
		return 0, fmt.Errorf("%d %s, at most %d: %w", n, what, limit, livemig.ErrCorrupt)
	}
	if want := 8 + int(n)*size; len(b) != want {
		return 0, fmt.Errorf("%d bytes for %d %s, want %d: %w", len(b), n, what, want, livemig.ErrCorrupt)
	}
	return int(n), nil
}

func (s *State) decodeMSRs(b []byte) error {
	n, err := counted(b, 16, MaxMSRs, "MSRs")
	if err != nil {
		return err
	}
	s.MSRs = make([]MSR, n)
	for i := range s.MSRs {
		p := b[8+16*i:]
		s.MSRs[i] = MSR{Index: binary.LittleEndian.Uint32(p), Value: binary.LittleEndian.Uint64(p[8:])}
	}
	return nil
}

func (s *State) decodeLayout(b []byte) error {
	n, err := counted(b, 24, MaxSlots, "slots")
	if err != nil {
		return err
	}
	s.Layout = make([]Slot, n)
	le := binary.LittleEndian
	for i := range s.Layout {
		p := b[8+24*i:]
		s.Layout[i] = Slot{Slot: le.Uint32(p), Flags: le.Uint32(p[4:]), GPA: le.Uint64(p[8:]), Size: le.Uint64(p[16:])}
	}
	return nil
}

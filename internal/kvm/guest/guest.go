// Package guest is livemig's tiny KVM test guest (guest.S, assembled into
// the embedded guest.bin) and the host-side helpers to drive it: load it
// with its parameters, read its counter, verify its checksum, and predict
// exactly which pages it writes.
//
// The guest runs in 32-bit flat protected mode without paging, entered
// directly through SREGS (no BIOS): Sregs and Regs give the entry state.
// Its parameter block sits at ParamsGPA, its code at CodeGPA, both in the
// first slot; its data region is two ranges A and B of whole pages,
// normally in two slots with a hole between them. Each batch writes
// PerBatch pages of the region (one dword each), updates an additive
// checksum of the whole region incrementally, increments a counter and,
// unless NoExit, reports the new counter with `out` on Port, so the host
// regains control after every batch.
package guest

import (
	_ "embed"
	"encoding/binary"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/kvm"
)

//go:embed guest.bin
var code []byte

// Fixed guest-physical addresses and the I/O port.
const (
	ParamsGPA = 0x1000 // the parameter and state block (one page)
	CodeGPA   = 0x2000 // the code (one page)
	// FirstDataGPA is the lowest GPA a data range may start at.
	FirstDataGPA = 0x3000
	// Port is the I/O port the guest writes its counter to after a batch
	// (a 4-byte OUT).
	Port = 0x10
)

// Offsets of the parameter block's u32 fields (as in guest.S).
const (
	offMagic    = 0
	offBaseA    = 4
	offPagesA   = 8
	offBaseB    = 12
	offPagesB   = 16
	offPerBatch = 20
	offPattern  = 24
	offSeed     = 28
	offHot      = 32
	offMaxB     = 36
	offFlags    = 40
	offCounter  = 64
	offChecksum = 68
	offCursor   = 72
	offRNG      = 76
	magic       = 0x31474d4c // "LMG1"
	flagNoExit  = 1
)

// Pattern is how the guest picks the pages of a batch.
type Pattern uint32

const (
	// Sequential walks the region page after page, wrapping around.
	Sequential Pattern = 0
	// Random picks pages uniformly with the LCG x' = x*1103515245 + 12345
	// (page = (x' >> 8) mod pages), from Seed.
	Random Pattern = 1
	// Hot picks like Random among the region's first Hot pages.
	Hot Pattern = 2
)

// Range is a run of whole pages at a GPA.
type Range struct {
	GPA   uint64
	Pages uint32
}

// Params configure the guest. The data region is A followed by B (logical
// page p is A's page p if p < A.Pages, else B's page p - A.Pages).
type Params struct {
	A, B       Range
	PerBatch   uint32 // pages written per batch
	Pattern    Pattern
	Seed       uint32 // LCG seed for Random and Hot
	Hot        uint32 // size of the hot set for Hot
	MaxBatches uint32 // halt after this many batches; 0: never
	NoExit     bool   // no OUT after a batch: the guest runs without exits
}

// Code returns the guest's code (a copy).
func Code() []byte { return append([]byte(nil), code...) }

// Pages returns the region's page count.
func (p Params) Pages() uint32 { return p.A.Pages + p.B.Pages }

func (p Params) validate(l *kvm.Layout) error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("guest: "+f+": %w", append(a, kvm.ErrBadInput)...)
	}
	switch {
	case p.Pages() == 0 || p.Pages() < p.A.Pages:
		return bad("empty or oversized data region (%d + %d pages)", p.A.Pages, p.B.Pages)
	case p.Pattern > Hot:
		return bad("unknown pattern %d", p.Pattern)
	case p.Pattern == Hot && (p.Hot == 0 || p.Hot > p.Pages()):
		return bad("hot set of %d pages in a region of %d", p.Hot, p.Pages())
	}
	for _, r := range []Range{p.A, p.B} {
		if r.Pages == 0 {
			continue
		}
		end := r.GPA + uint64(r.Pages)*kvm.PageSize
		if r.GPA%kvm.PageSize != 0 || r.GPA < FirstDataGPA || end > 1<<32 {
			return bad("data range [%#x,%#x) not page-aligned, below %#x or above 4 GiB", r.GPA, end, FirstDataGPA)
		}
		if _, err := l.GPA(r.GPA, int(end-r.GPA)); err != nil {
			return bad("data range [%#x,%#x) not inside one slot", r.GPA, end)
		}
	}
	if p.A.Pages > 0 && p.B.Pages > 0 {
		a0, a1 := p.A.GPA, p.A.GPA+uint64(p.A.Pages)*kvm.PageSize
		b0, b1 := p.B.GPA, p.B.GPA+uint64(p.B.Pages)*kvm.PageSize
		if a0 < b1 && b0 < a1 {
			return bad("data ranges overlap")
		}
	}
	return nil
}

// Load writes the code at CodeGPA and the parameter block at ParamsGPA of
// l's memory (which must map both), with the guest's state initialised:
// counter 0, cursor 0, LCG state Seed, and the checksum of the data region
// as it is now. Call it before the vCPU first runs.
func Load(l *kvm.Layout, p Params) error {
	if err := p.validate(l); err != nil {
		return err
	}
	c, err := l.GPA(CodeGPA, len(code))
	if err != nil {
		return fmt.Errorf("guest: code page: %w", err)
	}
	b, err := l.GPA(ParamsGPA, kvm.PageSize)
	if err != nil {
		return fmt.Errorf("guest: parameter page: %w", err)
	}
	copy(c, code)
	clear(b)
	le := binary.LittleEndian
	for off, v := range map[int]uint32{
		offMagic: magic, offBaseA: uint32(p.A.GPA), offPagesA: p.A.Pages,
		offBaseB: uint32(p.B.GPA), offPagesB: p.B.Pages, offPerBatch: p.PerBatch,
		offPattern: uint32(p.Pattern), offSeed: p.Seed, offHot: p.Hot,
		offMaxB: p.MaxBatches, offRNG: p.Seed,
	} {
		le.PutUint32(b[off:], v)
	}
	if p.NoExit {
		le.PutUint32(b[offFlags:], flagNoExit)
	}
	sum, err := regionSum(l, p)
	if err != nil {
		return err
	}
	le.PutUint32(b[offChecksum:], sum)
	return nil
}

func word(l *kvm.Layout, off uint64) (uint32, error) {
	b, err := l.GPA(ParamsGPA+off, 4)
	if err != nil {
		return 0, fmt.Errorf("guest: parameter page: %w", err)
	}
	return binary.LittleEndian.Uint32(b), nil
}

// Counter returns the number of batches the guest has finished.
func Counter(l *kvm.Layout) (uint32, error) { return word(l, offCounter) }

// regionSum returns the sum of the data region's dwords, mod 2^32.
func regionSum(l *kvm.Layout, p Params) (uint32, error) {
	var sum uint32
	for _, r := range []Range{p.A, p.B} {
		if r.Pages == 0 {
			continue
		}
		b, err := l.GPA(r.GPA, int(r.Pages)*kvm.PageSize)
		if err != nil {
			return 0, fmt.Errorf("guest: data range: %w", err)
		}
		for i := 0; i+4 <= len(b); i += 4 {
			sum += binary.LittleEndian.Uint32(b[i:])
		}
	}
	return sum, nil
}

// Verify recomputes the checksum of the data region from host memory and
// compares it with the one the guest stored. Call it while the vCPU is out
// of KVM_RUN (between batches the guest's stores are complete). A
// mismatch is an error wrapping livemig.ErrCorrupt.
func Verify(l *kvm.Layout, p Params) error {
	stored, err := word(l, offChecksum)
	if err != nil {
		return err
	}
	sum, err := regionSum(l, p)
	if err != nil {
		return err
	}
	if sum != stored {
		return fmt.Errorf("guest: data region sums to %#x, guest's checksum is %#x: %w", sum, stored, livemig.ErrCorrupt)
	}
	return nil
}

// Model replays the guest's choice of pages on the host, so that tests
// know exactly which pages a run of batches writes.
type Model struct {
	p      Params
	cursor uint32
	rng    uint32
}

// NewModel returns a model of a guest just loaded with p.
func NewModel(p Params) *Model { return &Model{p: p, rng: p.Seed} }

// Next returns the logical pages of the next batch (with repeats if the
// pattern repeats), appended to dst.
func (m *Model) Next(dst []uint32) []uint32 {
	n := m.p.Pages()
	for range m.p.PerBatch {
		var pg uint32
		switch m.p.Pattern {
		case Sequential:
			pg = m.cursor
			if m.cursor++; m.cursor >= n {
				m.cursor = 0
			}
		case Random, Hot:
			m.rng = m.rng*1103515245 + 12345
			mod := n
			if m.p.Pattern == Hot {
				mod = m.p.Hot
			}
			pg = (m.rng >> 8) % mod
		}
		dst = append(dst, pg)
	}
	return dst
}

// GPA returns the guest-physical address of logical page pg.
func (p Params) GPA(pg uint32) uint64 {
	if pg < p.A.Pages {
		return p.A.GPA + uint64(pg)*kvm.PageSize
	}
	return p.B.GPA + uint64(pg-p.A.Pages)*kvm.PageSize
}

// Expected ORs into dst (livemig numbering of l) the pages that batches
// more batches of m write: the data pages and, if batches > 0, the
// parameter page (counter and checksum).
func (m *Model) Expected(l *kvm.Layout, batches int, dst []uint64) error {
	var pages []uint32
	for range batches {
		pages = m.Next(pages[:0])
		for _, pg := range pages {
			n, err := l.PageOfGPA(m.p.GPA(pg))
			if err != nil {
				return err
			}
			dst[n/64] |= 1 << (n % 64)
		}
	}
	if batches > 0 {
		n, err := l.PageOfGPA(ParamsGPA)
		if err != nil {
			return err
		}
		dst[n/64] |= 1 << (n % 64)
	}
	return nil
}

// Sregs returns s with the guest's entry state: protected mode (CR0.PE),
// no paging, flat 4 GiB 32-bit code (selector 8) and data (selector 16)
// segments, EFER 0. Start from the vCPU's own Sregs so the rest is KVM's.
func Sregs(s kvm.Sregs) kvm.Sregs {
	code := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 8, Type: 0xb, Present: 1, DB: 1, S: 1, G: 1}
	data := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 16, Type: 0x3, Present: 1, DB: 1, S: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.CR0 = 0x11 // PE | ET
	s.CR3, s.CR4, s.EFER = 0, 0, 0
	return s
}

// Regs returns the guest's entry registers: RIP at CodeGPA, RFLAGS 2.
func Regs() kvm.Regs { return kvm.Regs{RIP: CodeGPA, RFLAGS: 2} }

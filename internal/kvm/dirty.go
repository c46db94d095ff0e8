package kvm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/livemig/livemig"
)

// DefaultClearChunkPages is the chunk ManualLog clears with one
// KVM_CLEAR_DIRTY_LOG when StartManualLog is given 0: 4096 pages, 16 MiB
// of guest memory and 512 bytes of bitmap. A chunk with no dirty page is
// skipped, so the cost of a sync follows the number of dirty chunks
// rather than the guest's size.
const DefaultClearChunkPages = 4096

// orShifted ORs the first n bits of src (a bitmap in KVM's layout) into dst
// starting at bit base: bit i of src becomes bit base+i of dst. Bits of src
// at or past n are ignored. dst must hold livemig.WordsFor(base+n) words.
// Zero words of src cost one load and one branch.
func orShifted(dst, src []uint64, base, n uint64) {
	words := min(livemig.WordsFor(n), len(src))
	if words == 0 {
		return
	}
	last := src[words-1]
	if n%64 != 0 && uint64(words)*64 > n {
		last &= 1<<(n%64) - 1
	}
	body := src[:words-1]
	k, s := int(base/64), base%64
	if s == 0 {
		d := dst[k : k+words]
		for i, w := range body {
			if w != 0 {
				d[i] |= w
			}
		}
		d[words-1] |= last
		return
	}
	// The bits of body land in dst[k : k+words]; last's high part may
	// reach dst[k+words], which exists only if it holds some of them.
	d := dst[k : k+words]
	for i, w := range body {
		if w != 0 {
			d[i] |= w << s
			d[i+1] |= w >> (64 - s)
		}
	}
	d[words-1] |= last << s
	if hi := last >> (64 - s); hi != 0 {
		dst[k+words] |= hi
	}
}

// checkDst checks that dst can hold a bitmap of pages pages.
func checkDst(dst []uint64, pages uint64) error {
	if need := livemig.WordsFor(pages); len(dst) < need {
		return fmt.Errorf("kvm: dirty bitmap of %d words for %d pages, need %d: %w",
			len(dst), pages, need, ErrBadInput)
	}
	return nil
}

// ring is one vCPU's dirty ring: count entries of struct kvm_dirty_gfn
// (u32 flags, u32 slot = as<<16 | id, u64 offset), shared with KVM in mem
// (an mmap of the vCPU fd at page 0x40, or a plain buffer in tests). next
// is the index of the next entry to harvest; it only grows (the ring
// position is next % count). The VM's ring lock guards next.
type ring struct {
	mem   []byte
	count uint32
	next  uint32
}

// flags returns the address of entry i's flags word.
func (r *ring) flags(i uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[int(i%r.count)*ringEntrySize]))
}

// harvest collects the ring's dirty entries strictly in order, starting at
// r.next: it loads each entry's flags with acquire semantics (sync/atomic),
// stops at the first that is not exactly DIRTY, passes (slot, offset) to
// p.mark (unless p is nil: the pages are dropped), and hands the entry back with a release store of RESET. It
// returns how many entries it collected. KVM re-protects the pages and
// recycles the entries at the next KVM_RESET_DIRTY_RINGS.
func (r *ring) harvest(p *pending) int {
	n := 0
	for ; n < int(r.count); n++ {
		f := r.flags(r.next)
		if atomic.LoadUint32(f) != dirtyGFNFlagDirty {
			break
		}
		e := r.mem[int(r.next%r.count)*ringEntrySize:]
		slot := *(*uint32)(unsafe.Pointer(&e[4]))
		off := *(*uint64)(unsafe.Pointer(&e[8]))
		if p != nil {
			p.mark(slot, off)
		}
		atomic.StoreUint32(f, dirtyGFNFlagReset)
		r.next++
	}
	return n
}

// pending holds pages harvested from dirty rings and not yet handed to a
// SyncDirty: one bitmap per slot of the layout, in the slot's own page
// numbering. Its user serialises access (the VM's ring lock).
type pending struct {
	layout *Layout
	words  [][]uint64 // per layout slot
	bad    error      // the first entry outside the layout
	last   int        // index of the slot of the previous entry
}

func newPending(l *Layout) *pending {
	p := &pending{layout: l, words: make([][]uint64, len(l.slots))}
	for i, s := range l.slots {
		p.words[i] = make([]uint64, livemig.WordsFor(s.Pages()))
	}
	return p
}

// mark records page offset of slot (as<<16 | id). Entries of another
// address space, of a slot outside the layout, or past a slot's end are
// kept as an error that the next drain returns.
func (p *pending) mark(slot uint32, offset uint64) {
	i := p.last
	if i >= len(p.layout.slots) || p.layout.slots[i].ID != slot {
		i = -1
		if slot>>16 == 0 {
			i = p.layout.index(slot)
		}
	}
	if i < 0 || offset >= p.layout.slots[i].Pages() {
		if p.bad == nil {
			p.bad = fmt.Errorf("kvm: dirty ring entry for slot %#x page %d, outside the layout: %w",
				slot, offset, livemig.ErrCorrupt)
		}
		return
	}
	p.last = i
	p.words[i][offset/64] |= 1 << (offset % 64)
}

// drain ORs every pending page into dst (livemig numbering) and forgets
// them. It returns the first bad entry seen since the last drain, if any.
func (p *pending) drain(dst []uint64) error {
	for i, w := range p.words {
		orShifted(dst, w, p.layout.base[i], p.layout.slots[i].Pages())
		clear(w)
	}
	err := p.bad
	p.bad = nil
	return err
}

package stream

import (
	"fmt"
	"sort"

	"github.com/livemig/livemig"
)

// Layout maps a stream's RAM blocks onto livemig page numbers: the blocks
// are laid end to end in stream order, so block i's page p is page
// Blocks()[i].First + p, and the guest has Pages() pages in all. A Layout is
// immutable and safe for concurrent use.
type Layout struct {
	blocks []Block
	byName map[string]int
	pages  uint64
}

// NewLayout returns the layout of blocks, in that order; it sets each
// block's First. Names must be distinct, 1 to 255 bytes, and sizes
// multiples of PageSize. The blocks slice is copied.
func NewLayout(blocks []Block) (*Layout, error) {
	l := &Layout{blocks: make([]Block, len(blocks)), byName: make(map[string]int, len(blocks))}
	for i, b := range blocks {
		if len(b.Name) == 0 || len(b.Name) > 255 {
			return nil, fmt.Errorf("%w: block name %q: length %d not in 1..255", livemig.ErrCorrupt, b.Name, len(b.Name))
		}
		if b.Size%PageSize != 0 {
			return nil, fmt.Errorf("%w: block %s: size %#x is not a multiple of the page size", livemig.ErrCorrupt, b.Name, b.Size)
		}
		if _, dup := l.byName[b.Name]; dup {
			return nil, fmt.Errorf("%w: block %s listed twice", livemig.ErrCorrupt, b.Name)
		}
		if l.pages+b.Pages() < l.pages {
			return nil, fmt.Errorf("%w: block sizes overflow", livemig.ErrCorrupt)
		}
		b.First = l.pages
		l.pages += b.Pages()
		l.blocks[i] = b
		l.byName[b.Name] = i
	}
	return l, nil
}

// Blocks returns the blocks in stream order. The slice is the Layout's own:
// do not modify it.
func (l *Layout) Blocks() []Block { return l.blocks }

// Pages returns the number of pages of all blocks together.
func (l *Layout) Pages() uint64 { return l.pages }

// Bytes returns the sum of the blocks' sizes: the MEM_SIZE total.
func (l *Layout) Bytes() uint64 { return l.pages * PageSize }

// Index returns the index of the block named name.
func (l *Layout) Index(name string) (int, bool) {
	i, ok := l.byName[name]
	return i, ok
}

// Page returns the livemig page number of the page at offset (in bytes,
// rounded down to a page) in the block named name. An unknown block or an
// offset past its end gives an error wrapping livemig.ErrPageRange.
func (l *Layout) Page(name string, offset uint64) (uint64, error) {
	i, ok := l.byName[name]
	if !ok {
		return 0, fmt.Errorf("%w: unknown RAM block %q", livemig.ErrPageRange, name)
	}
	b := l.blocks[i]
	if offset >= b.Size {
		return 0, fmt.Errorf("%w: offset %#x past the end of block %s (%#x)", livemig.ErrPageRange, offset, name, b.Size)
	}
	return b.First + offset/PageSize, nil
}

// Locate returns the index of the block holding livemig page n and the
// page's offset in bytes in that block, or an error wrapping
// livemig.ErrPageRange for a page past the last block.
func (l *Layout) Locate(n uint64) (block int, offset uint64, err error) {
	if n >= l.pages {
		return 0, 0, fmt.Errorf("%w: page %d of %d", livemig.ErrPageRange, n, l.pages)
	}
	// The first block whose end is past n; zero-sized blocks end where they
	// start and are skipped.
	i := sort.Search(len(l.blocks), func(i int) bool {
		b := l.blocks[i]
		return b.First+b.Pages() > n
	})
	b := l.blocks[i]
	return i, (n - b.First) * PageSize, nil
}

// Equal reports whether l and m list the same blocks (names, sizes and
// addresses) in the same order.
func (l *Layout) Equal(m *Layout) bool {
	if len(l.blocks) != len(m.blocks) {
		return false
	}
	for i := range l.blocks {
		if l.blocks[i] != m.blocks[i] {
			return false
		}
	}
	return true
}

package stream

import (
	"bytes"
	"compress/zlib"
	"fmt"
	"io"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
)

// DefaultMaxImage is ImageConfig.MaxBytes's default: 16 GiB of guest RAM.
const DefaultMaxImage = 16 << 30

// chunkPages pages are allocated together, on the first write to one.
const chunkPages = 64

// ImageConfig configures an Image. The zero value is the default.
type ImageConfig struct {
	// MaxBytes bounds the RAM a stream may declare (the MEM_SIZE total);
	// 0 means DefaultMaxImage. Memory is allocated only for pages a record
	// writes, 256 KiB at a time, so an Image holds at most this much.
	MaxBytes int64
}

// ImageStats counts the page records an Image applied.
type ImageStats struct {
	Zero, Page, XBZRLE, Compressed uint64
	// Unsent counts XBZRLE and compressed records applied to a page that
	// no earlier record had set: QEMU would decode them onto the
	// destination's own initial content (zeros for RAM, the firmware for a
	// ROM), which an Image takes to be zeros.
	Unsent uint64
}

// Image is a guest's RAM as a stream leaves it: Apply each record in order
// and the Image holds every RAM block's contents, what a destination QEMU
// holds after loading the stream. Pages no record set read as zeros. It
// implements livemig.Memory, livemig.PageSink and livemig.PageReader over
// the stream's Layout, so that a tool can hand a QEMU stream's RAM to
// livemig's engines, or fill one from them.
//
// The zero value is ready: the MEM_SIZE record sets the layout. Not safe for
// concurrent use.
type Image struct {
	cfg    ImageConfig
	layout *Layout
	chunks [][]byte
	sent   []uint64
	stats  ImageStats
	zlib   inflater
}

// NewImage returns an empty Image. With a nil layout, the stream's MEM_SIZE
// record sets it.
func NewImage(l *Layout, cfg ImageConfig) (*Image, error) {
	m := &Image{cfg: cfg}
	if l != nil {
		if err := m.setLayout(l); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Image) setLayout(l *Layout) error {
	max := m.cfg.MaxBytes
	if max <= 0 {
		max = DefaultMaxImage
	}
	if l.Bytes() > uint64(max) {
		return fmt.Errorf("%w: %d bytes of RAM declared, more than %d (ImageConfig.MaxBytes)", ErrImageLimit, l.Bytes(), max)
	}
	m.layout = l
	m.chunks = make([][]byte, (l.Pages()+chunkPages-1)/chunkPages)
	m.sent = make([]uint64, livemig.WordsFor(l.Pages()))
	return nil
}

// Layout returns the layout, nil before the first MEM_SIZE record.
func (m *Image) Layout() *Layout { return m.layout }

// Stats returns the counts of records applied.
func (m *Image) Stats() ImageStats { return m.stats }

// Apply applies a record read from the stream: MEM_SIZE sets the layout
// (or must match it), the page records set their page, and the others are
// ignored. An error is a *livemig.StreamError at the record's offset.
func (m *Image) Apply(rec *Record) error {
	switch rec.Kind {
	case KindMemSize:
		l, err := NewLayout(rec.Blocks)
		if err != nil {
			return errAt(rec.Offset, "ram block list", err)
		}
		if m.layout == nil {
			if err := m.setLayout(l); err != nil {
				return errAt(rec.Offset, "ram block list", err)
			}
			return nil
		}
		if !m.layout.Equal(l) {
			return errAt(rec.Offset, "ram block list", fmt.Errorf("%w: a block list that differs from the image's", livemig.ErrNotSupported))
		}
		return nil
	case KindZero, KindPage, KindXBZRLE, KindCompressed:
	default:
		return nil
	}
	if m.layout == nil {
		return corrupt(rec.Offset, "ram record", "page record before the block list")
	}
	n := rec.Page
	if n >= m.layout.Pages() {
		return errAt(rec.Offset, "ram record", fmt.Errorf("%w: page %d of %d", livemig.ErrPageRange, n, m.layout.Pages()))
	}
	switch rec.Kind {
	case KindZero:
		m.stats.Zero++
		m.fill(n, rec.Fill)
	case KindPage:
		m.stats.Page++
		if len(rec.Data) != PageSize {
			return corrupt(rec.Offset, "page record", "%d bytes of page data", len(rec.Data))
		}
		copy(m.page(n), rec.Data)
	case KindXBZRLE:
		m.stats.XBZRLE++
		if !m.Sent(n) {
			m.stats.Unsent++
		}
		if err := delta.Decode(m.page(n), rec.Data); err != nil {
			return errAt(rec.Offset, "xbzrle delta", err)
		}
	case KindCompressed:
		m.stats.Compressed++
		if !m.Sent(n) {
			m.stats.Unsent++
		}
		if err := m.zlib.inflate(m.page(n), rec.Data); err != nil {
			return errAt(rec.Offset, "compressed page", err)
		}
	}
	m.sent[n/64] |= 1 << (n % 64)
	return nil
}

// page returns page n's bytes, allocating its chunk if needed.
func (m *Image) page(n uint64) []byte {
	c := &m.chunks[n/chunkPages]
	if *c == nil {
		*c = make([]byte, chunkPages*PageSize)
	}
	off := (n % chunkPages) * PageSize
	return (*c)[off : off+PageSize]
}

func (m *Image) fill(n uint64, b byte) {
	if b == 0 && m.chunks[n/chunkPages] == nil {
		return
	}
	p := m.page(n)
	if b == 0 {
		clear(p)
		return
	}
	for i := range p {
		p[i] = b
	}
}

// View returns page n's bytes without copying, or nil when no record ever
// wrote a nonzero byte into its 256 KiB chunk (the page is all zeros). The
// slice is the Image's own: read it until the next Apply or write only.
func (m *Image) View(n uint64) []byte {
	if m.layout == nil || n >= m.layout.Pages() || m.chunks[n/chunkPages] == nil {
		return nil
	}
	return m.page(n)
}

// Sent reports whether a record of the stream has set page n.
func (m *Image) Sent(n uint64) bool {
	return m.layout != nil && n < m.layout.Pages() && m.sent[n/64]&(1<<(n%64)) != 0
}

// PageSize implements livemig.Memory.
func (m *Image) PageSize() int { return PageSize }

// PageCount implements livemig.Memory: 0 before the layout is set.
func (m *Image) PageCount() uint64 {
	if m.layout == nil {
		return 0
	}
	return m.layout.Pages()
}

func (m *Image) check(n uint64, buf []byte) error {
	if m.layout == nil || n >= m.layout.Pages() {
		return fmt.Errorf("%w: page %d of %d", livemig.ErrPageRange, n, m.PageCount())
	}
	if len(buf) != PageSize {
		return fmt.Errorf("stream: a buffer of %d bytes for a page of %d", len(buf), PageSize)
	}
	return nil
}

// ReadPage implements livemig.Memory and livemig.PageReader.
func (m *Image) ReadPage(n uint64, dst []byte) error {
	if err := m.check(n, dst); err != nil {
		return err
	}
	if v := m.View(n); v != nil {
		copy(dst, v)
	} else {
		clear(dst)
	}
	return nil
}

// WritePage implements livemig.PageSink.
func (m *Image) WritePage(n uint64, data []byte) error {
	if err := m.check(n, data); err != nil {
		return err
	}
	copy(m.page(n), data)
	m.sent[n/64] |= 1 << (n % 64)
	return nil
}

// ZeroPage implements livemig.PageSink.
func (m *Image) ZeroPage(n uint64) error {
	if m.layout == nil || n >= m.layout.Pages() {
		return fmt.Errorf("%w: page %d of %d", livemig.ErrPageRange, n, m.PageCount())
	}
	m.fill(n, 0)
	m.sent[n/64] |= 1 << (n % 64)
	return nil
}

// WriteBlock writes block i's contents (Blocks()[i].Size bytes) to w.
func (m *Image) WriteBlock(w io.Writer, i int) error {
	if m.layout == nil || i < 0 || i >= len(m.layout.blocks) {
		return fmt.Errorf("%w: block %d", livemig.ErrPageRange, i)
	}
	b := m.layout.blocks[i]
	var zero []byte
	end := b.First + b.Pages()
	for p := b.First; p < end; {
		// The run of pages to the end of p's chunk or of the block.
		n := min(chunkPages-p%chunkPages, end-p)
		var run []byte
		if c := m.chunks[p/chunkPages]; c != nil {
			off := (p % chunkPages) * PageSize
			run = c[off : off+n*PageSize]
		} else {
			if zero == nil {
				zero = make([]byte, chunkPages*PageSize)
			}
			run = zero[:n*PageSize]
		}
		if _, err := w.Write(run); err != nil {
			return err
		}
		p += n
	}
	return nil
}

// inflater decompresses COMPRESS_PAGE records, reusing its zlib state.
type inflater struct {
	zr  io.ReadCloser
	src bytes.Reader
	tmp [PageSize + 1]byte
}

// inflate decompresses a zlib stream onto page (nil: only check it), as
// QEMU's qemu_uncompress_data does: at most a page of output, which may be
// shorter (the rest of the page keeps its bytes).
func (z *inflater) inflate(page, data []byte) error {
	z.src.Reset(data)
	var err error
	if z.zr == nil {
		z.zr, err = zlib.NewReader(&z.src)
	} else {
		err = z.zr.(zlib.Resetter).Reset(&z.src, nil)
	}
	if err != nil {
		return fmt.Errorf("%w: zlib: %v", livemig.ErrCorrupt, err)
	}
	n, err := io.ReadFull(z.zr, z.tmp[:])
	switch {
	case err == nil:
		return fmt.Errorf("%w: zlib data inflates past a page", livemig.ErrCorrupt)
	case err != io.ErrUnexpectedEOF && err != io.EOF:
		return fmt.Errorf("%w: zlib: %v", livemig.ErrCorrupt, err)
	}
	copy(page, z.tmp[:n])
	return nil
}

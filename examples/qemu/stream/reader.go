package stream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
)

var errCorrupt = livemig.ErrCorrupt

// Defaults of Config.
const (
	DefaultMaxSection  = 16 << 20
	DefaultMaxVMDesc   = 16 << 20
	DefaultMaxBlocks   = 1024
	DefaultMaxSections = 4096
	DefaultMaxRAM      = 1 << 40
	defaultBuffer      = 256 << 10
	minBuffer          = 2 * PageSize
	maxMachineName     = 256
	maxCapabilities    = 64
)

// Config bounds what a Reader holds. Every length read from the stream is
// checked against these before anything is read or allocated for it; the
// buffers then grow only as bytes actually arrive. The zero value is the
// default, ample for any stream QEMU writes.
type Config struct {
	// MaxSection bounds a device section's bytes (DefaultMaxSection).
	MaxSection int
	// MaxVMDesc bounds the trailing JSON description (DefaultMaxVMDesc).
	MaxVMDesc int
	// MaxBlocks bounds the number of RAM blocks (DefaultMaxBlocks).
	MaxBlocks int
	// MaxSections bounds the number of distinct section ids and names
	// (DefaultMaxSections).
	MaxSections int
	// MaxRAM bounds the RAM a block list declares, in bytes: the MEM_SIZE
	// total (DefaultMaxRAM, 1 TiB). The Reader allocates nothing per page,
	// but what consumes a Layout may (a bitmap, a table of chunks): this
	// keeps a 9-byte record from declaring 2^63 bytes to them.
	MaxRAM int64
	// BufferSize is the read buffer's size, at least 8 KiB (256 KiB).
	BufferSize int
}

func (c *Config) fill() {
	if c.MaxSection <= 0 {
		c.MaxSection = DefaultMaxSection
	}
	if c.MaxVMDesc <= 0 {
		c.MaxVMDesc = DefaultMaxVMDesc
	}
	if c.MaxBlocks <= 0 {
		c.MaxBlocks = DefaultMaxBlocks
	}
	if c.MaxSections <= 0 {
		c.MaxSections = DefaultMaxSections
	}
	if c.MaxRAM <= 0 {
		c.MaxRAM = DefaultMaxRAM
	}
	switch {
	case c.BufferSize == 0:
		c.BufferSize = defaultBuffer
	case c.BufferSize < minBuffer:
		c.BufferSize = minBuffer
	}
}

type readState uint8

const (
	stHeader readState = iota
	stConfig
	stTop
	stRAM
	stDevice
	stFooter
	stAfterEOF
	stDone
)

type section struct {
	name     string
	instance uint32
	version  uint32
	ram      bool
}

// Reader reads a QEMU migration stream record by record from an io.Reader,
// in one pass and in bounded memory: its read buffer, the largest device
// section (Config.MaxSection), the JSON description (Config.MaxVMDesc) and
// the block and section tables. It does not hold guest memory: an Image
// applies the page records to one.
//
// It checks what QEMU's loader checks that can be checked without the
// destination's devices: the magic and version, the configuration's
// subsections, section ids and their footers, command lengths, RAM record
// flags, block names and offsets, XBZRLE encodings (through package delta)
// and zlib data. Device sections carry no length: the Reader finds a
// device section's end by its footer (7E and the section id) followed by a
// well-formed next record, looking first at what is buffered, so that a
// live source that pauses after its last section and EOF (waiting for the
// destination) gets that section through; streams without section footers
// (machine types before 2.4) are not supported.
//
// Errors are *livemig.StreamError values carrying the offset of the bad
// item; after one, Next returns it again. A Reader is not safe for
// concurrent use.
type Reader struct {
	br    *bufio.Reader
	cfg   Config
	off   int64
	limit int64 // end of the PACKAGED sub-stream being read, or -1
	state readState
	err   error

	sections map[uint32]section
	names    map[string]string
	curID    uint32
	cur      section

	layout    *Layout
	last      int // index of the last block named, -1 for none
	blocks    []Block
	machine   string
	caps      []string
	ignShared bool
	hugePages bool // POSTCOPY_ADVISE said some block has pages > 4 KiB
	footers   bool // a section footer has been read

	scratch []byte // device sections, the description, raw subsections
	zlib    inflater
	cmdBuf  []byte
}

// NewReader returns a Reader of the stream r, bounded by cfg.
func NewReader(r io.Reader, cfg Config) *Reader {
	cfg.fill()
	return &Reader{
		br:       bufio.NewReaderSize(r, cfg.BufferSize),
		cfg:      cfg,
		limit:    -1,
		sections: make(map[uint32]section),
		names:    make(map[string]string),
		last:     -1,
	}
}

// Offset returns the number of bytes consumed so far: the offset of the
// next record.
func (r *Reader) Offset() int64 { return r.off }

// Buffered returns the number of bytes read from the input and not yet
// consumed: a relay that flushes its output when this is 0, before calling
// Next, never holds back records while Next waits for input.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Layout returns the RAM block layout once a MEM_SIZE record has been
// read, nil before.
func (r *Reader) Layout() *Layout { return r.layout }

// Machine returns the machine type named by the configuration section, ""
// before it or without one.
func (r *Reader) Machine() string { return r.machine }

// Capabilities returns the migration capabilities the configuration
// section lists (QEMU lists only those both sides must agree on, such as
// x-ignore-shared), nil before it or without them. The slice is the
// Reader's: do not modify it.
func (r *Reader) Capabilities() []string { return r.caps }

// Next returns the next record. At the end of the stream (after the JSON
// description, or after EOF when the input ends there) it returns io.EOF;
// input that ends anywhere else gives an error wrapping
// io.ErrUnexpectedEOF. The record's Data and Blocks are valid until the
// next call.
func (r *Reader) Next() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	rec, err := r.next()
	if err != nil {
		r.err = err
		return Record{}, err
	}
	return rec, nil
}

func (r *Reader) next() (Record, error) {
	rec := Record{Offset: r.off, Packaged: r.limit >= 0}
	switch r.state {
	case stHeader:
		return r.header(rec)
	case stConfig:
		if b, _ := r.br.Peek(1); len(b) == 1 && b[0] == typeConfig {
			return r.config(rec)
		}
		r.state = stTop
		return r.next()
	case stTop:
		return r.top(rec)
	case stRAM:
		return r.ram(rec)
	case stDevice:
		return r.device(rec)
	case stFooter:
		return r.footer(rec)
	case stAfterEOF:
		return r.afterEOF(rec)
	}
	return Record{}, io.EOF
}

// errAt returns a StreamError at offset at about what.
func errAt(at int64, what string, err error) error {
	return &livemig.StreamError{Offset: at, What: what, Err: err}
}

func corrupt(at int64, what, format string, a ...any) error {
	return errAt(at, what, fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, a...)))
}

// take consumes the next n bytes (n at most the buffer size) and returns
// them; the slice is valid until the next read.
func (r *Reader) take(n int, what string) ([]byte, error) {
	if r.limit >= 0 && r.off+int64(n) > r.limit {
		return nil, corrupt(r.off, what, "%d bytes cross the end of the PACKAGED sub-stream at %d", n, r.limit)
	}
	b, err := r.br.Peek(n)
	if len(b) < n {
		if err == io.EOF || err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, errAt(r.off, what, err)
	}
	_, _ = r.br.Discard(n)
	r.off += int64(n)
	return b, nil
}

func (r *Reader) u8(what string) (byte, error) {
	b, err := r.take(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (r *Reader) be16(what string) (uint16, error) {
	b, err := r.take(2, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint16(b), nil
}

func (r *Reader) be32(what string) (uint32, error) {
	b, err := r.take(4, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

func (r *Reader) be64(what string) (uint64, error) {
	b, err := r.take(8, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// cstr reads a length byte and that many bytes; the slice is valid until
// the next read.
func (r *Reader) cstr(what string) ([]byte, error) {
	n, err := r.u8(what)
	if err != nil {
		return nil, err
	}
	return r.take(int(n), what)
}

// readLong appends n bytes to dst, n having been checked against a limit;
// dst grows only as bytes arrive.
func (r *Reader) readLong(dst []byte, n int, what string) ([]byte, error) {
	at := r.off
	if r.limit >= 0 && r.off+int64(n) > r.limit {
		return dst, corrupt(at, what, "%d bytes cross the end of the PACKAGED sub-stream at %d", n, r.limit)
	}
	for n > 0 {
		c := min(n, r.cfg.BufferSize/2)
		b, err := r.take(c, what)
		if err != nil {
			return dst, errAt(at, what, errors.Unwrap(err))
		}
		dst = append(dst, b...)
		n -= c
	}
	return dst, nil
}

func (r *Reader) intern(b []byte) string {
	if s, ok := r.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(r.names) < r.cfg.MaxSections {
		r.names[s] = s
	}
	return s
}

func (r *Reader) header(rec Record) (Record, error) {
	m, err := r.be32("stream header")
	if err != nil {
		return rec, err
	}
	if m != Magic {
		return rec, errAt(rec.Offset, "stream header", fmt.Errorf("%w: not a migration stream (magic %#08x)", errCorrupt, m))
	}
	v, err := r.be32("stream version")
	if err != nil {
		return rec, err
	}
	if v != Version {
		return rec, errAt(rec.Offset+4, "stream version", fmt.Errorf("%w: unsupported migration stream version %d", livemig.ErrVersion, v))
	}
	rec.Kind, rec.Version = KindHeader, v
	r.state = stConfig
	return rec, nil
}

// config reads the configuration section: the machine name, then the
// subsections QEMU may send (target-page-bits, capabilities, uuid).
func (r *Reader) config(rec Record) (Record, error) {
	r.state = stTop
	if _, err := r.take(1, "configuration"); err != nil {
		return rec, err
	}
	n, err := r.be32("configuration length")
	if err != nil {
		return rec, err
	}
	if n == 0 || n > maxMachineName {
		return rec, corrupt(rec.Offset+1, "configuration", "machine name of %d bytes", n)
	}
	name, err := r.take(int(n), "configuration")
	if err != nil {
		return rec, err
	}
	rec.Kind, rec.Machine = KindConfiguration, string(name)
	r.machine = rec.Machine
	raw := r.scratch[:0]
	for {
		if b, _ := r.br.Peek(1); len(b) != 1 || b[0] != typeSubsection || (r.limit >= 0 && r.off >= r.limit) {
			break
		}
		at := r.off
		r.off++
		_, _ = r.br.Discard(1)
		nm, err := r.cstr("configuration subsection")
		if err != nil {
			return rec, err
		}
		sub := string(nm)
		raw = append(raw, typeSubsection, byte(len(nm)))
		raw = append(raw, nm...)
		ver, err := r.be32("configuration subsection version")
		if err != nil {
			return rec, err
		}
		raw = binary.BigEndian.AppendUint32(raw, ver)
		if ver > 1 {
			return rec, errAt(at, "configuration subsection "+sub, fmt.Errorf("%w: version %d", livemig.ErrVersion, ver))
		}
		switch sub {
		case "configuration/target-page-bits":
			bits, err := r.be32(sub)
			if err != nil {
				return rec, err
			}
			raw = binary.BigEndian.AppendUint32(raw, bits)
			rec.PageBits = bits
			if bits != 12 {
				return rec, errAt(at, sub, fmt.Errorf("%w: target page bits %d (only 12 is supported)", livemig.ErrNotSupported, bits))
			}
		case "configuration/capabilities":
			cnt, err := r.be32(sub)
			if err != nil {
				return rec, err
			}
			if cnt > maxCapabilities {
				return rec, errAt(at, sub, fmt.Errorf("%w: %d capabilities", ErrLimit, cnt))
			}
			raw = binary.BigEndian.AppendUint32(raw, cnt)
			for range cnt {
				c, err := r.cstr(sub)
				if err != nil {
					return rec, err
				}
				raw = append(raw, byte(len(c)))
				raw = append(raw, c...)
				rec.Capabilities = append(rec.Capabilities, string(c))
				switch string(c) {
				case "x-ignore-shared":
					r.ignShared = true
				case "mapped-ram":
					return rec, errAt(at, sub, fmt.Errorf("%w: capability mapped-ram", livemig.ErrNotSupported))
				}
			}
		case "configuration/uuid":
			u, err := r.take(16, sub)
			if err != nil {
				return rec, err
			}
			raw = append(raw, u...)
			rec.UUID = append([]byte(nil), u...)
		default:
			return rec, errAt(at, "configuration subsection", fmt.Errorf("%w: unknown subsection %q", livemig.ErrNotSupported, sub))
		}
	}
	r.scratch = raw
	rec.Data = raw
	r.caps = rec.Capabilities
	return rec, nil
}

// top reads a top-level record: a section header, a command, EOF.
func (r *Reader) top(rec Record) (Record, error) {
	if r.limit >= 0 && r.off == r.limit {
		r.limit = -1
		rec.Kind, rec.Packaged = KindPackageEnd, true
		return rec, nil
	}
	t, err := r.u8("record type")
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return rec, errAt(rec.Offset, "stream", fmt.Errorf("%w: the stream ends before its EOF marker", io.ErrUnexpectedEOF))
		}
		return rec, err
	}
	switch t {
	case typeStart, typeFull:
		return r.sectionStart(rec, SectionType(t))
	case typePart, typeEnd:
		id, err := r.be32("section id")
		if err != nil {
			return rec, err
		}
		s, ok := r.sections[id]
		if !ok {
			return rec, corrupt(rec.Offset, "section", "unknown section id %d", id)
		}
		r.curID, r.cur = id, s
		rec.Kind, rec.Type, rec.ID, rec.Name, rec.Instance = KindSection, SectionType(t), id, s.name, s.instance
		r.enterSection()
		return rec, nil
	case typeCommand:
		return r.command(rec)
	case typeEOF:
		rec.Kind = KindEOF
		if r.limit < 0 {
			r.state = stAfterEOF
		}
		return rec, nil
	case typeConfig:
		return rec, corrupt(rec.Offset, "record type", "configuration section not right after the header")
	case typeVMDesc:
		return rec, corrupt(rec.Offset, "record type", "JSON description before EOF")
	}
	return rec, corrupt(rec.Offset, "record type", "unknown record type 0x%02x", t)
}

func (r *Reader) sectionStart(rec Record, t SectionType) (Record, error) {
	id, err := r.be32("section id")
	if err != nil {
		return rec, err
	}
	nm, err := r.cstr("section idstr")
	if err != nil {
		return rec, err
	}
	if len(nm) == 0 {
		return rec, corrupt(rec.Offset, "section", "empty idstr")
	}
	name := r.intern(nm)
	inst, err := r.be32("section instance")
	if err != nil {
		return rec, err
	}
	ver, err := r.be32("section version")
	if err != nil {
		return rec, err
	}
	s := section{name: name, instance: inst, version: ver, ram: name == RAMName}
	if s.ram && ver != RAMVersion {
		return rec, errAt(rec.Offset, "ram section", fmt.Errorf("%w: version %d (QEMU accepts only %d)", livemig.ErrVersion, ver, RAMVersion))
	}
	if _, ok := r.sections[id]; !ok && len(r.sections) >= r.cfg.MaxSections {
		return rec, errAt(rec.Offset, "section", fmt.Errorf("%w: more than %d section ids", ErrLimit, r.cfg.MaxSections))
	}
	r.sections[id] = s
	r.curID, r.cur = id, s
	rec.Kind, rec.Type, rec.ID, rec.Name, rec.Instance, rec.Version = KindSection, t, id, name, inst, ver
	r.enterSection()
	return rec, nil
}

func (r *Reader) enterSection() {
	if r.cur.ram {
		r.state = stRAM
	} else {
		r.state = stDevice
	}
}

func (r *Reader) footer(rec Record) (Record, error) {
	t, err := r.u8("section footer")
	if err != nil {
		return rec, err
	}
	if t != typeFooter {
		if !r.footers && (t <= typeFull || t == typeCommand) {
			// The first section ends where a record begins: a stream
			// with no footers at all, as QEMU writes for machine types
			// before 2.4 (or with send-section-footer=off).
			return rec, errAt(rec.Offset, "section footer", fmt.Errorf("%w: no footer after section %s (byte 0x%02x): a stream without section footers (machine types before 2.4, or send-section-footer=off)",
				livemig.ErrNotSupported, r.cur.name, t))
		}
		return rec, corrupt(rec.Offset, "section footer", "missing section footer for %s (byte 0x%02x)", r.cur.name, t)
	}
	id, err := r.be32("section footer")
	if err != nil {
		return rec, err
	}
	if id != r.curID {
		return rec, corrupt(rec.Offset, "section footer", "mismatched section id in footer for %s: read %d, expected %d", r.cur.name, id, r.curID)
	}
	rec.Kind, rec.ID, rec.Name, rec.Instance = KindFooter, id, r.cur.name, r.cur.instance
	r.state = stTop
	r.footers = true
	return rec, nil
}

func (r *Reader) command(rec Record) (Record, error) {
	c, err := r.be16("command")
	if err != nil {
		return rec, err
	}
	n, err := r.be16("command length")
	if err != nil {
		return rec, err
	}
	cmd := Command(c)
	want, ok := cmdLen(cmd)
	if !ok {
		return rec, corrupt(rec.Offset, "command", "unknown command %d (length %d)", c, n)
	}
	if want >= 0 && int(n) != want {
		return rec, corrupt(rec.Offset, "command", "%s with length %d, want %d", cmd, n, want)
	}
	if cmd == CmdPostcopyAdvise && n != 0 && n != 16 {
		return rec, corrupt(rec.Offset, "command", "%s with length %d, want 0 or 16", cmd, n)
	}
	p, err := r.take(int(n), "command payload")
	if err != nil {
		return rec, err
	}
	r.cmdBuf = append(r.cmdBuf[:0], p...)
	rec.Data = r.cmdBuf
	rec.Kind, rec.Command = KindCommand, cmd
	switch cmd {
	case CmdPostcopyAdvise:
		if n == 16 && binary.BigEndian.Uint64(rec.Data) != PageSize {
			r.hugePages = true
		}
	case CmdPackaged:
		l := binary.BigEndian.Uint32(rec.Data)
		if r.limit >= 0 {
			return rec, corrupt(rec.Offset, "command", "PACKAGED inside a PACKAGED sub-stream")
		}
		if l > MaxPackage {
			return rec, errAt(rec.Offset, "command", fmt.Errorf("%w: PACKAGED sub-stream of %d bytes (QEMU's bound: %d)", ErrLimit, l, MaxPackage))
		}
		rec.Length = l
		r.limit = r.off + int64(l)
	}
	return rec, nil
}

func (r *Reader) afterEOF(rec Record) (Record, error) {
	b, err := r.br.Peek(1)
	if len(b) == 0 {
		if err == io.EOF {
			r.state = stDone
			return rec, io.EOF
		}
		return rec, errAt(r.off, "after EOF", err)
	}
	if b[0] != typeVMDesc {
		return rec, corrupt(r.off, "after EOF", "byte 0x%02x where the JSON description or the end belongs", b[0])
	}
	r.off++
	_, _ = r.br.Discard(1)
	n, err := r.be32("JSON description length")
	if err != nil {
		return rec, err
	}
	if int64(n) > int64(r.cfg.MaxVMDesc) {
		return rec, errAt(rec.Offset, "JSON description", fmt.Errorf("%w: %d bytes (MaxVMDesc %d)", ErrLimit, n, r.cfg.MaxVMDesc))
	}
	r.scratch, err = r.readLong(r.scratch[:0], int(n), "JSON description")
	if err != nil {
		return rec, err
	}
	rec.Kind, rec.Data = KindVMDesc, r.scratch
	r.state = stDone
	return rec, nil
}

// ram reads one record of a RAM section.
func (r *Reader) ram(rec Record) (Record, error) {
	w, err := r.be64("ram record")
	if err != nil {
		return rec, err
	}
	flags, addr := w&flagMask, w&^uint64(flagMask)
	rec.Continue = flags&flagContinue != 0
	switch flags &^ flagContinue {
	case flagMemSize:
		return r.memSize(rec, addr)
	case flagZero, flagPage, flagXBZRLE, flagCompress:
		return r.pageRecord(rec, flags, addr)
	case flagEOS:
		rec.Kind = KindEOS
		r.state = stFooter
		return rec, nil
	case flagMultifdFlush:
		rec.Kind = KindMultifdFlush
		return rec, nil
	}
	if flags&flagHook != 0 {
		return rec, errAt(rec.Offset, "ram record", fmt.Errorf("%w: RDMA hook (flags %#x)", livemig.ErrNotSupported, flags))
	}
	return rec, corrupt(rec.Offset, "ram record", "unknown combination of migration flags: %#x", flags)
}

func (r *Reader) memSize(rec Record, total uint64) (Record, error) {
	if r.hugePages {
		return rec, errAt(rec.Offset, "ram block list", fmt.Errorf("%w: post-copy with RAM blocks of pages larger than %d bytes", livemig.ErrNotSupported, PageSize))
	}
	if total > uint64(r.cfg.MaxRAM) {
		return rec, errAt(rec.Offset, "ram block list", fmt.Errorf("%w: %#x bytes of RAM declared (MaxRAM %#x)", ErrLimit, total, r.cfg.MaxRAM))
	}
	blocks := r.blocks[:0]
	left := total
	for left > 0 {
		at := r.off
		if len(blocks) >= r.cfg.MaxBlocks {
			return rec, errAt(at, "ram block list", fmt.Errorf("%w: more than %d blocks", ErrLimit, r.cfg.MaxBlocks))
		}
		nm, err := r.cstr("ram block name")
		if err != nil {
			return rec, err
		}
		if len(nm) == 0 {
			return rec, corrupt(at, "ram block list", "empty block name")
		}
		b := Block{Name: r.blockName(nm)}
		if b.Size, err = r.be64("ram block length"); err != nil {
			return rec, err
		}
		if r.ignShared {
			if b.Addr, err = r.be64("ram block address"); err != nil {
				return rec, err
			}
		}
		if b.Size > left {
			return rec, corrupt(at, "ram block list", "block %s of %#x bytes, but only %#x left of the total %#x", b.Name, b.Size, left, total)
		}
		left -= b.Size
		blocks = append(blocks, b)
	}
	r.blocks = blocks
	l, err := NewLayout(blocks)
	if err != nil {
		return rec, errAt(rec.Offset, "ram block list", err)
	}
	if r.layout != nil && !r.layout.Equal(l) {
		return rec, errAt(rec.Offset, "ram block list", fmt.Errorf("%w: a second block list that differs from the first", livemig.ErrNotSupported))
	}
	if r.layout == nil {
		r.layout = l
	}
	rec.Kind, rec.Blocks = KindMemSize, r.layout.blocks
	return rec, nil
}

// blockName returns nm as a string, the layout's own when it names a known
// block (so that page records allocate nothing).
func (r *Reader) blockName(nm []byte) string {
	if r.layout != nil {
		if i, ok := r.layout.byName[string(nm)]; ok {
			return r.layout.blocks[i].Name
		}
	}
	return string(nm)
}

func (r *Reader) pageRecord(rec Record, flags, addr uint64) (Record, error) {
	if r.layout == nil {
		return rec, corrupt(rec.Offset, "ram record", "page record before the block list")
	}
	bi := r.last
	if flags&flagContinue != 0 {
		if bi < 0 {
			return rec, corrupt(rec.Offset, "ram record", "CONTINUE with no previous block")
		}
	} else {
		nm, err := r.cstr("ram block name")
		if err != nil {
			return rec, err
		}
		i, ok := r.layout.byName[string(nm)]
		if !ok {
			return rec, corrupt(rec.Offset, "ram record", "unknown RAM block %q", nm)
		}
		bi = i
	}
	b := &r.layout.blocks[bi]
	if addr >= b.Size {
		return rec, corrupt(rec.Offset, "ram record", "offset %#x past the end of block %s (%#x)", addr, b.Name, b.Size)
	}
	r.last = bi
	rec.Block, rec.Addr, rec.Page = b.Name, addr, b.First+addr/PageSize
	switch flags &^ flagContinue {
	case flagZero:
		f, err := r.u8("zero page fill")
		if err != nil {
			return rec, err
		}
		rec.Kind, rec.Fill = KindZero, f
	case flagPage:
		p, err := r.take(PageSize, "page data")
		if err != nil {
			return rec, err
		}
		rec.Kind, rec.Data = KindPage, p
	case flagXBZRLE:
		at := r.off
		enc, err := r.u8("xbzrle encoding")
		if err != nil {
			return rec, err
		}
		if enc != xbzrleEncoding {
			return rec, corrupt(at, "xbzrle record", "wrong encoding byte 0x%02x", enc)
		}
		n, err := r.be16("xbzrle length")
		if err != nil {
			return rec, err
		}
		if n > PageSize {
			return rec, corrupt(at+1, "xbzrle record", "delta of %d bytes, more than a page", n)
		}
		at = r.off
		d, err := r.take(int(n), "xbzrle delta")
		if err != nil {
			return rec, err
		}
		if err := delta.Validate(d, PageSize); err != nil {
			var de *delta.DecodeError
			if errors.As(err, &de) {
				at += int64(de.Offset)
			}
			return rec, errAt(at, "xbzrle delta", err)
		}
		rec.Kind, rec.Data = KindXBZRLE, d
	case flagCompress:
		n, err := r.be32("compressed page length")
		if err != nil {
			return rec, err
		}
		if n > compressBound {
			return rec, corrupt(r.off-4, "compressed page", "length %d, more than %d", n, compressBound)
		}
		at := r.off
		d, err := r.take(int(n), "compressed page")
		if err != nil {
			return rec, err
		}
		if err := r.zlib.inflate(nil, d); err != nil {
			return rec, errAt(at, "compressed page", err)
		}
		rec.Kind, rec.Data = KindCompressed, d
	}
	return rec, nil
}

// footerLook is how far the Reader looks past a footer to see a
// well-formed record: the footer, then the longest section header.
const footerLook = 5 + 1 + 4 + 1 + 255 + 8

// device reads a non-RAM section's bytes: everything up to the footer that
// is followed by a well-formed record.
func (r *Reader) device(rec Record) (Record, error) {
	data := r.scratch[:0]
	wait := false // the buffered bytes could not tell: wait for more
	weakAt, weakByte := int64(-1), byte(0)
	// The first footer of another section's id followed by a well-formed
	// record: where the section most likely ends, if no footer of its own
	// id does.
	badAt, badID := int64(-1), uint32(0)
	mismatch := func(end error) error {
		return errAt(badAt, "section footer", fmt.Errorf("%w: mismatched section id in footer for %s: read %d, expected %d (or %w: no footer of id %d follows)",
			errCorrupt, r.cur.name, badID, r.curID, end, r.curID))
	}
	for {
		if i, ok := r.stalledEnd(); ok && len(data)+i <= r.cfg.MaxSection {
			// The input stalls right after this section's footer and
			// EOF: a live source waiting (return path) for the
			// destination, which needs the section first.
			w, _ := r.br.Peek(i)
			data = append(data, w...)
			_, _ = r.br.Discard(i)
			r.off += int64(i)
			break
		}
		// Scan what is buffered; wait for input only when that cannot
		// tell where the section ends, and then for one more byte, not
		// for a whole look-ahead that a stalled source may never send.
		n := r.br.Buffered()
		if n == 0 || wait {
			n = min(n+1, r.cfg.BufferSize)
		}
		if r.limit >= 0 && r.limit-r.off < int64(n) {
			// Never wait for bytes past the sub-stream's end.
			n = int(r.limit - r.off)
		}
		w, perr := r.br.Peek(n)
		ended := len(w) < n
		if ended && perr != nil && perr != io.EOF && perr != bufio.ErrBufferFull {
			return rec, errAt(r.off, "device section "+r.cur.name, perr)
		}
		if r.limit >= 0 && int64(len(w)) >= r.limit-r.off {
			w, ended = w[:r.limit-r.off], true
		}
		if len(w) == 0 {
			if badAt >= 0 {
				return rec, mismatch(io.ErrUnexpectedEOF)
			}
			err := error(io.ErrUnexpectedEOF)
			if r.limit >= 0 && r.off == r.limit {
				err = fmt.Errorf("%w: no footer before the end of the PACKAGED sub-stream", errCorrupt)
			} else if weakAt >= 0 {
				// The stream was cut, or it ends with the footer, EOF and
				// a byte that is not the JSON description's.
				err = fmt.Errorf("%w: no footer followed by a well-formed record (the footer before offset %d is followed by EOF and byte 0x%02x, not the JSON description)", err, weakAt, weakByte)
			}
			return rec, errAt(rec.Offset, "device section "+r.cur.name, err)
		}
		i, found := 0, false
		for i < len(w) {
			j := bytes.IndexByte(w[i:], typeFooter)
			if j < 0 {
				i = len(w)
				break
			}
			i += j
			ok, more := r.footerAt(w, i, ended)
			if ok {
				found = true
				break
			}
			if !more && r.limit < 0 && i+7 <= len(w) && w[i+5] == typeEOF && binary.BigEndian.Uint32(w[i+1:]) == r.curID {
				weakAt, weakByte = r.off+int64(i)+6, w[i+6]
			}
			if !more && badAt < 0 && i+6 <= len(w) && len(data)+i <= r.cfg.MaxSection {
				if ok, _ := r.footerLike(w, i, false); ok {
					badAt, badID = r.off+int64(i), binary.BigEndian.Uint32(w[i+1:])
				}
			}
			if more {
				break
			}
			i++
		}
		if len(data)+i > r.cfg.MaxSection {
			if badAt >= 0 {
				return rec, mismatch(ErrLimit)
			}
			return rec, errAt(rec.Offset, "device section "+r.cur.name, fmt.Errorf("%w: no footer within %d bytes (MaxSection)", ErrLimit, r.cfg.MaxSection))
		}
		data = append(data, w[:i]...)
		_, _ = r.br.Discard(i)
		r.off += int64(i)
		if found {
			break
		}
		wait = i == 0
	}
	r.scratch = data
	rec.Kind, rec.ID, rec.Name, rec.Instance, rec.Data = KindDevice, r.curID, r.cur.name, r.cur.instance, data
	r.state = stFooter
	return rec, nil
}

// stalledEnd reports whether the bytes buffered, fewer than a look-ahead,
// end with the current section's footer and EOF (7E, the id, 00), and no
// earlier footer-like bytes among them could end the section: it returns
// the footer's position. A source QEMU with a return path and no JSON
// description to send (suppress-vmdesc) sends these as its last bytes and
// waits for the destination to answer, so the byte after EOF that the
// Reader would otherwise wait for, to be sure of the section's end, comes
// only after the destination has loaded the section: a relay would wait
// for ever. Device bytes ending in exactly these six bytes where the input
// happens to pause are what this takes for a section's end.
func (r *Reader) stalledEnd() (int, bool) {
	b := r.br.Buffered()
	if r.limit >= 0 || b < 6 || b >= footerLook {
		return 0, false
	}
	w, _ := r.br.Peek(b)
	i := b - 6
	if w[i] != typeFooter || binary.BigEndian.Uint32(w[i+1:]) != r.curID || w[i+5] != typeEOF {
		return 0, false
	}
	for j := 0; j < i; j++ {
		if w[j] != typeFooter {
			continue
		}
		if ok, more := r.footerLike(w, j, false); ok || more {
			return 0, false
		}
	}
	return i, true
}

// footerAt reports whether w[i:] holds the current section's footer
// followed by a well-formed record (or the end of input), or, with more,
// that it cannot tell without more bytes than w holds. ended says w ends
// where the input (or the PACKAGED sub-stream) ends.
func (r *Reader) footerAt(w []byte, i int, ended bool) (ok, more bool) {
	if i+5 <= len(w) && binary.BigEndian.Uint32(w[i+1:]) != r.curID {
		return false, false
	}
	return r.footerLike(w, i, ended)
}

// footerLike is footerAt for a footer of any section id.
func (r *Reader) footerLike(w []byte, i int, ended bool) (ok, more bool) {
	have := func(n int) bool { return i+n <= len(w) }
	if !have(5) {
		return false, !ended
	}
	if !have(6) {
		// The footer ends the input or the sub-stream: let what follows
		// say whether that was its end.
		return ended, !ended
	}
	switch w[i+5] {
	case typeEOF:
		if r.limit >= 0 {
			return true, false
		}
		if !have(7) {
			return ended, !ended
		}
		return w[i+6] == typeVMDesc, false
	case typeStart, typeFull:
		if !have(11) {
			return false, !ended
		}
		l := int(w[i+10])
		if l == 0 {
			return false, false
		}
		if !have(11 + l + 8) {
			return false, !ended
		}
		for _, c := range w[i+11 : i+11+l] {
			if c < 0x20 || c > 0x7e {
				return false, false
			}
		}
		return true, false
	case typePart, typeEnd:
		if !have(10) {
			return false, !ended
		}
		_, bound := r.sections[binary.BigEndian.Uint32(w[i+6:])]
		return bound, false
	case typeCommand:
		if !have(10) {
			return false, !ended
		}
		c, n := Command(binary.BigEndian.Uint16(w[i+6:])), int(binary.BigEndian.Uint16(w[i+8:]))
		want, known := cmdLen(c)
		return known && (want < 0 || want == n), false
	}
	return false, false
}

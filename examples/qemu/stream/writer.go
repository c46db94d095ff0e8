package stream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/livemig/livemig/delta"
)

// Writer writes a QEMU migration stream from records. Writing every record a
// Reader returns, in order, reproduces a stream QEMU wrote byte for byte;
// records may also be built by hand, dropped, added or changed, as long as
// the stream stays in QEMU's order (header, configuration, sections with
// their footers, commands, EOF, description).
//
// The Writer chooses the CONTINUE flag itself, as QEMU's sender does: a page
// record names its block unless the previous page record was of the same
// block (Record.Continue is ignored). It computes a PACKAGED command's
// length from the records written between it and the PackageEnd, which it
// holds in memory until then (at most MaxPackage bytes).
//
// Output is buffered: call Flush at the end, and wherever a peer must see
// what was written so far. A Writer is not safe for concurrent use; after an
// error every call returns it.
type Writer struct {
	bw     *bufio.Writer
	w      io.Writer // bw, or pkg inside a PACKAGED sub-stream
	pkg    bytes.Buffer
	inPkg  bool
	last   string
	named  bool // last is set
	ignSh  bool
	err    error
	b      [16]byte
	layout *Layout
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriterSize(w, 256<<10)
	return &Writer{bw: bw, w: bw}
}

// Flush writes out what the Writer buffers (not a PACKAGED sub-stream still
// open).
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	w.err = w.bw.Flush()
	return w.err
}

func badRecord(rec *Record, format string, a ...any) error {
	return fmt.Errorf("%w: %s record: %s", ErrWriter, rec.Kind, fmt.Sprintf(format, a...))
}

func (w *Writer) put(p ...[]byte) {
	if w.err != nil {
		return
	}
	for _, b := range p {
		if _, err := w.w.Write(b); err != nil {
			w.err = err
			return
		}
	}
}

func (w *Writer) putByte(c byte) { w.b[0] = c; w.put(w.b[:1]) }

func (w *Writer) be16(v uint16) { binary.BigEndian.PutUint16(w.b[:], v); w.put(w.b[:2]) }

func (w *Writer) be32(v uint32) { binary.BigEndian.PutUint32(w.b[:], v); w.put(w.b[:4]) }

func (w *Writer) be64(v uint64) { binary.BigEndian.PutUint64(w.b[:], v); w.put(w.b[:8]) }

func (w *Writer) cstr(s string) {
	w.putByte(byte(len(s)))
	if w.err == nil {
		if _, err := io.WriteString(w.w, s); err != nil {
			w.err = err
		}
	}
}

// Write writes rec. Records the Writer cannot write (wrong lengths, names
// of more than 255 bytes, a page record for a block not in the block list,
// PACKAGED inside PACKAGED) give an error wrapping ErrWriter, and nothing
// is written.
func (w *Writer) Write(rec *Record) error {
	if w.err != nil {
		return w.err
	}
	if err := w.check(rec); err != nil {
		return err
	}
	switch rec.Kind {
	case KindHeader:
		v := rec.Version
		if v == 0 {
			v = Version
		}
		w.be32(Magic)
		w.be32(v)
	case KindConfiguration:
		w.putByte(typeConfig)
		w.be32(uint32(len(rec.Machine)))
		sub := rec.Data
		if len(sub) == 0 {
			sub = configSubsections(rec)
		}
		w.put([]byte(rec.Machine), sub)
		w.ignSh = slices.Contains(rec.Capabilities, "x-ignore-shared")
	case KindSection:
		w.putByte(byte(rec.Type))
		w.be32(rec.ID)
		if rec.Type.hasHeader() {
			w.cstr(rec.Name)
			w.be32(rec.Instance)
			w.be32(rec.Version)
		}
	case KindFooter:
		w.putByte(typeFooter)
		w.be32(rec.ID)
	case KindDevice:
		w.put(rec.Data)
	case KindCommand:
		w.putByte(typeCommand)
		w.be16(uint16(rec.Command))
		if rec.Command == CmdPackaged {
			w.be16(4)
			w.inPkg, w.w = true, &w.pkg
			w.pkg.Reset()
			return w.err
		}
		w.be16(uint16(len(rec.Data)))
		w.put(rec.Data)
	case KindPackageEnd:
		w.w, w.inPkg = w.bw, false
		w.be32(uint32(w.pkg.Len()))
		w.put(w.pkg.Bytes())
		if w.pkg.Cap() > 1<<20 {
			w.pkg = bytes.Buffer{}
		}
	case KindEOF:
		w.putByte(typeEOF)
	case KindVMDesc:
		w.putByte(typeVMDesc)
		w.be32(uint32(len(rec.Data)))
		w.put(rec.Data)
	case KindMemSize:
		l, _ := NewLayout(rec.Blocks) // checked
		w.layout = l
		w.be64(l.Bytes() | flagMemSize)
		for _, b := range rec.Blocks {
			w.cstr(b.Name)
			w.be64(b.Size)
			if w.ignSh {
				w.be64(b.Addr)
			}
		}
	case KindZero, KindPage, KindXBZRLE, KindCompressed:
		w.pageRecord(rec)
	case KindEOS:
		w.be64(flagEOS)
	case KindMultifdFlush:
		w.be64(flagMultifdFlush)
	}
	if w.err == nil && w.inPkg && w.pkg.Len() > MaxPackage {
		w.err = badRecord(rec, "PACKAGED sub-stream longer than %d bytes", MaxPackage)
	}
	return w.err
}

func (w *Writer) check(rec *Record) error {
	switch rec.Kind {
	case KindHeader:
		if rec.Version != 0 && rec.Version != Version {
			return badRecord(rec, "version %d", rec.Version)
		}
	case KindConfiguration:
		if len(rec.Machine) == 0 || len(rec.Machine) > maxMachineName {
			return badRecord(rec, "machine name of %d bytes", len(rec.Machine))
		}
		if len(rec.Capabilities) > maxCapabilities || (len(rec.UUID) != 0 && len(rec.UUID) != 16) {
			return badRecord(rec, "%d capabilities, a UUID of %d bytes", len(rec.Capabilities), len(rec.UUID))
		}
		for _, c := range rec.Capabilities {
			if len(c) > 255 {
				return badRecord(rec, "capability name of %d bytes", len(c))
			}
		}
	case KindSection:
		switch rec.Type {
		case SectionStart, SectionFull:
			if len(rec.Name) == 0 || len(rec.Name) > 255 {
				return badRecord(rec, "idstr of %d bytes", len(rec.Name))
			}
		case SectionPart, SectionEnd:
		default:
			return badRecord(rec, "section type %d", rec.Type)
		}
	case KindCommand:
		want, ok := cmdLen(rec.Command)
		if !ok {
			return badRecord(rec, "unknown command %d", rec.Command)
		}
		if rec.Command == CmdPackaged {
			if w.inPkg {
				return badRecord(rec, "PACKAGED inside a PACKAGED sub-stream")
			}
			return nil
		}
		if (want >= 0 && len(rec.Data) != want) || len(rec.Data) > 0xFFFF ||
			(rec.Command == CmdPostcopyAdvise && len(rec.Data) != 0 && len(rec.Data) != 16) {
			return badRecord(rec, "%s with a payload of %d bytes", rec.Command, len(rec.Data))
		}
	case KindPackageEnd:
		if !w.inPkg {
			return badRecord(rec, "no PACKAGED sub-stream open")
		}
	case KindVMDesc:
		if int64(len(rec.Data)) > 0xFFFFFFFF {
			return badRecord(rec, "description of %d bytes", len(rec.Data))
		}
	case KindMemSize:
		if _, err := NewLayout(rec.Blocks); err != nil {
			return badRecord(rec, "%v", err)
		}
	case KindZero, KindPage, KindXBZRLE, KindCompressed:
		if w.layout == nil {
			return badRecord(rec, "before the block list")
		}
		i, ok := w.layout.Index(rec.Block)
		if !ok {
			return badRecord(rec, "unknown block %q", rec.Block)
		}
		if rec.Addr%PageSize != 0 || rec.Addr >= w.layout.blocks[i].Size {
			return badRecord(rec, "offset %#x in block %s of %#x bytes", rec.Addr, rec.Block, w.layout.blocks[i].Size)
		}
		switch rec.Kind {
		case KindPage:
			if len(rec.Data) != PageSize {
				return badRecord(rec, "%d bytes of page data", len(rec.Data))
			}
		case KindXBZRLE:
			if len(rec.Data) > PageSize {
				return badRecord(rec, "delta of %d bytes", len(rec.Data))
			}
			if err := delta.Validate(rec.Data, PageSize); err != nil {
				return badRecord(rec, "%v", err)
			}
		case KindCompressed:
			if len(rec.Data) > compressBound {
				return badRecord(rec, "%d bytes of zlib data", len(rec.Data))
			}
		}
	case KindFooter, KindDevice, KindEOF, KindEOS, KindMultifdFlush:
	default:
		return badRecord(rec, "unknown kind")
	}
	return nil
}

func (w *Writer) pageRecord(rec *Record) {
	word := rec.Addr
	switch rec.Kind {
	case KindZero:
		word |= flagZero
	case KindPage:
		word |= flagPage
	case KindXBZRLE:
		word |= flagXBZRLE
	case KindCompressed:
		word |= flagCompress
	}
	cont := w.named && w.last == rec.Block
	if cont {
		word |= flagContinue
	}
	w.be64(word)
	if !cont {
		w.cstr(rec.Block)
		w.last, w.named = rec.Block, true
	}
	switch rec.Kind {
	case KindZero:
		w.putByte(rec.Fill)
	case KindPage:
		w.put(rec.Data)
	case KindXBZRLE:
		w.putByte(xbzrleEncoding)
		w.be16(uint16(len(rec.Data)))
		w.put(rec.Data)
	case KindCompressed:
		w.be32(uint32(len(rec.Data)))
		w.put(rec.Data)
	}
}

// configSubsections encodes a configuration's subsections from its fields,
// in QEMU's order, for a record built by hand (Data empty).
func configSubsections(rec *Record) []byte {
	var b []byte
	sub := func(name string) {
		b = append(b, typeSubsection, byte(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint32(b, 1)
	}
	if rec.PageBits != 0 {
		sub("configuration/target-page-bits")
		b = binary.BigEndian.AppendUint32(b, rec.PageBits)
	}
	if len(rec.Capabilities) > 0 {
		sub("configuration/capabilities")
		b = binary.BigEndian.AppendUint32(b, uint32(len(rec.Capabilities)))
		for _, c := range rec.Capabilities {
			b = append(b, byte(len(c)))
			b = append(b, c...)
		}
	}
	if len(rec.UUID) == 16 {
		sub("configuration/uuid")
		b = append(b, rec.UUID...)
	}
	return b
}

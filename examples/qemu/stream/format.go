package stream

import (
	"errors"
	"fmt"
)

// Facts of the format (QEMU's migration/savevm.c, migration/ram.c): every
// integer is big-endian, names are one length byte and up to 255 bytes.
const (
	// Magic opens every stream: "QEVM".
	Magic uint32 = 0x5145564D
	// Version is the only stream version QEMU reads (2 is obsolete).
	Version uint32 = 3
	// PageSize is the x86 target page: the unit of every RAM record.
	PageSize = 4096
	// RAMVersion is the only version of the "ram" section QEMU accepts.
	RAMVersion uint32 = 4
	// RAMName is the idstr of the RAM section.
	RAMName = "ram"
	// MaxPackage is the largest PACKAGED sub-stream QEMU accepts (16 MiB).
	MaxPackage = 1 << 24
	// compressBound is zlib's compressBound(PageSize): QEMU's bound on a
	// COMPRESS_PAGE record's length.
	compressBound = PageSize + PageSize>>12 + PageSize>>14 + PageSize>>25 + 13
)

// Top-level type bytes.
const (
	typeEOF        = 0x00
	typeStart      = 0x01
	typePart       = 0x02
	typeEnd        = 0x03
	typeFull       = 0x04
	typeSubsection = 0x05
	typeVMDesc     = 0x06
	typeConfig     = 0x07
	typeCommand    = 0x08
	typeFooter     = 0x7E
)

// RAM record flags: the low 12 bits of each record's first be64.
const (
	flagFull         = 0x01
	flagZero         = 0x02
	flagMemSize      = 0x04
	flagPage         = 0x08
	flagEOS          = 0x10
	flagContinue     = 0x20
	flagXBZRLE       = 0x40
	flagHook         = 0x80
	flagCompress     = 0x100
	flagMultifdFlush = 0x200
	flagMask         = PageSize - 1

	// xbzrleEncoding is the byte after an XBZRLE record's address.
	xbzrleEncoding = 0x01
)

// Kind says what a Record is.
type Kind uint8

// Record kinds. A stream reads as: Header, Configuration, then sections
// (Section, its data, Footer) and commands, then EOF and VMDesc. A section
// bound to "ram" carries RAM records (MemSize, Zero, Page, XBZRLE, Compressed,
// MultifdFlush), ending with EOS; any other section carries one Device
// record. A PACKAGED command is followed by the records of its sub-stream,
// marked Packaged, and a PackageEnd.
const (
	KindHeader        Kind = iota + 1 // Version
	KindConfiguration                 // Machine, PageBits, Capabilities, UUID, Data
	KindSection                       // Type, ID, Name, Instance, Version
	KindFooter                        // ID, Name
	KindDevice                        // ID, Name, Data: a non-RAM section's bytes
	KindCommand                       // Command, Data (payload); PACKAGED: Length
	KindPackageEnd                    // the end of a PACKAGED sub-stream
	KindEOF                           // the end of the device state
	KindVMDesc                        // Data: the JSON description
	KindMemSize                       // Blocks: the RAM block list
	KindZero                          // Block, Addr, Page, Fill
	KindPage                          // Block, Addr, Page, Data (PageSize bytes)
	KindXBZRLE                        // Block, Addr, Page, Data (the delta)
	KindCompressed                    // Block, Addr, Page, Data (zlib; QEMU 7.2 only)
	KindEOS                           // the end of a RAM section's data
	KindMultifdFlush                  // QEMU 8.0+: sync multifd channels
	kindMax
)

var kindNames = [kindMax]string{
	KindHeader:        "header",
	KindConfiguration: "configuration",
	KindSection:       "section",
	KindFooter:        "footer",
	KindDevice:        "device",
	KindCommand:       "command",
	KindPackageEnd:    "package_end",
	KindEOF:           "eof",
	KindVMDesc:        "vmdesc",
	KindMemSize:       "mem_size",
	KindZero:          "zero",
	KindPage:          "page",
	KindXBZRLE:        "xbzrle",
	KindCompressed:    "compressed",
	KindEOS:           "eos",
	KindMultifdFlush:  "multifd_flush",
}

// String returns the kind's lower-case name, as the inspect command's JSON
// uses it ("page", "zero", "xbzrle", ...).
func (k Kind) String() string {
	if k < kindMax && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IsRAM reports whether k is a record of a RAM section.
func (k Kind) IsRAM() bool { return k >= KindMemSize && k < kindMax }

// IsPage reports whether k is a record that sets one page.
func (k Kind) IsPage() bool {
	return k == KindZero || k == KindPage || k == KindXBZRLE || k == KindCompressed
}

// SectionType is a section's type byte.
type SectionType uint8

// Section types.
const (
	SectionStart SectionType = typeStart
	SectionPart  SectionType = typePart
	SectionEnd   SectionType = typeEnd
	SectionFull  SectionType = typeFull
)

// String returns "start", "part", "end" or "full".
func (t SectionType) String() string {
	switch t {
	case SectionStart:
		return "start"
	case SectionPart:
		return "part"
	case SectionEnd:
		return "end"
	case SectionFull:
		return "full"
	}
	return fmt.Sprintf("section(0x%02x)", uint8(t))
}

// hasHeader reports whether the type carries idstr, instance and version.
func (t SectionType) hasHeader() bool { return t == SectionStart || t == SectionFull }

// Command is a QEMU_VM_COMMAND code.
type Command uint16

// Commands (QEMU's enum qemu_vm_cmd).
const (
	CmdOpenReturnPath  Command = 1
	CmdPing            Command = 2
	CmdPostcopyAdvise  Command = 3
	CmdPostcopyListen  Command = 4
	CmdPostcopyRun     Command = 5
	CmdPostcopyDiscard Command = 6
	CmdPackaged        Command = 7
	CmdEnableColo      Command = 8
	CmdPostcopyResume  Command = 9
	CmdRecvBitmap      Command = 10
	CmdSwitchoverStart Command = 11 // QEMU 10.0+
	cmdMax             Command = 12
)

var cmdNames = [cmdMax]string{
	CmdOpenReturnPath:  "OPEN_RETURN_PATH",
	CmdPing:            "PING",
	CmdPostcopyAdvise:  "POSTCOPY_ADVISE",
	CmdPostcopyListen:  "POSTCOPY_LISTEN",
	CmdPostcopyRun:     "POSTCOPY_RUN",
	CmdPostcopyDiscard: "POSTCOPY_RAM_DISCARD",
	CmdPackaged:        "PACKAGED",
	CmdEnableColo:      "ENABLE_COLO",
	CmdPostcopyResume:  "POSTCOPY_RESUME",
	CmdRecvBitmap:      "RECV_BITMAP",
	CmdSwitchoverStart: "SWITCHOVER_START",
}

// String returns QEMU's name for the command.
func (c Command) String() string {
	if c > 0 && c < cmdMax {
		return cmdNames[c]
	}
	return fmt.Sprintf("CMD(%d)", uint16(c))
}

// cmdLen is the payload length QEMU requires of each command, -1 for a
// variable one; ok is false for an unknown command. POSTCOPY_ADVISE takes 0
// or 16 bytes and is checked apart.
func cmdLen(c Command) (n int, ok bool) {
	switch c {
	case CmdOpenReturnPath, CmdPostcopyListen, CmdPostcopyRun, CmdEnableColo,
		CmdPostcopyResume, CmdSwitchoverStart:
		return 0, true
	case CmdPing, CmdPackaged:
		return 4, true
	case CmdPostcopyAdvise, CmdPostcopyDiscard, CmdRecvBitmap:
		return -1, true
	}
	return 0, false
}

// Block is one RAM block of the MEM_SIZE list.
type Block struct {
	Name string // QEMU's RAMBlock idstr, e.g. "pc.ram", "/rom@etc/acpi/tables"
	Size uint64 // used length in bytes, a multiple of PageSize
	// Addr is the block's guest-physical address, which the stream carries
	// only when the x-ignore-shared capability is on; 0 otherwise.
	Addr uint64
	// First is the livemig page number of the block's first page: blocks
	// are numbered consecutively in stream order (see Layout).
	First uint64
}

// Pages returns the number of pages the block holds.
func (b Block) Pages() uint64 { return b.Size / PageSize }

// Record is one item of a stream, as a value. Which fields are set depends
// on Kind (see the Kind constants); the others are zero.
//
// Data and Blocks are borrowed: they point into the Reader's buffers and are
// valid only until the next call to Next. Copy what must outlive it. Strings
// are the Reader's own and may be kept.
type Record struct {
	Kind Kind
	// Offset is where the record begins in the stream, in bytes from the
	// start; records inside a PACKAGED sub-stream keep counting in the
	// outer stream.
	Offset int64
	// Packaged is set on the records of a PACKAGED sub-stream.
	Packaged bool

	// Version: the stream version (KindHeader) or the section's version
	// (KindSection of type start or full).
	Version uint32

	// KindConfiguration: the machine type's full name, the subsections'
	// contents (PageBits 0 when absent) and their raw bytes in Data, which
	// a Writer writes back as they are (with Data empty, it encodes the
	// subsections from these fields).
	Machine      string
	PageBits     uint32
	Capabilities []string
	UUID         []byte

	// KindSection: the type; KindSection, KindDevice, KindFooter: the
	// section id and the idstr and instance it was bound to.
	Type     SectionType
	ID       uint32
	Name     string
	Instance uint32

	// KindCommand: the command; Length is a PACKAGED command's sub-stream
	// length (its records follow).
	Command Command
	Length  uint32

	// Page records: the block, the offset in it (a multiple of PageSize),
	// the livemig page number (see Layout) and, for KindZero, the fill
	// byte. Continue says the record named no block (QEMU's CONTINUE flag).
	Block    string
	Addr     uint64
	Page     uint64
	Fill     byte
	Continue bool

	// KindMemSize: the blocks in stream order.
	Blocks []Block

	// Data: a page (KindPage), a delta (KindXBZRLE), zlib data
	// (KindCompressed), a device section's bytes (KindDevice), a command's
	// payload (KindCommand), the JSON description (KindVMDesc), the
	// configuration's raw subsections (KindConfiguration).
	Data []byte
}

// Errors. A Reader's errors are *livemig.StreamError values, carrying the
// stream offset of the bad item and wrapping one of these, livemig.ErrCorrupt,
// livemig.ErrVersion, livemig.ErrNotSupported or io.ErrUnexpectedEOF.
var (
	// ErrLimit: a length read from the stream exceeds a configured bound
	// (Config, ImageConfig). It wraps livemig.ErrCorrupt: a stream QEMU
	// wrote within the defaults never hits one.
	ErrLimit = fmt.Errorf("stream: length over the limit: %w", errCorrupt)
	// ErrImageLimit: a block list declares more RAM than an Image may hold
	// (ImageConfig.MaxBytes). It wraps ErrLimit.
	ErrImageLimit = fmt.Errorf("%w: RAM over the image's bound", ErrLimit)
	// ErrWriter: a Writer was given a record it cannot write (a wrong
	// length, a name too long, a record out of order).
	ErrWriter = errors.New("stream: bad record for the writer")
)

package transport

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Kind is the type of a Msg, the type byte of the frames that carry it. What
// a kind means belongs to the protocol that defines it (livemig's migration
// protocol defines its kinds in package wire); a Conn knows only its name
// and its Class, which DefineKind declares.
type Kind uint8

// KindHeartbeat keeps a quiet direction alive (Config.Liveness). It is the
// transport's own kind: a Conn writes it by itself and Recv skips it, so
// callers never see one, Send refuses it, and DefineKind may not redefine it.
const KindHeartbeat Kind = 13

// Class is how the framing carries the messages of a kind: their payload,
// its bounds, and, on a multi-stream Conn (NewMulti), which streams they
// take and whether they are barriers.
type Class uint8

// Classes.
const (
	// ClassNone is the class of a kind no one defined: Send refuses it
	// (ErrInvalid) and a frame of it is corrupt.
	ClassNone Class = iota
	// ClassRecords: page records. Page is a page number (below
	// Config.PageCount, if set), Enc says how Data encodes the page
	// (EncRaw: exactly the page size; EncZero: no data; EncXBZRLE, EncLZ4:
	// at most MaxEncodedLen); Arg is not carried (Recv sets it to 0).
	// Records travel in batch frames. On a multi-stream Conn the record of
	// page p goes on stream (p / StreamRun) % N, so that the copies of a
	// page keep their order.
	ClassRecords
	// ClassControl: one frame of Page, Arg and Data up to a frame. On a
	// multi-stream Conn it is a barrier: written on every stream after
	// that stream's pending records (Data on stream 0 only), and received
	// once every stream has delivered its copy, hence after every message
	// sent before it.
	ClassControl
	// ClassBlob: like ClassControl, with Data up to Config.MaxState, sent
	// as several frames (all but the last flagged "more") and reassembled
	// by the receiver.
	ClassBlob
	// ClassBitmap: like ClassControl, with Data 1 to MaxBitmapWords whole
	// 8-byte words. On a multi-stream Conn the barrier's copies on the
	// other streams carry one zero word.
	ClassBitmap
	// ClassPriority: one frame like ClassControl's, but not a barrier: on a
	// multi-stream Conn it travels on stream 0 alone, and may overtake
	// records that other streams still hold. For messages that answer or
	// interrupt (a return path, an error), from a sender that does not
	// also send records at the same time.
	ClassPriority
	// ClassHeartbeat is KindHeartbeat's, the transport's own.
	ClassHeartbeat
)

// String returns the class's name.
func (c Class) String() string {
	switch c {
	case ClassNone:
		return "None"
	case ClassRecords:
		return "Records"
	case ClassControl:
		return "Control"
	case ClassBlob:
		return "Blob"
	case ClassBitmap:
		return "Bitmap"
	case ClassPriority:
		return "Priority"
	case ClassHeartbeat:
		return "Heartbeat"
	}
	return fmt.Sprintf("Class(%d)", uint8(c))
}

type kindInfo struct {
	name  string
	class Class
}

type kindTable [256]kindInfo

// kinds is the table DefineKind fills, copied on each definition so that
// Conns read it without a lock. It is set up by a variable's initializer,
// before any init function (a test's may call DefineKind).
var kinds = func() *atomic.Pointer[kindTable] {
	t := new(kindTable)
	t[KindHeartbeat] = kindInfo{"Heartbeat", ClassHeartbeat}
	p := new(atomic.Pointer[kindTable])
	p.Store(t)
	return p
}()

var kindsMu sync.Mutex // one DefineKind at a time

// DefineKind declares kind k, named name, whose messages the framing carries
// as class c. A protocol defines its kinds once, when its package is
// initialized; the definitions hold for every Conn of the process, and both
// peers must define the same. Defining a kind again with the same name and
// class does nothing.
//
// DefineKind panics, as for a programming error, if k is 0 or
// KindHeartbeat, if c is ClassNone, ClassHeartbeat or unknown, if name is
// empty, or if k is already defined otherwise. It may be called from any
// goroutine, but a kind defined while Conns run may be refused by a peer
// that does not know it yet.
func DefineKind(k Kind, name string, c Class) {
	switch {
	case k == 0 || k == KindHeartbeat:
		panic(fmt.Sprintf("transport: DefineKind(%d, %q): kind %d is reserved", k, name, k))
	case c == ClassNone || c >= ClassHeartbeat:
		panic(fmt.Sprintf("transport: DefineKind(%d, %q): class %v", k, name, c))
	case name == "":
		panic(fmt.Sprintf("transport: DefineKind(%d): no name", k))
	}
	kindsMu.Lock()
	defer kindsMu.Unlock()
	old := kinds.Load()
	if cur := old[k]; cur.class != ClassNone {
		if cur == (kindInfo{name, c}) {
			return
		}
		panic(fmt.Sprintf("transport: DefineKind(%d, %q, %v): already defined as %q, %v", k, name, c, cur.name, cur.class))
	}
	t := *old
	t[k] = kindInfo{name, c}
	kinds.Store(&t)
}

// Class returns the class k was defined with (ClassNone if it was not).
func (k Kind) Class() Class { return kinds.Load()[k].class }

// String returns the name k was defined with, or "Kind(n)".
func (k Kind) String() string {
	if n := kinds.Load()[k].name; n != "" {
		return n
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

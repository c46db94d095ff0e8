package transport

import (
	"context"
	"io"
	"time"
)

// Link is a full-duplex byte stream between a source and a destination: a
// net.Conn (TCP, TLS), the in-memory Pipe, a simulated link, or any of these
// wrapped in a rate limit.
//
// One goroutine may Read while another Writes. Close unblocks both; after it,
// Read and Write return errors (io.EOF or an error wrapping livemig.ErrClosed
// on the closing side, io.EOF or an error on the other side's Read once the
// buffered bytes are drained).
type Link = io.ReadWriteCloser

// Encoding says how a page record's Data encodes the page. The framing
// checks a record's length by its encoding, before it returns the record.
type Encoding uint8

// Page encodings. Raw pages carry exactly the page size; zero pages carry no
// data. Codecs define the others.
const (
	EncRaw    Encoding = 0
	EncZero   Encoding = 1
	EncXBZRLE Encoding = 2 // an XBZRLE delta against the previous copy
	EncLZ4    Encoding = 3 // an LZ4 block of the page
)

// Msg is one message. Its Kind's Class says which fields the framing
// carries; the protocol that defines the kind says what they mean. On Send
// the caller owns Data and may reuse it as soon as Send returns (the
// connection copies it). On Recv, Data is borrowed from the connection and
// valid only until the next Recv.
type Msg struct {
	Kind Kind
	Enc  Encoding
	Page uint64
	Arg  uint64
	Data []byte
	// DataCRC is the CRC32C (Castagnoli) of a raw page record's Data, when
	// HaveCRC is set. A sender that has it at hand (it computed the page's
	// digest term, verify.Digest.UpdateCRC) sets both, and the Conn builds
	// the frame's CRC from it instead of reading Data again; a wrong value
	// makes the peer refuse the frame as corrupt, as a flipped bit would.
	// Recv sets both for every raw page record received (EncRaw, a whole
	// page), from the CRC it checks the frame with, and clears HaveCRC for
	// any other message.
	DataCRC uint32
	HaveCRC bool
}

// PageHandler applies one page record (a message of ClassRecords) that
// arrived on stream; see ParallelReceiver. m and m.Data are the Conn's,
// valid for the call only. An error fails the Conn with it. It should not
// block: closing the Conn waits for the calls under way to return.
type PageHandler func(stream int, m *Msg) error

// ParallelReceiver is a Conn that can apply the page records it receives
// on its own goroutines, one per stream, instead of returning them from
// Recv: a multi-stream Conn (NewMulti over several connections) is one.
// The streams' goroutines then read, check and apply at once, and the
// records are not copied for Recv; since the records of a page always take
// the same stream, applying each stream's records in its order keeps the
// newest copy of every page (newest wins).
//
// HandlePages has every page record received from then on passed to h, on
// the goroutine of the stream it came on, in that stream's order; h may be
// called from Streams() goroutines at once, for distinct pages. Recv
// returns every other message as before, and a barrier (ClassControl,
// ClassBlob, ClassBitmap) only once every page record sent before it has
// been passed to h and h has returned. If h returns an error the Conn
// fails: Recv and every later call return that error. Call HandlePages
// once, before the first Recv; otherwise it returns an error wrapping
// ErrInvalid and changes nothing.
type ParallelReceiver interface {
	Conn
	Streams() int
	HandlePages(h PageHandler) error
}

// Conn is a framed, checksummed connection carrying Msgs in both directions.
//
// Send queues m. Page records (ClassRecords) are batched and reach the link
// when a batch fills, at Flush, or before any other message, which is sent
// at once. Recv fills m with the next message from the peer, in the order
// the peer sent them (for a multi-stream Conn: in order for each page, with
// any other message returned only after every message sent before it on any
// stream — except ClassPriority messages, which travel on stream 0 alone
// and may overtake page records of other streams; see NewMulti). One
// goroutine may Send/Flush while another Recvs; Close may be called from
// any goroutine and unblocks both. A message Send refuses returns an error
// wrapping ErrInvalid; nothing was sent and the Conn goes on.
//
// If ctx is done while Send, Flush or Recv is blocked on the link, the Conn is
// closed and the call returns an error wrapping ctx.Err(). A corrupt frame is
// an error wrapping livemig.ErrCorrupt (a *livemig.StreamError saying where);
// a link cut mid-frame is io.ErrUnexpectedEOF; a message saying the peer
// failed is returned by Recv as a message, not as an error.
type Conn interface {
	Send(ctx context.Context, m Msg) error
	Flush(ctx context.Context) error
	Recv(ctx context.Context, m *Msg) error
	Close() error
}

// Features are optional capabilities a peer announces in its Hello; the
// session uses those both sides announce.
type Features uint64

// Feature bits.
const (
	FeatXBZRLE   Features = 1 << 0
	FeatLZ4      Features = 1 << 1
	FeatPostCopy Features = 1 << 2
	FeatDigest   Features = 1 << 3
)

// Hello is what each side announces in the handshake. Version is filled in by
// the package. Streams and Stream number the connections of a multi-stream
// session, which share Session.
//
// PageSize and PageCount are the guest's geometry, which both sides must
// share. A side that does not know it yet (a destination that serves
// guests of any size on one listener, and creates each one as it learns
// its geometry) announces PageCount 0: it adopts the peer's page size and
// count, which Open's returned hello (and the Conn) then carry. (Two sides
// that both announce 0 get a Conn that checks no page number.)
type Hello struct {
	Version   uint16
	PageSize  uint32
	PageCount uint64
	Features  Features
	Streams   uint16   // how many connections the session has (0 or 1: one)
	Stream    uint16   // this connection's index, 0..Streams-1
	Session   [16]byte // random, the same on every stream of a session
	// Liveness is the sender's Config.Liveness (0: off), in whole
	// milliseconds on the wire; Open sets it and agrees on a bound.
	Liveness time.Duration
}

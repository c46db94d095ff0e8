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

// Message kinds. Source to destination: Page, EndRound, State, Switchover,
// Done, Commit, Discard, Resume, Error. Destination to source (the return
// path): Request, Ack, RecvBitmap, Error.
const (
	KindPage       Kind = 1 // Page, Enc, Data: one page record (batched on the wire)
	KindEndRound   Kind = 2 // Arg: the round that ended
	KindState      Kind = 3 // Data: the CPU/device state blob
	KindSwitchover Kind = 4 // the source has paused; Arg: the final round's number
	KindDone       Kind = 5 // every page and the state are sent; Arg: the source's digest
	KindCommit     Kind = 6 // the source hands the guest over: the destination may resume
	KindError      Kind = 7 // Data: a UTF-8 message; the sender gives up
	KindRequest    Kind = 8 // return path: Page: first page wanted, Arg: how many
	KindAck        Kind = 9 // return path: Arg: an AckCode, Page: a value for it

	// KindDiscard (post-copy, hybrid) names pages whose copy at the
	// destination is stale (dirtied at the source since it was sent): the
	// destination makes them missing again before it resumes the guest.
	// Page: the first page of the chunk, a multiple of 64; Data: a bitmap
	// chunk (see CheckBitmap).
	KindDiscard Kind = 10
	// KindRecvBitmap (post-copy recovery, return path) names the pages the
	// destination holds, after a reconnection: chunks like KindDiscard's,
	// then Ack(AckHeld).
	KindRecvBitmap Kind = 11
	// KindResume (post-copy recovery) is the source's first message on a
	// new connection after a cut: Page: the migration's session id, as sent
	// in its KindSwitchover.
	KindResume Kind = 12
)

func init() {
	for _, d := range []struct {
		k    Kind
		name string
		c    Class
	}{
		{KindPage, "Page", ClassRecords},
		{KindEndRound, "EndRound", ClassControl},
		{KindState, "State", ClassBlob},
		{KindSwitchover, "Switchover", ClassControl},
		{KindDone, "Done", ClassControl},
		{KindCommit, "Commit", ClassControl},
		{KindError, "Error", ClassPriority},
		{KindRequest, "Request", ClassPriority},
		{KindAck, "Ack", ClassPriority},
		{KindDiscard, "Discard", ClassBitmap},
		{KindRecvBitmap, "RecvBitmap", ClassBitmap},
		{KindResume, "Resume", ClassControl},
	} {
		DefineKind(d.k, d.name, d.c)
	}
}

// Encoding says how a page record's Data encodes the page.
type Encoding uint8

// Page encodings. Raw pages carry exactly the page size; zero pages carry no
// data. Codecs define the others.
const (
	EncRaw    Encoding = 0
	EncZero   Encoding = 1
	EncXBZRLE Encoding = 2 // an XBZRLE delta against the previous copy
	EncLZ4    Encoding = 3 // an LZ4 block of the page
)

// Ack codes carried in a KindAck message's Arg.
const (
	AckRound   = 1 // Page: the round received in full
	AckReady   = 2 // the destination verified everything and waits for Commit; Page: its digest
	AckResumed = 3 // the destination resumed the guest
	// AckComplete (post-copy): the destination holds every page and its
	// digest matched the source's Done; Page: its digest, Data: the
	// destination's post-copy figures (the engine defines the layout).
	AckComplete = 4
	// AckHeld ends a KindRecvBitmap after a reconnection; Page: how many
	// pages the destination holds.
	AckHeld = 5
	// AckReleased (source to destination) acknowledges the outcome, the
	// AckResumed of pre-copy or the AckComplete of post-copy: the source
	// knows it and will not come back to ask.
	AckReleased = 6
)

// ErrorNotResumed, in the Arg of a KindError a destination sends with the
// migration's session in Page, promises that it has not resumed the guest
// and never will for this migration: a source that receives it for its
// session may resume its guest even after the Commit (see ErrorMsg,
// PeerErrorOf).
const ErrorNotResumed = 1

// Msg is one message. On Send the caller owns Data and may reuse it as soon
// as Send returns (the connection copies it). On Recv, Data is borrowed from
// the connection and valid only until the next Recv.
type Msg struct {
	Kind Kind
	Enc  Encoding
	Page uint64
	Arg  uint64
	Data []byte
}

// Conn is a framed, checksummed connection carrying Msgs in both directions.
//
// Send queues m. Page records are batched and reach the link when a batch
// fills, at Flush, or before any other kind of message, which is sent at
// once. Recv fills m with the next message from the peer, in the order the
// peer sent them (for a multi-stream Conn: in order for each page, with a
// control message returned only after every message sent before it on any
// stream — except Request, Ack and Error, which travel on stream 0 alone
// and may overtake page records of other streams; see NewMulti). One
// goroutine may Send/Flush while another Recvs; Close may be called from
// any goroutine and unblocks both. A message Send refuses returns an error
// wrapping ErrInvalid; nothing was sent and the Conn goes on.
//
// If ctx is done while Send, Flush or Recv is blocked on the link, the Conn is
// closed and the call returns an error wrapping ctx.Err(). A corrupt frame is
// an error wrapping livemig.ErrCorrupt (a *livemig.StreamError saying where);
// a link cut mid-frame is io.ErrUnexpectedEOF; a KindError from the peer is
// returned by Recv as a message, not as an error.
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

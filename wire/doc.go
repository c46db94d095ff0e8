// Package wire is livemig's migration protocol: the messages a source and a
// destination exchange over a transport.Conn — their kinds, what their
// fields mean, the Ack codes, the flags and the peer errors — shared by the
// engines (precopy, postcopy, hybrid) and the tools that watch their
// streams. Package transport frames and carries the messages; this package
// says what they are. Importing it defines its kinds for the transport
// (transport.DefineKind), with the class each is framed as.
//
// # Messages
//
//	kind        class     direction  fields
//	Page        records   s → d      Page: page number, Enc, Data: the page
//	EndRound    control   s → d      Arg: round number (| FlagAck)
//	State       blob      s → d      Data: CPU and device state
//	Switchover  control   s → d      Page: session id, Arg: final round (| FlagPostCopy | FlagUrgent)
//	Done        control   s → d      Arg: digest of the memory (0: none)
//	Commit      control   s → d      —
//	Error       priority  both       Data: message; Arg: ErrorNotResumed, Page: session
//	Request     priority  d → s      Page: first page, Arg: how many
//	Ack         priority  both       Arg: Ack code; Page, Data: as the code says
//	Discard     bitmap    s → d      Page: first page (a multiple of 64), Data: bitmap
//	RecvBitmap  bitmap    d → s      as Discard
//	Resume      control   s → d      Page: session id (| FlagUrgent in Arg)
//
// The kinds' numbers are 1 to 12, in this order; 13 is the transport's
// heartbeat. The classes (transport.Class) are how the framing carries
// them: on a multi-stream Conn, page records go on the stream of their
// page, priority messages on stream 0 alone, and every other message is a
// barrier received after everything sent before it.
//
// The framing checks what a class says (a page record's page and length, a
// bitmap's whole words, a blob's bound); the rest — a request or a bitmap
// within the guest (CheckBitmap), the order of the messages, what a
// session or a digest must be — is for the engines to check, as bad input
// wrapping livemig.ErrCorrupt or livemig.ErrPageRange.
//
// # The commit sequence
//
// Pre-copy sends pages round after round, each round ended by EndRound,
// then ends the migration with:
//
//	source                          destination
//	Switchover (Page: session) -->                                the source has paused
//	Page..., EndRound          -->                                the last round
//	State, Done (Arg: digest)  -->
//	                           <--  Ack(AckReady, Page: digest)   everything received, verified and loaded
//	Commit                     -->
//	                           <--  Ack(AckResumed)               the guest runs at the destination
//	Ack(AckReleased)           -->                                the source knows it
//
// Hybrid's pre-copy rounds (precopy.HandOff) end at a barrier: an EndRound
// with FlagAck, which the destination answers with Ack(AckRound) once
// everything before it is applied; nothing of the return path is read past
// it, so post-copy's engine takes the connection from there.
//
// Post-copy (and hybrid, after its pre-copy rounds and the Discard of the
// pages they left stale) sends Switchover (with FlagPostCopy) and State, waits for AckReady
// (the state is loaded), sends Commit (the destination resumes at once and
// says AckResumed when it can), pushes the pages, serving Requests first,
// sends Done, and waits for Ack(AckComplete), which it answers with
// AckReleased.
//
// The destination resumes only after Commit; a destination that gives up
// before it sends Error with Arg ErrorNotResumed and the session in Page, a
// promise never to resume that migration (ErrorMsg, PeerErrorOf). The
// source resumes its guest whenever it has not sent Commit, or holds that
// promise for its session. After an ambiguous failure (Commit sent,
// neither the answer nor the promise received) it reconnects and sends
// Resume(Page: session); the destination, which waits for it, answers
// (pre-copy: AckResumed, or AckReady if the Commit never came, and the
// source sends Commit again; post-copy: RecvBitmap chunks naming the pages
// it holds and Ack(AckHeld), or AckComplete), and the exchange goes on
// from there.
package wire

package wire

import "github.com/livemig/livemig/transport"

// Message kinds, with the class the framing carries them as (see
// transport.Class). Source to destination: Page, EndRound, State,
// Switchover, Done, Commit, Discard, Resume, Error. Destination to source
// (the return path): Request, Ack, RecvBitmap, Error. Kind 13 is the
// transport's own heartbeat (transport.KindHeartbeat).
const (
	// KindPage (records) is one page: Page is its number, Enc says how
	// Data encodes it. Pages travel in batches.
	KindPage transport.Kind = 1
	// KindEndRound (control) ends a pre-copy round: Arg is its number.
	// Post-copy sets FlagAck in Arg to ask for Ack(AckRound), and ends its
	// urgent connection with one.
	KindEndRound transport.Kind = 2
	// KindState (blob) carries the CPU and device state in Data.
	KindState transport.Kind = 3
	// KindSwitchover (control) says the source has paused the guest: Page
	// is the migration's session id (not 0), Arg the final round's number
	// in its low 32 bits (post-copy: with FlagUrgent).
	KindSwitchover transport.Kind = 4
	// KindDone (control) says every page and the state are sent: Arg is
	// the source's digest of the guest's memory (0: none).
	KindDone transport.Kind = 5
	// KindCommit (control) hands the guest over: the destination may
	// resume it.
	KindCommit transport.Kind = 6
	// KindError (priority), either way, says the sender gives up: Data is
	// a UTF-8 message. From a destination, ErrorNotResumed in Arg with the
	// session in Page promises that it never resumes the guest (ErrorMsg,
	// PeerErrorOf).
	KindError transport.Kind = 7
	// KindRequest (priority, return path) asks for pages ahead of the
	// post-copy push: Page is the first, Arg how many (1 or more), all
	// within the guest.
	KindRequest transport.Kind = 8
	// KindAck (priority) acknowledges: Arg is an Ack code, Page and Data
	// what the code says.
	KindAck transport.Kind = 9
	// KindDiscard (bitmap; post-copy, hybrid) names pages whose copy at
	// the destination is stale (dirtied at the source since it was sent):
	// the destination makes them missing again before it resumes the
	// guest. Page: the first page of the chunk, a multiple of 64; Data: a
	// bitmap chunk (see CheckBitmap).
	KindDiscard transport.Kind = 10
	// KindRecvBitmap (bitmap; post-copy recovery, return path) names the
	// pages the destination holds, after a reconnection: chunks like
	// KindDiscard's, then Ack(AckHeld).
	KindRecvBitmap transport.Kind = 11
	// KindResume (control; recovery) is the source's first message on a
	// new connection after a cut: Page is the migration's session id, as
	// sent in its KindSwitchover (post-copy: Arg has FlagUrgent if the
	// source brings a new urgent connection).
	KindResume transport.Kind = 12
)

func init() {
	for _, d := range []struct {
		k    transport.Kind
		name string
		c    transport.Class
	}{
		{KindPage, "Page", transport.ClassRecords},
		{KindEndRound, "EndRound", transport.ClassControl},
		{KindState, "State", transport.ClassBlob},
		{KindSwitchover, "Switchover", transport.ClassControl},
		{KindDone, "Done", transport.ClassControl},
		{KindCommit, "Commit", transport.ClassControl},
		{KindError, "Error", transport.ClassPriority},
		{KindRequest, "Request", transport.ClassPriority},
		{KindAck, "Ack", transport.ClassPriority},
		{KindDiscard, "Discard", transport.ClassBitmap},
		{KindRecvBitmap, "RecvBitmap", transport.ClassBitmap},
		{KindResume, "Resume", transport.ClassControl},
	} {
		transport.DefineKind(d.k, d.name, d.c)
	}
}

// Ack codes carried in a KindAck message's Arg.
const (
	// AckRound (destination): everything sent before the EndRound that
	// asked for it (FlagAck) is applied; Page: that EndRound's round.
	AckRound = 1
	// AckReady (destination): everything is received, verified and
	// loaded, and it waits for Commit; Page: its digest.
	AckReady = 2
	// AckResumed (destination): the guest runs at the destination.
	AckResumed = 3
	// AckComplete (post-copy, destination): it holds every page and its
	// digest matched the source's Done; Page: its digest, Data: its
	// post-copy figures (the engine defines the layout).
	AckComplete = 4
	// AckHeld (destination) ends a KindRecvBitmap after a reconnection;
	// Page: how many pages the destination holds.
	AckHeld = 5
	// AckReleased (source) acknowledges the outcome, the AckResumed of
	// pre-copy or the AckComplete of post-copy: the source knows it and
	// will not come back to ask.
	AckReleased = 6
)

// Flags in a message's Arg, above the 32 bits of a round number.
const (
	// FlagUrgent, in KindSwitchover's and KindResume's Arg (post-copy),
	// says the source sends requested pages on a connection of their own
	// (the urgent connection), which the destination takes too.
	FlagUrgent = 1 << 32
	// FlagAck, in KindEndRound's Arg (post-copy), asks the destination for
	// Ack(AckRound) once it has applied everything sent before. Such an
	// EndRound ends no round.
	FlagAck = 1 << 33
	// FlagPostCopy, in KindSwitchover's Arg, says the destination resumes
	// the guest before it holds every page (post-copy, hybrid); without it
	// the switchover is pre-copy's stop-and-copy: the rest of the pages,
	// the state and Done follow before the Commit.
	FlagPostCopy = 1 << 34
)

// ErrorNotResumed, in the Arg of a KindError a destination sends with the
// migration's session in Page, promises that it has not resumed the guest
// and never will for this migration: a source that receives it for its
// session may resume its guest even after the Commit (see ErrorMsg,
// PeerErrorOf).
const ErrorNotResumed = 1

package precopy

import (
	"context"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

// Handoff is where pre-copy's rounds left a migration that goes on by
// post-copy: what HandOff returns for package postcopy's Continue. The
// guest still runs at the source; nothing is paused.
type Handoff struct {
	// Conn is the migration's connection, its handshake done, with nothing
	// read past the destination's answer to the barrier: the caller owns it
	// and must close it.
	Conn transport.Conn
	// Session is the migration's session id (the Switchover's).
	Session uint64
	// Start is when the migration began, on Config.Clock.
	Start time.Time
	// Sent names, in the dirty log's layout (livemig.WordsFor of the
	// guest's pages), the pages sent at least once; Dirty the pages the
	// last sync of the dirty log found written since they were sent (or
	// deferred, never sent). A page in Sent and not in Dirty is current at
	// the destination; one in both is stale there. The dirty log runs on:
	// the next sync names what the guest wrote since.
	Sent, Dirty []uint64
	// Digest is the end-to-end digest of every page as last sent (nil with
	// Config.NoVerify): post-copy goes on updating it.
	Digest *verify.Digest
	// Report holds the rounds and the figures so far (bytes as written on
	// Conn, codec statistics).
	Report *livemig.Report
}

// HandOff runs pre-copy as Migrate does, with one more way for the rounds
// to end: when cfg.OnNonConvergence is PostCopy and the guest does not
// converge, or on every stop with cfg.AlwaysPostCopy, it does not pause the
// guest. It asks the destination for a barrier (an EndRound flagged
// wire.FlagAck, answered by Ack(AckRound): every page before it is
// applied), lifts any throttle, and returns the Handoff with a nil error:
// the caller goes on by post-copy (postcopy.Continue) over Handoff.Conn.
// Otherwise the Handoff is nil and the report and error are Migrate's (the
// migration ended by stop-and-copy, or failed with the guest running at the
// source, the connection closed). The destination must accept both ends:
// package postcopy's Receive does.
func HandOff(ctx context.Context, conn transport.Conn, src Source, cfg Config) (*livemig.Report, *Handoff, error) {
	return migrate(ctx, conn, src, cfg, true)
}

// barrierAndHandOff ends the rounds after round by a hand-off: the barrier,
// then the Handoff.
func (m *migration) barrierAndHandOff(ctx context.Context, round int) error {
	if th, ok := m.src.VM.(livemig.Throttler); ok && m.throttle > 0 {
		// Post-copy pauses the guest soon, or resumes it here on failure:
		// at full speed either way.
		th.SetThrottle(0)
		m.throttle = 0
	}
	m.barrier.Store(true)
	if err := m.conn.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: uint64(round) | wire.FlagAck}); err != nil {
		return m.linkErr("hand-off barrier", err)
	}
	if err := m.conn.Flush(ctx); err != nil {
		return m.linkErr("hand-off barrier", err)
	}
	if _, err := m.await(ctx, wire.AckRound); err != nil {
		return err
	}
	for range m.ret { // the reader ends after the Ack: wait for it
	}
	m.handoff = &Handoff{Conn: m.conn, Session: m.session, Start: m.start,
		Sent: m.sent, Dirty: m.dirty, Digest: m.digest}
	return nil
}

package precopy

import (
	"context"
	"errors"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/handover"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// The hand-over, as both sides see it.
//
// Source: Running → (Pause) Paused → (Done sent) Paused → (AckReady)
// Committing → (Commit sent) InDoubt → (AckResumed) Released.
// Destination: Receiving → (Done checked, state loaded, AckReady sent)
// Ready → (Commit) Resumed → (AckReleased, or the source gone) done.
//
// The source resumes its guest on any failure before it sends the Commit,
// and after it only when the destination promised not to resume
// (KindError with wire.ErrorNotResumed). A destination sends that
// promise whenever it gives up before resuming. Once the Commit is sent and
// the link fails before either AckResumed or the promise arrives, the
// outcome is unknown to the source: it redials (Config.Redial) and asks
// with KindResume(session); a destination in Ready or Resumed waits for
// that (Config.Reaccept) and answers AckReady (then the source sends the
// Commit again) or AckResumed. The window in which the source cannot know
// is the time between its Commit and the answer: it cannot be zero (the
// two-generals problem), so it is bounded by Config.HandoverTimeout; past
// it Migrate returns an *InDoubtError and the guest stays paused at the
// source, never run twice. Resolve asks again.

// InDoubtError is the error Migrate returns when it sent the Commit and
// could not learn, within Config.HandoverTimeout, whether the destination
// resumed the guest. The guest is paused at the source and must stay so: it
// may be running at the destination. Ask again with Resolve on a new
// connection to the destination (which answers while its Config.Reaccept
// waits); the destination's own result (ReceiveReport.Resumed) says it too.
// It wraps livemig.ErrInDoubt and the last failure.
type InDoubtError struct {
	Session uint64 // the migration's session id, for Resolve
	Err     error  // the last failure
}

func (e *InDoubtError) Error() string {
	return fmt.Sprintf("precopy: guest paused here, hand-over outcome unknown (session %016x): do not resume it here before Resolve says so: %v",
		e.Session, e.Err)
}

func (e *InDoubtError) Unwrap() []error { return []error{livemig.ErrInDoubt, e.Err} }

// Resolve asks the destination at the other end of conn (a new connection,
// handshake done) what became of the migration session, and finishes the
// hand-over: if the destination holds the guest ready but never got the
// Commit, Resolve sends it again. It returns resumed=true when the guest
// runs at the destination (release the source's guest), resumed=false with
// a nil error when the destination promised never to resume it (resume it
// at the source), and an error when it could not learn either (the guest
// must stay paused; ask again). The caller keeps conn and closes it.
func Resolve(ctx context.Context, conn transport.Conn, session uint64) (resumed bool, err error) {
	if err := conn.Send(ctx, transport.Msg{Kind: wire.KindResume, Page: session}); err != nil {
		return false, fmt.Errorf("precopy: resolve: ask: %w", err)
	}
	if err := conn.Flush(ctx); err != nil {
		return false, fmt.Errorf("precopy: resolve: ask: %w", err)
	}
	var msg transport.Msg
	for {
		if err := conn.Recv(ctx, &msg); err != nil {
			return false, fmt.Errorf("precopy: resolve: waiting for the answer: %w", err)
		}
		switch {
		case msg.Kind == wire.KindAck && msg.Arg == wire.AckResumed:
			_ = conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReleased})
			_ = conn.Flush(ctx)
			return true, nil
		case msg.Kind == wire.KindAck && msg.Arg == wire.AckReady:
			// Ready, the Commit never came: send it again.
			if err := conn.Send(ctx, transport.Msg{Kind: wire.KindCommit}); err != nil {
				return false, fmt.Errorf("precopy: resolve: commit again: %w", err)
			}
		case msg.Kind == wire.KindError:
			pe := wire.PeerErrorOf(msg, session)
			if pe.NotResumed {
				return false, nil
			}
			return false, fmt.Errorf("precopy: resolve: %w", pe)
		default:
			return false, fmt.Errorf("precopy: resolve: %v message: %w", msg.Kind, livemig.ErrCorrupt)
		}
	}
}

// resolve runs after an ambiguous failure of the Commit (cause): it redials
// and asks until it knows or cfg.HandoverTimeout passes, even if the
// caller's ctx has ended (a guest in doubt must not be left so for want of
// asking). It returns nil when the guest runs at the destination, a
// *wire.PeerError with NotResumed when it does not (the caller resumes
// the source), an *InDoubtError otherwise.
func (m *migration) resolve(ctx context.Context, cause error) error {
	if m.cfg.Redial == nil {
		return &InDoubtError{Session: m.session, Err: cause}
	}
	m.cfg.Logger.Info("hand-over outcome unknown; asking the destination", "session", m.session, "err", cause)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.HandoverTimeout)
	defer cancel()
	for n := 1; ; n++ {
		if err := handover.Sleep(rctx, handover.Backoff(n)); err != nil {
			return &InDoubtError{Session: m.session, Err: cause}
		}
		conn, err := m.cfg.Redial(rctx)
		if err == nil {
			var resumed bool
			resumed, err = Resolve(rctx, conn, m.session)
			conn.Close()
			if err == nil {
				if resumed {
					m.cfg.Logger.Info("the destination resumed the guest", "session", m.session)
					return nil
				}
				return &wire.PeerError{Message: "the destination did not resume the guest", NotResumed: true}
			}
		}
		cause = err
		m.cfg.Logger.Info("asking the destination failed", "err", err)
	}
}

// awaitResume waits, at a destination in Ready after a failure (cause), for
// the source to come back through cfg.Reaccept with this session, and
// answers it: AckResumed if resumed, AckReady otherwise. It returns the new
// connection; an error wrapping livemig.ErrPeer when the source comes back
// to say it gave up (handover.Abandon); another error when Reaccept gives up
// or cfg.MaxReconnects connections came without the session.
func awaitResume(ctx context.Context, cfg *Config, session uint64, resumed bool, cause error) (transport.Conn, error) {
	for range cfg.MaxReconnects {
		conn, err := cfg.Reaccept(ctx)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("precopy: no source came back: %w", err), cause)
		}
		var msg transport.Msg
		fctx, cancel := context.WithTimeout(ctx, handover.FirstMessageWait(conn))
		err = conn.Recv(fctx, &msg)
		cancel()
		switch {
		case err != nil:
			cause = err
		case msg.Kind == wire.KindError && msg.Page == session:
			conn.Close()
			return nil, fmt.Errorf("precopy: the source came back to say it gave up: %s: %w", msg.Data, livemig.ErrPeer)
		case msg.Kind != wire.KindResume || msg.Page != session:
			_ = conn.Send(ctx, transport.Msg{Kind: wire.KindError,
				Data: fmt.Appendf(nil, "%v message for session %016x; this destination waits for session %016x", msg.Kind, msg.Page, session)})
			_ = conn.Flush(ctx)
		default:
			ack := uint64(wire.AckReady)
			if resumed {
				ack = wire.AckResumed
			}
			if err = conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: ack}); err == nil {
				if err = conn.Flush(ctx); err == nil {
					return conn, nil
				}
			}
			cause = err
		}
		conn.Close()
	}
	return nil, fmt.Errorf("precopy: %d reconnections without the source's session: %w", cfg.MaxReconnects, cause)
}

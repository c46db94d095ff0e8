package wire

import (
	"errors"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// PeerError is the error a peer's KindError message reports: it gave up,
// saying Message. It wraps livemig.ErrPeer.
type PeerError struct {
	Message string
	// NotResumed: the peer, a destination, promised never to resume the
	// guest of this migration (ErrorNotResumed, for the session the
	// receiver asked about), so the source may resume it even after its
	// Commit.
	NotResumed bool
}

func (e *PeerError) Error() string {
	if e.NotResumed {
		return "destination failed, guest not resumed there: " + e.Message
	}
	return "peer failed: " + e.Message
}

func (e *PeerError) Unwrap() error { return livemig.ErrPeer }

// PeerErrorOf returns the error m, a KindError, reports. Its promise
// (ErrorNotResumed in Arg) counts only when m.Page is session: a destination
// makes it for the session it received (in KindSwitchover's Page), so that
// one that never knew this migration, say a new Receive that a reconnecting
// source reached, cannot make it.
func PeerErrorOf(m transport.Msg, session uint64) *PeerError {
	return &PeerError{Message: string(m.Data), NotResumed: m.Arg&ErrorNotResumed != 0 && session != 0 && m.Page == session}
}

// NotResumed reports whether err holds a *PeerError with the promise not to
// resume.
func NotResumed(err error) bool {
	var pe *PeerError
	return errors.As(err, &pe) && pe.NotResumed
}

// ErrorMsg returns the KindError message that reports err. A destination
// that has not resumed the guest of session (not 0) and never will passes
// it, and the message carries the promise for that session; 0 makes none.
func ErrorMsg(err error, session uint64) transport.Msg {
	m := transport.Msg{Kind: KindError, Data: []byte(err.Error())}
	if session != 0 {
		m.Arg, m.Page = ErrorNotResumed, session
	}
	return m
}

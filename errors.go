package livemig

import (
	"errors"
	"fmt"
)

// Sentinel errors shared by every package. Match them with errors.Is.
var (
	// ErrNotSupported: the kernel, platform or peer lacks a feature
	// (KVM, userfaultfd, a protocol feature).
	ErrNotSupported = errors.New("livemig: not supported")
	// ErrPageRange: a page number past the guest's page count.
	ErrPageRange = errors.New("livemig: page number out of range")
	// ErrCorrupt: received data failed a check (a checksum, a length, a
	// format rule). Errors that wrap it say what and where.
	ErrCorrupt = errors.New("livemig: corrupt data")
	// ErrVersion: the peer speaks another protocol version or has another
	// page geometry.
	ErrVersion = errors.New("livemig: incompatible peer")
	// ErrClosed: the link or connection was closed.
	ErrClosed = errors.New("livemig: closed")
	// ErrPeer: the peer reported an error and gave up.
	ErrPeer = errors.New("livemig: peer failed")
	// ErrNotConverged: pre-copy did not converge and the policy said to
	// abort; the source guest keeps running.
	ErrNotConverged = errors.New("livemig: migration did not converge")
	// ErrVerify: the end-to-end check found that the destination's memory
	// differs from what the source sent; the destination does not resume.
	ErrVerify = errors.New("livemig: verification failed")
	// ErrIncomplete: the destination's migration ended before it had
	// received the whole guest; it did not resume.
	ErrIncomplete = errors.New("livemig: migration incomplete")
	// ErrInDoubt: the source handed the guest over (sent the Commit) and
	// could not learn whether the destination resumed it. The guest is
	// paused at the source and must stay so until the outcome is known:
	// resuming it could run it twice. The engine's error says how to ask
	// again.
	ErrInDoubt = errors.New("livemig: hand-over outcome unknown, guest paused at the source")
)

// PageError is an error about one page: Op is what was being done
// ("read", "write", "decode", ...), Page the page number.
type PageError struct {
	Op   string
	Page uint64
	Err  error
}

func (e *PageError) Error() string {
	return fmt.Sprintf("livemig: %s page %d: %v", e.Op, e.Page, e.Err)
}

func (e *PageError) Unwrap() error { return e.Err }

// StreamError is an error at a place in a byte stream: Offset is the byte
// offset from the stream's start where the bad item begins, What names it.
// It wraps ErrCorrupt, io.ErrUnexpectedEOF or another cause.
type StreamError struct {
	Offset int64
	What   string
	Err    error
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("livemig: %s at stream offset %d: %v", e.What, e.Offset, e.Err)
}

func (e *StreamError) Unwrap() error { return e.Err }

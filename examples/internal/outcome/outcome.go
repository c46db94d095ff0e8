// Package outcome is what the example migration commands (memmigrate, kvm)
// say when a side ends: where the guest is, as the side's last line on
// stderr, and the process's exit status. Both commands use the same words
// and statuses, so a script that drives either reads them alike.
//
// A side's error is an *Error when the side knows where the guest is; any
// other error is a set-up failure before the migration began (the source's
// guest never paused, the destination received nothing).
package outcome

import (
	"errors"
	"fmt"
	"strings"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/precopy"
)

// Exit statuses besides 0 (success).
const (
	ExitFailed = 1 // the migration failed: the guest runs at the source, not at the destination
	ExitUsage  = 2 // bad flags: nothing was done
	ExitSplit  = 3 // the guest is paused here (in doubt, or after a failure), or its memory is split between the hosts
)

// Where the guest is, as each side's last line says it. The %v verbs take
// the error; SrcInDoubt takes the session first.
const (
	SrcDone    = "guest running at the destination (migration complete)"
	SrcHere    = "guest running HERE at the source (migration failed before the hand-over: %v)"
	SrcBack    = "guest running HERE at the source (migration failed: %v)" // the Commit may have gone out
	SrcInDoubt = "guest PAUSED here, outcome unknown (session %016x): %v"
	SrcPaused  = "guest PAUSED here, not resumed at the destination (migration failed and the source was not resumed: %v)"
	SrcSplit   = "guest running at the destination, part of its memory still here only (post-copy link lost: %v)"
	DstResumed = "guest resumed HERE"
	DstWarned  = "guest resumed HERE (the source may be left in doubt: %v)"
	DstSplit   = "guest resumed HERE, part of its memory still at the source only (post-copy link lost: %v)"
	DstNotHere = "guest NOT resumed here: %v"
	DstBroken  = "guest resumed HERE but %v"

	SrcPrefix  = "source: "
	DestPrefix = "destination: "
)

// Error is a side's end with the guest's whereabouts known: Where is its
// last line without the side's prefix, Status its exit status (0 for a
// success with a warning).
type Error struct {
	Status int
	Where  string
	Err    error
}

func (e *Error) Error() string { return e.Where }
func (e *Error) Unwrap() error { return e.Err }

// Failed is a failure with the guest running at the source and not at the
// destination (ExitFailed); format is one of the constants above.
func Failed(format string, err error) error {
	return &Error{Status: ExitFailed, Where: fmt.Sprintf(format, err), Err: err}
}

// Split is an end with the guest paused at the source, or its memory split
// between the hosts (ExitSplit).
func Split(format string, err error) error {
	return &Error{Status: ExitSplit, Where: fmt.Sprintf(format, err), Err: err}
}

// Warned is a destination that resumed the guest, with err as a warning
// (status 0).
func Warned(err error) error {
	return &Error{Status: 0, Where: fmt.Sprintf(DstWarned, err), Err: err}
}

// Broken is a destination that resumed the guest and then failed (the
// guest's own check, say): ExitFailed.
func Broken(err error) error {
	return &Error{Status: ExitFailed, Where: fmt.Sprintf(DstBroken, err), Err: err}
}

// PreCopySource classifies what precopy.Migrate returned: err, the source
// guest still paused (paused), and whether the engine had begun its
// stop-and-copy (stopping: the Commit may have gone out). nil stays nil.
func PreCopySource(err error, paused, stopping bool) error {
	var doubt *precopy.InDoubtError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &doubt):
		return &Error{Status: ExitSplit, Where: fmt.Sprintf(SrcInDoubt, doubt.Session, doubt.Err), Err: err}
	case paused:
		// Not in doubt, yet not resumed: say so rather than guess.
		return Split(SrcPaused, err)
	case stopping:
		// The engine resumed the guest here: the Commit never went out,
		// or the destination said it did not resume.
		return Failed(SrcBack, err)
	}
	return Failed(SrcHere, err)
}

// PostCopySource classifies what postcopy.Migrate or hybrid.Migrate
// returned: err, whether the Commit went out (handed), and the source guest
// still paused (paused). nil stays nil.
func PostCopySource(err error, handed, paused bool) error {
	switch {
	case err == nil:
		return nil
	case (handed || errors.Is(err, livemig.ErrIncomplete)) && paused:
		return Split(SrcSplit, err)
	case paused:
		// Not handed over, yet not resumed (the engine resumes the source
		// after such a failure): say so rather than guess.
		return Split(SrcPaused, err)
	case handed:
		// The Commit went out, the destination said it did not resume, and
		// the engine resumed the guest here.
		return Failed(SrcBack, err)
	}
	return Failed(SrcHere, err)
}

// Status is the exit status for err, as a side returned it.
func Status(err error) int {
	var e *Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &e):
		return e.Status
	}
	return ExitFailed
}

// LastLine is the line that ends a side's stderr: where the guest is, on
// one line (an error may join several).
func LastLine(dest bool, err error) string {
	var e *Error
	var s string
	switch {
	case err == nil && dest:
		s = DestPrefix + DstResumed
	case err == nil:
		s = SrcPrefix + SrcDone
	case errors.As(err, &e) && dest:
		s = DestPrefix + e.Where
	case errors.As(err, &e):
		s = SrcPrefix + e.Where
	case dest:
		// Set-up failed (flags, listening, memory): nothing was received.
		s = DestPrefix + fmt.Sprintf(DstNotHere, err)
	default:
		// Set-up failed before the migration began: the guest never paused.
		s = SrcPrefix + fmt.Sprintf(SrcHere, err)
	}
	return strings.ReplaceAll(s, "\n", "; ")
}

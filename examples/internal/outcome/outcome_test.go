package outcome

import (
	"errors"
	"fmt"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/precopy"
)

// The last line says where the guest is, on one line, and the exit status
// agrees.
func TestLastLine(t *testing.T) {
	joined := errors.Join(errors.New("first"), errors.New("second"))
	for _, c := range []struct {
		dest   bool
		err    error
		line   string
		status int
	}{
		{false, nil, "source: guest running at the destination (migration complete)", 0},
		{true, nil, "destination: guest resumed HERE", 0},
		{false, Failed(SrcHere, joined), "source: guest running HERE at the source (migration failed before the hand-over: first; second)", 1},
		{true, Failed(DstNotHere, joined), "destination: guest NOT resumed here: first; second", 1},
		{false, joined, "source: guest running HERE at the source (migration failed before the hand-over: first; second)", 1},
		{true, joined, "destination: guest NOT resumed here: first; second", 1},
		{false, &Error{Status: ExitSplit, Where: "guest PAUSED here, outcome unknown (session 0000000000000007): x", Err: joined},
			"source: guest PAUSED here, outcome unknown (session 0000000000000007): x", 3},
		{false, Failed(SrcBack, joined), "source: guest running HERE at the source (migration failed: first; second)", 1},
		{false, Split(SrcPaused, joined),
			"source: guest PAUSED here, not resumed at the destination (migration failed and the source was not resumed: first; second)", 3},
		{true, Warned(joined), "destination: guest resumed HERE (the source may be left in doubt: first; second)", 0},
		{true, Broken(joined), "destination: guest resumed HERE but first; second", 1},
	} {
		if got := LastLine(c.dest, c.err); got != c.line {
			t.Errorf("LastLine(%v, %v) = %q, want %q", c.dest, c.err, got, c.line)
		}
		if got := Status(c.err); got != c.status {
			t.Errorf("Status(%v) = %d, want %d", c.err, got, c.status)
		}
	}
}

// The engines' ends map onto where the guest is.
func TestSourceClassification(t *testing.T) {
	e := errors.New("cut")
	doubt := fmt.Errorf("wrapped: %w", &precopy.InDoubtError{Session: 7, Err: e})
	incomplete := fmt.Errorf("push: %w", livemig.ErrIncomplete)
	for _, c := range []struct {
		name   string
		err    error
		line   string
		status int
	}{
		{"pre-copy ok", PreCopySource(nil, true, true), "source: " + SrcDone, 0},
		{"pre-copy in doubt", PreCopySource(doubt, true, true), "source: guest PAUSED here, outcome unknown (session 0000000000000007): cut", 3},
		{"pre-copy paused", PreCopySource(e, true, false), "source: " + fmt.Sprintf(SrcPaused, e), 3},
		{"pre-copy back after the stop", PreCopySource(e, false, true), "source: " + fmt.Sprintf(SrcBack, e), 1},
		{"pre-copy failed early", PreCopySource(e, false, false), "source: " + fmt.Sprintf(SrcHere, e), 1},
		{"post-copy ok", PostCopySource(nil, true, true), "source: " + SrcDone, 0},
		{"post-copy split", PostCopySource(e, true, true), "source: " + fmt.Sprintf(SrcSplit, e), 3},
		{"post-copy incomplete", PostCopySource(incomplete, false, true), "source: " + fmt.Sprintf(SrcSplit, incomplete), 3},
		{"post-copy paused", PostCopySource(e, false, true), "source: " + fmt.Sprintf(SrcPaused, e), 3},
		{"post-copy back", PostCopySource(e, true, false), "source: " + fmt.Sprintf(SrcBack, e), 1},
		{"post-copy failed early", PostCopySource(e, false, false), "source: " + fmt.Sprintf(SrcHere, e), 1},
	} {
		if got := LastLine(false, c.err); got != c.line || Status(c.err) != c.status {
			t.Errorf("%s: %q, status %d; want %q, %d", c.name, got, Status(c.err), c.line, c.status)
		}
	}
}

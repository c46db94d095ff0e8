package precopy_test

import (
	"context"
	"errors"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// HandOff ends the rounds at a barrier the destination answers, without
// pausing: the Handoff names every page sent (round 1 sends them all) and
// what the last sync found dirty, carries the connection (usable: nothing
// read past the barrier) and the rounds' report. Migrate refuses the
// policies only HandOff can carry out.
func TestHandOff(t *testing.T) {
	const pages = 256
	ctx := context.Background()
	src := newSource(t, pages)
	dst := newDest(t, pages)
	a, b := transport.Pipe(1 << 20)
	ca, cb, err := testkit.OpenPair(ctx, a, b, transport.Hello{PageSize: pageSize, PageCount: pages})
	if err != nil {
		t.Fatal(err)
	}
	dvm := &vm{VM: dst}
	derr := make(chan error, 1)
	go func() {
		_, err := precopy.Receive(ctx, cb, precopy.Destination{Sink: dst, VM: dvm, Pages: pages, PageSize: pageSize}, precopy.Config{})
		derr <- err
	}()
	// Writes between the rounds, so that the last sync finds page 9 dirty.
	dirty := testkit.DirtyOnSync(src, 9)
	rep, h, err := precopy.HandOff(ctx, ca, precopy.Source{Memory: src, Dirty: dirty, VM: src}, precopy.Config{AlwaysPostCopy: true, MaxRounds: 2})
	if err != nil || h == nil {
		t.Fatalf("HandOff: %v, handoff %v", err, h)
	}
	if src.Paused() {
		t.Fatal("the guest was paused by a hand-off")
	}
	sent, _ := bitmap.FromWords(h.Sent, pages)
	d, _ := bitmap.FromWords(h.Dirty, pages)
	if sent.Count() != pages || !d.Test(9) || len(rep.Rounds) < 1 || len(rep.Rounds) > 2 || h.Report != rep || h.Digest == nil || h.Session == 0 {
		t.Fatalf("handoff: %d pages sent, page 9 dirty %v, %d rounds, digest %v, session %x", sent.Count(), d.Test(9), len(rep.Rounds), h.Digest != nil, h.Session)
	}
	// The connection is the caller's, and still works: the destination
	// reads what comes after the barrier.
	if err := h.Conn.Send(ctx, transport.Msg{Kind: wire.KindError, Data: []byte("the test gives up")}); err != nil {
		t.Fatalf("send on the handed-off connection: %v", err)
	}
	_ = h.Conn.Flush(ctx)
	if err := <-derr; !errors.Is(err, livemig.ErrPeer) || dvm.resumes.Load() != 0 {
		t.Fatalf("destination after the source gave up: %v, %d resumes", err, dvm.resumes.Load())
	}
	h.Conn.Close()

	for _, cfg := range []precopy.Config{{OnNonConvergence: precopy.PostCopy}, {AlwaysPostCopy: true}} {
		a, b := transport.Pipe(1 << 16)
		ca, cb, err := testkit.OpenPair(ctx, a, b, transport.Hello{PageSize: pageSize, PageCount: pages})
		if err != nil {
			t.Fatal(err)
		}
		cb.Close()
		if _, err := precopy.Migrate(ctx, ca, precopy.Source{Memory: src, Dirty: src, VM: src}, cfg); !errors.Is(err, livemig.ErrNotSupported) {
			t.Errorf("Migrate with %+v: %v, want ErrNotSupported", cfg, err)
		}
	}
}

package postcopy

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// hostileRequests reach past a guest of pages pages; the transport carries
// them as they are (the range is the protocol's to check).
func hostileRequests(pages uint64) []struct {
	name        string
	page, count uint64
} {
	return []struct {
		name        string
		page, count uint64
	}{
		{"page past the end", pages, 1},
		{"count past the end", pages - 1, 2},
		{"count wrapping around", 1, math.MaxUint64},
		{"far past the end", math.MaxUint64, 1},
	}
}

func TestCoreRequestRange(t *testing.T) {
	const pages = 100
	c := committed(t, CoreConfig{Pages: pages})
	for _, tc := range hostileRequests(pages) {
		if err := c.Request(tc.page, tc.count); !errors.Is(err, livemig.ErrPageRange) {
			t.Errorf("%s: Request(%d, %d) = %v, want ErrPageRange", tc.name, tc.page, tc.count, err)
		}
	}
	// Nothing was asked for: the push starts at page 0.
	if o := step(c, t0, false); o.Op != OpPage || o.Page != 0 || o.Pulled {
		t.Fatalf("after refused requests: %+v", o)
	}
	// The last page, and a count of 0 (one page), are fine.
	if err := c.Request(pages-1, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Request(50, 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint64{99, 50} {
		if o := step(c, t0, false); o.Op != OpPage || o.Page != want || !o.Pulled {
			t.Fatalf("requested step %+v, want page %d", o, want)
		}
	}
}

// A destination that asks for pages past the guest's end fails the
// migration with an error wrapping ErrPageRange, after the hand-over hence
// with ErrIncomplete, and the source does not resume its guest.
func TestMigrateRefusesHostileRequest(t *testing.T) {
	const pages = 64
	for _, tc := range hostileRequests(pages) {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			src, dst := scriptedPair(t, pages)
			defer dst.Close()
			mem := testkit.NewSource(t, 4096, pages)
			vm := &fuzzVM{}
			res := make(chan error, 1)
			go func() {
				_, err := Migrate(ctx, src, livemig.Source{Memory: mem, VM: vm}, Config{})
				res <- err
			}()
			recvUntil := func(k transport.Kind) {
				t.Helper()
				var m transport.Msg
				for {
					if err := dst.Recv(ctx, &m); err != nil {
						t.Fatalf("waiting for %v: %v", k, err)
					}
					if m.Kind == k {
						return
					}
				}
			}
			send := func(m transport.Msg) {
				t.Helper()
				if err := dst.Send(ctx, m); err != nil {
					t.Fatal(err)
				}
				if err := dst.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			recvUntil(wire.KindState)
			send(transport.Msg{Kind: wire.KindAck, Arg: wire.AckReady})
			recvUntil(wire.KindCommit)
			send(transport.Msg{Kind: wire.KindAck, Arg: wire.AckResumed})
			send(transport.Msg{Kind: wire.KindRequest, Page: tc.page, Arg: tc.count})
			err := <-res
			if !errors.Is(err, livemig.ErrPageRange) || !errors.Is(err, livemig.ErrIncomplete) {
				t.Fatalf("Migrate: %v, want ErrPageRange and ErrIncomplete", err)
			}
			if vm.resumes != 0 {
				t.Fatal("the source resumed its guest after the hand-over")
			}
		})
	}
}

// A source that sends a Request, a return-path message, fails the
// destination as corrupt input, before the guest resumes there.
func TestReceiveRefusesRequest(t *testing.T) {
	const pages = 64
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, dst := scriptedPair(t, pages)
	defer src.Close()
	mem, err := NewHeapMemory(4096, pages, nil)
	if err != nil {
		t.Fatal(err)
	}
	vm := &fuzzVM{}
	for _, m := range []transport.Msg{
		{Kind: wire.KindSwitchover, Page: 7, Arg: 1 | wire.FlagPostCopy},
		{Kind: wire.KindRequest, Page: pages, Arg: 1},
	} {
		if err := src.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := Receive(ctx, dst, Destination{Memory: mem, VM: vm, Pages: pages, PageSize: 4096}, Config{})
	if !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("Receive: %v, want ErrCorrupt", err)
	}
	if vm.resumes != 0 || (rep != nil && rep.Resumed) {
		t.Fatal("the destination resumed the guest")
	}
}

package postcopy

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// scriptedPair opens a handshaken pair of Conns over an in-memory pipe.
func scriptedPair(t *testing.T, pages uint64) (src, dst transport.Conn) {
	t.Helper()
	a, b := transport.Pipe(0)
	src, dst, err := testkit.OpenPair(context.Background(), a, b,
		transport.Hello{PageSize: 4096, PageCount: pages, Features: transport.FeatPostCopy | transport.FeatDigest})
	if err != nil {
		t.Fatal(err)
	}
	return src, dst
}

// A source that reconnects with an urgent connection to a destination
// without ReacceptUrgent is refused, as a mismatched Urgent is at the
// switchover; the destination gives up when no other source comes, and
// says the memory is split.
func TestRejoinRefusesUnexpectedUrgent(t *testing.T) {
	const pages, session = 64, 7
	ctx := context.Background()
	src, dst := scriptedPair(t, pages)
	again, againDst := scriptedPair(t, pages)
	mem, err := NewHeapMemory(4096, pages, nil)
	if err != nil {
		t.Fatal(err)
	}
	reaccepts := 0
	cfg := Config{Reaccept: func(ctx context.Context) (transport.Conn, error) {
		if reaccepts++; reaccepts == 1 {
			return againDst, nil
		}
		return nil, errors.New("test: no other source")
	}}
	type result struct {
		rep *ReceiveReport
		err error
	}
	res := make(chan result, 1)
	// A destination that wrongly went on would wait for pages forever: the
	// deadline turns that into a failure below (no ErrVersion).
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go func() {
		rep, err := Receive(rctx, dst, Destination{Memory: mem, VM: &fuzzVM{}, Pages: pages, PageSize: 4096}, cfg)
		res <- result{rep, err}
	}()
	// The first session: switchover, state, Ack(Ready), Commit, then a cut.
	for _, m := range []transport.Msg{
		{Kind: wire.KindSwitchover, Page: session, Arg: 1 | wire.FlagPostCopy},
		{Kind: wire.KindState, Data: make([]byte, 64)},
	} {
		if err := src.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var ack transport.Msg
	if err := src.Recv(ctx, &ack); err != nil || ack.Kind != wire.KindAck || ack.Arg != wire.AckReady {
		t.Fatalf("want Ack(Ready), got %v %v", ack, err)
	}
	if err := src.Send(ctx, transport.Msg{Kind: wire.KindCommit}); err != nil {
		t.Fatal(err)
	}
	if err := src.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Recv(ctx, &ack); err != nil || ack.Kind != wire.KindAck || ack.Arg != wire.AckResumed {
		t.Fatalf("want Ack(Resumed), got %v %v", ack, err)
	}
	src.Close()
	// The reconnection asks for an urgent connection.
	if err := again.Send(ctx, transport.Msg{Kind: wire.KindResume, Page: session, Arg: wire.FlagUrgent}); err != nil {
		t.Fatal(err)
	}
	if err := again.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-res
	again.Close()
	if !errors.Is(r.err, livemig.ErrVersion) || !errors.Is(r.err, livemig.ErrIncomplete) || reaccepts != 2 {
		t.Fatalf("Receive: %v after %d reaccepts; want ErrVersion and ErrIncomplete after 2", r.err, reaccepts)
	}
	if r.rep == nil || !r.rep.Resumed || r.rep.Complete {
		t.Fatalf("report %+v", r.rep)
	}
}

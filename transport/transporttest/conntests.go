package transporttest

import (
	"context"
	"errors"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

func runConnTests(t *testing.T, mk func(t *testing.T) pair, strict bool) {
	run(t, "RoundTrip", func(t *testing.T) { testRoundTrip(t, mk(t), strict) })
	run(t, "LargeBatch", func(t *testing.T) { testLargeBatch(t, mk(t), strict) })
	run(t, "ReturnPath", func(t *testing.T) { testReturnPath(t, mk(t), strict) })
	run(t, "CloseUnblocksRecv", func(t *testing.T) { testCloseUnblocksRecv(t, mk(t)) })
	run(t, "CloseUnblocksSend", func(t *testing.T) { testCloseUnblocksSend(t, mk(t)) })
	run(t, "CancelUnblocksRecv", func(t *testing.T) { testCancelUnblocksRecv(t, mk(t)) })
	run(t, "ExpiredContext", func(t *testing.T) { testExpiredContext(t, mk(t)) })
}

// exchange sends want on from while to receives them, and checks what
// arrived.
func exchange(t *testing.T, from, to transport.Conn, want []transport.Msg, strict bool) {
	t.Helper()
	sent := goErr(func() error { return sendAll(bg, from, want) })
	got, err := recvN(bg, to, len(want))
	if err != nil {
		t.Fatalf("recv after %d of %d messages: %v", len(got), len(want), err)
	}
	if err := await(t, sent, "send"); err != nil {
		t.Fatal(err)
	}
	if err := checkOrder(want, got, strict, false); err != nil {
		t.Fatal(err)
	}
}

// everyKind returns one message of every source-to-destination kind, with
// a state blob of stateLen bytes.
func everyKind(g *gen, stateLen int) []transport.Msg {
	return []transport.Msg{
		{Kind: wire.KindPage, Enc: transport.EncRaw, Page: 7, Data: g.bytes(PageSize)},
		{Kind: wire.KindPage, Enc: transport.EncZero, Page: 8},
		{Kind: wire.KindPage, Enc: transport.EncXBZRLE, Page: 9, Data: g.bytes(100)},
		{Kind: wire.KindPage, Enc: transport.EncLZ4, Page: 10, Data: g.bytes(PageSize + 20)},
		{Kind: wire.KindEndRound, Arg: 1},
		{Kind: wire.KindPage, Enc: transport.EncRaw, Page: 7, Data: g.bytes(PageSize)},
		{Kind: wire.KindDiscard, Page: 64, Data: wire.AppendBitmap(nil, []uint64{1, 1 << 63})},
		{Kind: wire.KindSwitchover, Arg: 2},
		{Kind: wire.KindState, Data: g.bytes(stateLen)},
		{Kind: wire.KindState, Data: g.bytes(10)},
		{Kind: wire.KindState},
		{Kind: wire.KindDone, Arg: 0xfeedface_cafebeef},
		{Kind: wire.KindCommit},
		{Kind: wire.KindResume, Page: 0xfeed},
		{Kind: wire.KindError, Data: []byte("source: giving up")},
	}
}

func testRoundTrip(t *testing.T, p pair, strict bool) {
	g := newGen(1)
	// A state blob of 3 MiB does not fit one frame.
	exchange(t, p.a, p.b, everyKind(g, 3<<20+17), strict)
	back := []transport.Msg{
		{Kind: wire.KindRequest, Page: 12, Arg: 3},
		{Kind: wire.KindAck, Arg: wire.AckRound, Page: 1},
		{Kind: wire.KindAck, Arg: wire.AckReady, Page: 0xfeedface_cafebeef},
		{Kind: wire.KindAck, Arg: wire.AckResumed},
		{Kind: wire.KindRecvBitmap, Data: wire.AppendBitmap(nil, []uint64{^uint64(0)})},
		{Kind: wire.KindAck, Arg: wire.AckHeld, Page: 64},
		{Kind: wire.KindError, Data: []byte("destination: giving up")},
	}
	exchange(t, p.b, p.a, back, strict)
}

func testLargeBatch(t *testing.T, p pair, strict bool) {
	g := newGen(2)
	var want []transport.Msg
	want = append(want, g.pages(6000, 1000)...)
	want = append(want, transport.Msg{Kind: wire.KindEndRound, Arg: 1})
	want = append(want, g.pages(4000, 1000)...)
	want = append(want, transport.Msg{Kind: wire.KindDone, Arg: 2})
	exchange(t, p.a, p.b, want, strict)
}

func testReturnPath(t *testing.T, p pair, strict bool) {
	g := newGen(3)
	fwd := append(g.pages(3000, 500), transport.Msg{Kind: wire.KindDone})
	var back []transport.Msg
	for i := range 1000 {
		if i%2 == 0 {
			back = append(back, transport.Msg{Kind: wire.KindRequest, Page: uint64(i) % 500, Arg: 1})
		} else {
			back = append(back, transport.Msg{Kind: wire.KindAck, Arg: wire.AckRound, Page: uint64(i)})
		}
	}
	// Four goroutines at once: each Conn sends and receives.
	fwdSent := goErr(func() error { return sendAll(bg, p.a, fwd) })
	backSent := goErr(func() error { return sendAll(bg, p.b, back) })
	type result struct {
		msgs []transport.Msg
		err  error
	}
	backGot := make(chan result, 1)
	go func() {
		m, err := recvN(bg, p.a, len(back))
		backGot <- result{m, err}
	}()
	got, err := recvN(bg, p.b, len(fwd))
	if err != nil {
		t.Fatalf("forward recv after %d of %d: %v", len(got), len(fwd), err)
	}
	r := await(t, backGot, "return path recv")
	if r.err != nil {
		t.Fatalf("return path recv after %d of %d: %v", len(r.msgs), len(back), r.err)
	}
	if err := await(t, fwdSent, "forward send"); err != nil {
		t.Fatal(err)
	}
	if err := await(t, backSent, "return path send"); err != nil {
		t.Fatal(err)
	}
	if err := checkOrder(fwd, got, strict, false); err != nil {
		t.Fatalf("forward: %v", err)
	}
	if err := checkOrder(back, r.msgs, strict, false); err != nil {
		t.Fatalf("return path: %v", err)
	}
}

func testCloseUnblocksRecv(t *testing.T, p pair) {
	recvd := goErr(func() error {
		var m transport.Msg
		return p.b.Recv(bg, &m)
	})
	if p.reading != nil {
		await(t, p.reading, "Recv reaching the link")
	}
	if err := p.b.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := await(t, recvd, "Recv after Close"); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("blocked Recv after Close: %v, want an error wrapping livemig.ErrClosed", err)
	}
	checkClosed(t, p.b)
}

func testCloseUnblocksSend(t *testing.T, p pair) {
	g := newGen(4)
	data := g.bytes(PageSize)
	going := make(chan struct{})
	sent := goErr(func() error {
		for i := 0; ; i++ {
			if i == 10 {
				close(going)
			}
			// Nobody reads: the link fills up and Send blocks.
			err := p.a.Send(bg, transport.Msg{Kind: wire.KindPage, Page: uint64(i % 1000), Data: data})
			if err != nil {
				if i < 10 {
					close(going)
				}
				return err
			}
		}
	})
	await(t, going, "10 sends")
	if err := p.a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := await(t, sent, "Send after Close"); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Send after Close: %v, want an error wrapping livemig.ErrClosed", err)
	}
	checkClosed(t, p.a)
}

// checkClosed checks that every call on a closed Conn fails with ErrClosed.
func checkClosed(t *testing.T, c transport.Conn) {
	t.Helper()
	var m transport.Msg
	if err := c.Recv(bg, &m); !errors.Is(err, livemig.ErrClosed) {
		t.Errorf("Recv on a closed Conn: %v, want livemig.ErrClosed", err)
	}
	if err := c.Send(bg, transport.Msg{Kind: wire.KindDone}); !errors.Is(err, livemig.ErrClosed) {
		t.Errorf("Send on a closed Conn: %v, want livemig.ErrClosed", err)
	}
	if err := c.Flush(bg); !errors.Is(err, livemig.ErrClosed) {
		t.Errorf("Flush on a closed Conn: %v, want livemig.ErrClosed", err)
	}
	c.Close() // a second Close must not panic
}

func testCancelUnblocksRecv(t *testing.T, p pair) {
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	recvd := goErr(func() error {
		var m transport.Msg
		return p.b.Recv(ctx, &m)
	})
	if p.reading != nil {
		await(t, p.reading, "Recv reaching the link")
	}
	cancel()
	if err := await(t, recvd, "Recv after cancel"); !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked Recv after cancel: %v, want an error wrapping context.Canceled", err)
	}
	if p.reading == nil {
		return // Recv may have seen the done ctx before blocking: nothing closed
	}
	// Recv was blocked in the link, so the Conn is closed now.
	var m transport.Msg
	if err := p.b.Recv(bg, &m); !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Recv after a cancelled Recv: %v, want livemig.ErrClosed", err)
	}
}

func testExpiredContext(t *testing.T, p pair) {
	ctx, cancel := context.WithCancel(bg)
	cancel()
	var m transport.Msg
	if err := p.b.Recv(ctx, &m); !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv with a done ctx: %v, want context.Canceled", err)
	}
	if err := p.a.Send(ctx, transport.Msg{Kind: wire.KindDone}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send of a control message with a done ctx: %v, want context.Canceled", err)
	}
}

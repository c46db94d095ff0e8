package postcopy

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
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
		{Kind: transport.KindSwitchover, Page: session, Arg: 1},
		{Kind: transport.KindState, Data: make([]byte, 64)},
	} {
		if err := src.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var ack transport.Msg
	if err := src.Recv(ctx, &ack); err != nil || ack.Kind != transport.KindAck || ack.Arg != transport.AckReady {
		t.Fatalf("want Ack(Ready), got %v %v", ack, err)
	}
	if err := src.Send(ctx, transport.Msg{Kind: transport.KindCommit}); err != nil {
		t.Fatal(err)
	}
	if err := src.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Recv(ctx, &ack); err != nil || ack.Kind != transport.KindAck || ack.Arg != transport.AckResumed {
		t.Fatalf("want Ack(Resumed), got %v %v", ack, err)
	}
	src.Close()
	// The reconnection asks for an urgent connection.
	if err := again.Send(ctx, transport.Msg{Kind: transport.KindResume, Page: session, Arg: urgentFlag}); err != nil {
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

// PageEncoder sends zero pages as such, compressible pages as LZ4 blocks
// that decode back to the page, the rest raw; decodePage refuses a block
// that is not a page.
func TestPageEncoder(t *testing.T) {
	const ps = 4096
	zero := make([]byte, ps)
	words := make([]byte, ps)
	for i := range words {
		words[i] = byte(i / 512)
	}
	random := make([]byte, ps)
	for i := range random {
		random[i] = byte((i*2654435761)>>13 ^ i*31)
	}
	for _, c := range []struct {
		name string
		lz4  bool
		page []byte
		want transport.Encoding
	}{
		{"zero", true, zero, transport.EncZero},
		{"zero without lz4", false, zero, transport.EncZero},
		{"compressible", true, words, transport.EncLZ4},
		{"compressible without lz4", false, words, transport.EncRaw},
		{"incompressible", true, random, transport.EncRaw},
	} {
		enc, data := NewPageEncoder(ps, c.lz4).Encode(c.page)
		if enc != c.want {
			t.Fatalf("%s: encoding %d, want %d", c.name, enc, c.want)
		}
		got, err := decodePage(transport.Msg{Kind: transport.KindPage, Enc: enc, Data: data}, make([]byte, ps))
		if err != nil || (enc != transport.EncZero && !bytes.Equal(got, c.page)) {
			t.Fatalf("%s: decodes to %d bytes, %v", c.name, len(got), err)
		}
	}
	_, data := NewPageEncoder(ps, true).Encode(words)
	if _, err := decodePage(transport.Msg{Enc: transport.EncLZ4, Page: 9, Data: data}, make([]byte, ps/2)); !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("a block of another size: %v", err)
	}
	if _, err := decodePage(transport.Msg{Enc: transport.EncLZ4, Page: 9, Data: []byte{0xff, 1}}, make([]byte, ps)); !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("a broken block: %v", err)
	}
}

package precopy_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// countingLink counts the bytes written to a link.
type countingLink struct {
	transport.Link
	n atomic.Uint64
}

func (c *countingLink) Write(p []byte) (int, error) {
	n, err := c.Link.Write(p)
	c.n.Add(uint64(n))
	return n, err
}

// The report's bytes are what crossed the link: every frame the source
// wrote after the handshake, batch framing and control frames included, with
// the codecs on and the guest writing; the rounds' bytes add up to all but
// the hand-over's few control frames.
func TestBytesSentIsWhatTheLinkCarried(t *testing.T) {
	const pages = 2048
	src := newSource(t, pages)
	dst := newDest(t, pages)
	stop, _ := writers(src, 1)
	defer stop()
	a, b := transport.Pipe(1 << 20)
	link := &countingLink{Link: a}
	hello := transport.Hello{PageSize: pageSize, PageCount: pages, Features: transport.FeatDigest}
	tcfg := transport.Config{Liveness: -1} // no heartbeats: the count is the engine's alone
	ctx := context.Background()
	var dconn transport.Conn
	var derr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		dconn, _, derr = transport.Open(ctx, b, hello, tcfg)
	}()
	conn, _, err := transport.Open(ctx, link, hello, tcfg)
	wg.Wait()
	if err != nil || derr != nil {
		t.Fatalf("handshake: %v, %v", err, derr)
	}
	base := link.n.Load() // the hello
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, derr = precopy.Receive(ctx, dconn, precopy.Destination{Sink: dst, VM: dst, Pages: pages, PageSize: pageSize}, precopy.Config{})
	}()
	cfg := precopy.Config{DowntimeTarget: 5 * time.Millisecond, MaxRounds: 4}
	cfg.Codec.XBZRLE, cfg.Codec.LZ4, cfg.Codec.NoAdapt = true, true, true
	rep, err := precopy.Migrate(ctx, conn, precopy.Source{Memory: src, Dirty: src, VM: src}, cfg)
	wg.Wait()
	if err != nil || derr != nil {
		t.Fatalf("source: %v; destination: %v", err, derr)
	}
	carried := link.n.Load() - base
	var rounds uint64
	for _, r := range rep.Rounds {
		rounds += r.Bytes
	}
	if rep.BytesSent != carried {
		t.Fatalf("report: %d bytes sent; the link carried %d", rep.BytesSent, carried)
	}
	if rounds > rep.BytesSent || rep.BytesSent-rounds > 4*(transport.FrameOverhead+16) {
		t.Fatalf("rounds add up to %d bytes of %d sent", rounds, rep.BytesSent)
	}
	t.Logf("%d bytes sent, %d in %d rounds", rep.BytesSent, rounds, len(rep.Rounds))
}

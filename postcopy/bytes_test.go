package postcopy_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
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

// openCounted returns a handshaken pair over a pipe whose source end
// counts its bytes from after the handshake, without heartbeats.
func openCounted(t *testing.T, pages uint64) (src, dst transport.Conn, count func() uint64) {
	t.Helper()
	a, b := transport.Pipe(1 << 20)
	link := &countingLink{Link: a}
	hello := transport.Hello{PageSize: pageSize, PageCount: pages, Features: transport.FeatPostCopy | transport.FeatDigest}
	cfg := transport.Config{Liveness: -1}
	var derr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		dst, _, derr = transport.Open(context.Background(), b, hello, cfg)
	}()
	src, _, err := transport.Open(context.Background(), link, hello, cfg)
	wg.Wait()
	if err != nil || derr != nil {
		t.Fatalf("handshake: %v, %v", err, derr)
	}
	base := link.n.Load()
	return src, dst, func() uint64 { return link.n.Load() - base }
}

// The report's bytes are what crossed the links: every frame the source
// wrote on its main and urgent connections after the handshake, with
// pre-copy rounds, LZ4 and the guest writing; the rounds' bytes add up to
// all but the early discard of a hybrid (sent between the last pre-copy
// round and the pause: its chunks, at most a bitmap of the guest, and an
// EndRound) and the final Ack.
func TestBytesSentIsWhatTheLinksCarried(t *testing.T) {
	const pages = 2048
	for _, rounds := range []int{0, 2} {
		t.Run(fmt.Sprintf("rounds=%d", rounds), func(t *testing.T) {
			src := newSource(t, pages)
			stop, _ := testkit.Writers(src, 1)
			defer stop()
			conn, dconn, mainCount := openCounted(t, pages)
			urg, durg, urgCount := openCounted(t, pages)
			mem, err := postcopy.NewHeapMemory(pageSize, pages, nil)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := postcopy.Receive(context.Background(), dconn,
					postcopy.Destination{Memory: mem, VM: newDstVM(), Pages: pages, PageSize: pageSize},
					postcopy.Config{Urgent: durg})
				done <- err
			}()
			rep, err := migrate(context.Background(), conn, livemig.Source{Memory: src, Dirty: src, VM: src},
				postcopy.Config{LZ4: true, Urgent: urg}, rounds)
			if derr := <-done; err != nil || derr != nil {
				t.Fatalf("source: %v; destination: %v", err, derr)
			}
			carried := mainCount() + urgCount()
			if rep.BytesSent != carried {
				t.Fatalf("report: %d bytes sent; the links carried %d", rep.BytesSent, carried)
			}
			var sum uint64
			for _, r := range rep.Rounds {
				sum += r.Bytes
			}
			frame := uint64(transport.FrameOverhead + 16)
			if sum > rep.BytesSent || rep.BytesSent-sum > 3*frame+pages/8 {
				t.Fatalf("rounds add up to %d bytes of %d sent", sum, rep.BytesSent)
			}
			t.Logf("%d bytes sent (urgent %d), %d in %d rounds", rep.BytesSent, urgCount(), sum, len(rep.Rounds))
		})
	}
}

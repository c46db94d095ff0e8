// Package testkit holds what the engines' tests share: a real-memory source
// guest, links that cut or corrupt a stream on cue, loopback link pairs and
// handshakes, and a page-by-page comparison. It is for tests only.
package testkit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// NewSource maps a guest of pages pages of pageSize bytes, fills every page
// with a pattern (one non-zero word per 64 bytes) except every eighth,
// which stays zero, and sets a state. The region is closed at the test's
// end.
func NewSource(t testing.TB, pageSize int, pages uint64) *region.Region {
	t.Helper()
	r, err := region.New(pageSize, pages)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	b := r.Bytes()
	for n := uint64(0); n < pages; n++ {
		if n%8 == 7 {
			continue
		}
		for off := 0; off < pageSize; off += 64 {
			binary.LittleEndian.PutUint64(b[int(n)*pageSize+off:], n<<20|uint64(off)|1)
		}
	}
	r.SetState([]byte("vcpu registers and device state"))
	return r
}

// Writers starts n goroutines that write counters into random pages of src
// (one 8-byte word each time, at a word offset within the page) as fast as
// they can, as a guest's vCPUs would: while src is paused their writes
// block, and they go on when it resumes. stop ends them (resuming src so
// that none stays blocked) and waits; total counts the writes so far.
func Writers(src *region.Region, n int) (stop func(), total func() uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var count atomic.Uint64
	words := src.PageSize() / 8
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := uint64(i+1) * 0x9E3779B97F4A7C15
			var buf [8]byte
			for ctx.Err() == nil {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				binary.LittleEndian.PutUint64(buf[:], count.Add(1))
				_ = src.Write(x%src.PageCount(), int(x>>40)%words*8, buf[:])
			}
		}()
	}
	return func() {
		cancel()
		_ = src.Resume(context.Background())
		wg.Wait()
	}, count.Load
}

// DirtyOnSync is src's dirty log that first writes page n of src (a byte
// at its start) at each sync while src runs, so that every round leaves
// that page dirty however little a test's writer goroutines ran. Syncs
// come from the migrating goroutine, which is also the one that pauses src:
// the write never waits on a pause.
func DirtyOnSync(src *region.Region, n uint64) livemig.DirtySource { return dirtyOnSync{src, n} }

type dirtyOnSync struct {
	*region.Region
	n uint64
}

func (d dirtyOnSync) SyncDirty(dst []uint64) error {
	if !d.Paused() {
		if err := d.Write(d.n, 0, []byte{0x5a}); err != nil {
			return err
		}
	}
	return d.Region.SyncDirty(dst)
}

// SkipOrFail ends a test that could not get what, a facility of the machine
// (userfaultfd, /dev/kvm, QEMU), with err: it skips when err wraps
// livemig.ErrNotSupported, unless the environment variable env is "1" (as
// CI sets LIVEMIG_REQUIRE_UFFD and its kin), and fails otherwise.
func SkipOrFail(tb testing.TB, err error, what, env string) {
	tb.Helper()
	if errors.Is(err, livemig.ErrNotSupported) && os.Getenv(env) != "1" {
		tb.Skipf("%s unavailable here (set %s=1 to fail instead): %v", what, env, err)
	}
	tb.Fatalf("%s: %v", what, err)
}

// DiffPages returns how many pages of pageSize differ between a and b, and
// the first that does (-1 if none).
func DiffPages(a, b []byte, pageSize int) (n, first int) {
	first = -1
	for off := 0; off < len(a); off += pageSize {
		if !bytes.Equal(a[off:off+pageSize], b[off:off+pageSize]) {
			if first < 0 {
				first = off / pageSize
			}
			n++
		}
	}
	return n, first
}

// CutLink passes writes through until a cut is armed and its byte budget is
// spent; then it closes the link, so that the peer sees a stream cut
// mid-frame, and the write fails with an error wrapping io.ErrClosedPipe.
// With Flip set it flips one bit at that place instead and goes on.
type CutLink struct {
	transport.Link
	Flip  bool
	mu    sync.Mutex
	left  int64 // bytes until the cut; -1: not armed
	fired bool
}

// NewCut wraps l with no cut armed.
func NewCut(l transport.Link) *CutLink { return &CutLink{Link: l, left: -1} }

// Arm cuts the link after after more bytes, unless a cut is already armed
// or fired.
func (c *CutLink) Arm(after int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.left < 0 && !c.fired {
		c.left = after
	}
}

// Armed reports whether a cut was armed (and maybe fired).
func (c *CutLink) Armed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fired || c.left >= 0
}

// Write writes p, cutting (or corrupting) it where the budget ends.
func (c *CutLink) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.left < 0 || int64(len(p)) <= c.left {
		if c.left >= 0 {
			c.left -= int64(len(p))
		}
		c.mu.Unlock()
		return c.Link.Write(p)
	}
	at := c.left
	c.left, c.fired = -1, true
	c.mu.Unlock()
	if c.Flip {
		q := bytes.Clone(p)
		q[at] ^= 0x10
		return c.Link.Write(q)
	}
	n, _ := c.Link.Write(p[:at])
	c.Link.Close()
	return n, fmt.Errorf("test cut the link after %d more bytes: %w", at, io.ErrClosedPipe)
}

// LinkPair returns the two ends of a new link: an in-memory pipe, or
// loopback TCP.
func LinkPair(t testing.TB, tcp bool) (a, b transport.Link) {
	t.Helper()
	if !tcp {
		return transport.Pipe(1 << 20)
	}
	ctx := context.Background()
	l, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan transport.Link, 1)
	go func() {
		c, err := l.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	a, err = transport.Dial(ctx, l.Addr().String(), transport.DialConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return a, <-accepted
}

// OpenPair runs the handshake on both ends of a link with the same hello.
// On failure it closes both links and returns the errors joined.
func OpenPair(ctx context.Context, a, b transport.Link, hello transport.Hello) (ca, cb transport.Conn, err error) {
	var berr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cb, _, berr = transport.Open(ctx, b, hello, transport.Config{})
	}()
	ca, _, err = transport.Open(ctx, a, hello, transport.Config{})
	wg.Wait()
	if err != nil || berr != nil {
		if ca != nil {
			ca.Close()
		}
		if cb != nil {
			cb.Close()
		}
		a.Close()
		b.Close()
		return nil, nil, errors.Join(err, berr)
	}
	return ca, cb, nil
}

// Dialer returns a redial function for an engine's Config.Redial (and the
// first connection): it dials addr over TCP and opens a Conn with hello and
// cfg.
func Dialer(addr string, hello transport.Hello, cfg transport.Config) func(context.Context) (transport.Conn, error) {
	return func(ctx context.Context) (transport.Conn, error) {
		link, err := transport.Dial(ctx, addr, transport.DialConfig{})
		if err != nil {
			return nil, err
		}
		c, _, err := transport.Open(ctx, link, hello, cfg)
		return c, err
	}
}

package transport

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/livemig/livemig"
)

// TestPipeHandOffOrder checks frameLink's contract on a pipe: handed-off
// buffers keep their place among written bytes, nextFrame takes a buffer
// only when it is next and unread, and Read never returns bytes before a
// handed-off buffer together with bytes of it.
func TestPipeHandOffOrder(t *testing.T) {
	a, b := Pipe(64)
	w, r := a.(frameLink), b.(frameLink)
	if _, err := a.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	f1, f2 := []byte("frame-one"), []byte("frame-two")
	if _, err := w.handOff(f1); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte("cd")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.handOff(f2); err != nil {
		t.Fatal(err)
	}
	if got := r.nextFrame(); got != nil {
		t.Fatalf("nextFrame took %q before the written bytes", got)
	}
	p := make([]byte, 100)
	if n, _ := b.Read(p); string(p[:n]) != "ab" {
		t.Fatalf("Read %q, want the bytes before the frame alone", p[:n])
	}
	if got := r.nextFrame(); &got[0] != &f1[0] || len(got) != len(f1) {
		t.Fatalf("nextFrame = %q, want the handed-off buffer itself", got)
	}
	if got := r.nextFrame(); got != nil {
		t.Fatalf("nextFrame took %q before the written bytes", got)
	}
	if n, _ := b.Read(p); string(p[:n]) != "cd" {
		t.Fatalf("Read %q, want cd", p[:n])
	}
	// A buffer partly read with Read is read to its end with Read.
	if n, _ := b.Read(p[:3]); string(p[:n]) != "fra" {
		t.Fatalf("Read %q, want fra", p[:n])
	}
	if got := r.nextFrame(); got != nil {
		t.Fatalf("nextFrame took a partly read buffer %q", got)
	}
	if n, _ := b.Read(p); string(p[:n]) != "me-two" {
		t.Fatalf("Read %q, want me-two", p[:n])
	}
	// Released buffers come back to the writer, the longest released
	// first: f2, read whole with Read, then f1.
	r.release(f1)
	spare, err := w.handOff([]byte("x"))
	if err != nil || spare == nil || &spare[:1][0] != &f2[0] {
		t.Fatalf("handOff returned spare of cap %d (%v), want f2, read whole with Read", cap(spare), err)
	}
	spare, _ = w.handOff(nil)
	if spare == nil || cap(spare) != cap(f1) || &spare[:1][0] != &f1[0] {
		t.Fatal("the released buffer did not come back to the writer after the older one")
	}
	a.Close()
	if n, _ := b.Read(p); string(p[:n]) != "x" {
		t.Fatalf("Read %q after the writer closed, want the buffered x", p[:n])
	}
	if got := r.nextFrame(); got != nil {
		t.Fatalf("nextFrame at the end = %q", got)
	}
	if _, err := b.Read(p); err != io.EOF {
		t.Fatalf("Read at the end: %v, want io.EOF", err)
	}
}

// TestPipeHandOffBlocksAndCloses checks the handed-off bytes' bound and that
// Close unblocks both sides.
func TestPipeHandOffBlocksAndCloses(t *testing.T) {
	a, b := Pipe(10)
	w, r := a.(frameLink), b.(frameLink)
	if _, err := w.handOff(make([]byte, 20)); err != nil { // larger than the pipe: passes when empty
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.handOff(make([]byte, 5))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("handOff into a full pipe returned %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	if f := r.nextFrame(); len(f) != 20 {
		t.Fatalf("nextFrame: %d bytes", len(f))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := w.handOff(make([]byte, 10)); err != nil { // 5 held: passes, and fills it
		t.Fatal(err)
	}
	go func() {
		_, err := w.handOff(make([]byte, 5))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let it block (it must return either way)
	b.Close()
	if err := <-done; !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("handOff after the reader closed: %v, want ErrClosed", err)
	}
	if f := r.nextFrame(); f != nil {
		t.Fatal("nextFrame on a closed end returned a frame")
	}
	// A reader blocked in nextFrame returns when its end closes.
	c, d := Pipe(0)
	go func() { done <- nil; d.(frameLink).nextFrame(); done <- nil }()
	<-done
	time.Sleep(10 * time.Millisecond)
	d.Close()
	<-done
	c.Close()
}

// TestConnPipeTakesFrames checks that a Conn on a pipe receives its peer's
// frames without copying them (Recv's Data lies in the sender's frame
// buffer), gives each buffer back once its records are no longer borrowed,
// and allocates nothing per page once buffers circulate.
func TestConnPipeTakesFrames(t *testing.T) {
	la, lb := Pipe(8 << 20)
	cfg := Config{Liveness: -1}
	src, dst := NewConn(la, cfg).(*conn), NewConn(lb, cfg).(*conn)
	defer src.Close()
	defer dst.Close()
	page := seq(livemig.DefaultPageSize, 3)
	const n = 200 // several batches
	round := func() {
		for i := range uint64(n) {
			if err := src.Send(bg, Msg{Kind: kindPage, Page: i, Data: page}); err != nil {
				t.Fatal(err)
			}
		}
		if err := src.Flush(bg); err != nil {
			t.Fatal(err)
		}
		recvTaken(t, dst, n, page)
	}
	round()
	if a := testing.AllocsPerRun(20, round); a != 0 && !raceEnabled {
		t.Errorf("%v allocations per %d pages through a pipe", a, n)
	}
	if src.Written() == 0 {
		t.Fatal("the frames handed over were not metered")
	}
}

// recvTaken receives pages 0..n-1, each holding page, and checks that each
// record's Data lies in the frame dst took from its sender (no copy) and
// carries the page's CRC.
func recvTaken(t *testing.T, dst *conn, n uint64, page []byte) {
	t.Helper()
	crc := crc32.Checksum(page, castagnoli)
	var m Msg
	for i := range n {
		if err := dst.Recv(bg, &m); err != nil {
			t.Fatal(err)
		}
		if m.Page != i || !bytes.Equal(m.Data, page) || !m.HaveCRC || m.DataCRC != crc {
			t.Fatalf("record %d: page %d, %d bytes, CRC %v %08x", i, m.Page, len(m.Data), m.HaveCRC, m.DataCRC)
		}
		if !inside(m.Data, dst.rtaken) {
			t.Fatalf("record %d: Data is not in the frame taken from the sender", i)
		}
	}
}

// inside reports whether p lies inside b's bytes.
func inside(p, b []byte) bool {
	if len(p) == 0 || len(b) == 0 {
		return false
	}
	lo, hi := uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&b[len(b)-1]))
	x := uintptr(unsafe.Pointer(&p[0]))
	return lo <= x && x+uintptr(len(p))-1 <= hi
}

// TestConnPipeRefusesBadFrames hands bad frames to a Conn through the
// pipe's zero-copy path: each is refused as a frame read byte by byte is,
// with its offset.
func TestConnPipeRefusesBadFrames(t *testing.T) {
	cfg := Config{PageSize: 64, PageCount: 100, MaxFrame: 5000, Liveness: -1}
	good := frame(kindEndRound, 0, 0, control(0, 1, nil))
	page := frame(kindPage, 0, 1, record(1, EncRaw, seq(64, 0)))
	for _, tc := range []struct {
		name, what string
		frame      []byte
	}{
		{"BadCRC", "CRC", func() []byte { f := bytes.Clone(page); f[len(f)-9] ^= 1; return f }()},
		{"BadHeaderCRC", "header CRC mismatch", func() []byte { f := bytes.Clone(page); f[2] ^= 1; return f }()},
		{"Short", "shorter than a header", page[:5]},
		{"Cut", "handed over in", page[:len(page)-1]},
		{"TwoFrames", "handed over in", cat(good, good)},
		{"DataPastEnd", "past the frame's end", frame(kindPage, 0, 1, record(1, EncRaw, seq(64, 0))[:40])},
		{"PageRange", "page 100 of 100", frame(kindPage, 0, 1, record(100, EncZero, nil))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			la, lb := Pipe(0)
			defer la.Close()
			c := NewConn(lb, cfg)
			defer c.Close()
			w := la.(frameLink)
			w.handOff(bytes.Clone(good))
			w.handOff(tc.frame)
			var m Msg
			if err := c.Recv(bg, &m); err != nil || m.Kind != kindEndRound {
				t.Fatalf("first frame: %v %v", m.Kind, err)
			}
			err := c.Recv(bg, &m)
			var se *livemig.StreamError
			if !errors.Is(err, livemig.ErrCorrupt) || !errors.As(err, &se) {
				t.Fatalf("Recv: %v, want a StreamError wrapping ErrCorrupt", err)
			}
			if !strings.Contains(se.What, tc.what) {
				t.Errorf("error says %q, want %q", se.What, tc.what)
			}
			if se.Offset < int64(len(good)) {
				t.Errorf("error at offset %d, before the bad frame at %d", se.Offset, len(good))
			}
		})
	}
}

// TestConnPipeFaults cuts a Conn's pipe mid-transfer: a blob cut between
// its frames is io.ErrUnexpectedEOF, a cut at a frame boundary io.EOF, and a
// sender blocked on a full pipe returns when the receiver closes.
func TestConnPipeFaults(t *testing.T) {
	cfg := Config{PageSize: 64, MaxFrame: 1000, Liveness: -1}
	t.Run("BlobCut", func(t *testing.T) {
		la, lb := Pipe(1 << 20)
		src, dst := NewConn(la, cfg), NewConn(lb, cfg)
		defer dst.Close()
		// The blob spans frames; hand over only the first, then cut.
		blob := seq(2500, 1)
		frames := encode(t, cfg, Msg{Kind: kindState, Data: blob})
		h, _ := parseFrameHeader(frames)
		first := frames[:frameHeaderSize+h.length+frameTrailerSize]
		la.(frameLink).handOff(bytes.Clone(first))
		src.Close()
		var m Msg
		if err := dst.Recv(bg, &m); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Recv of a cut blob: %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("FrameBoundary", func(t *testing.T) {
		la, lb := Pipe(1 << 20)
		src, dst := NewConn(la, cfg), NewConn(lb, cfg)
		defer dst.Close()
		if err := src.Send(bg, Msg{Kind: kindPage, Page: 1, Data: seq(64, 0)}); err != nil {
			t.Fatal(err)
		}
		if err := src.Flush(bg); err != nil {
			t.Fatal(err)
		}
		src.Close()
		var m Msg
		if err := dst.Recv(bg, &m); err != nil || m.Page != 1 {
			t.Fatalf("Recv: page %d, %v", m.Page, err)
		}
		if err := dst.Recv(bg, &m); err != io.EOF {
			t.Fatalf("Recv after the sender closed: %v, want io.EOF", err)
		}
	})
	t.Run("ReceiverGone", func(t *testing.T) {
		la, lb := Pipe(4096)
		src := NewConn(la, cfg)
		defer src.Close()
		done := make(chan error, 1)
		go func() {
			for i := uint64(0); ; i++ {
				if err := src.Send(bg, Msg{Kind: kindPage, Page: i % 100, Data: seq(64, byte(i))}); err != nil {
					done <- err
					return
				}
			}
		}()
		time.Sleep(20 * time.Millisecond) // the pipe fills; the sender blocks
		lb.Close()
		select {
		case err := <-done:
			if !errors.Is(err, livemig.ErrClosed) {
				t.Fatalf("Send after the receiver closed: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("sender still blocked after the receiver closed")
		}
	})
}

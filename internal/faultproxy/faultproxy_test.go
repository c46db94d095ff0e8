package faultproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/livemig/livemig/transport"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frame builds a version-2 frame with both CRCs.
func frame(kind Kind, count uint16, payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))
	b = append(b, byte(kind), 0)
	b = binary.LittleEndian.AppendUint16(b, count)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	b = append(b, payload...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// control builds a control frame: u64 page, u64 arg, data.
func control(kind Kind, page, arg uint64, data []byte) []byte {
	p := binary.LittleEndian.AppendUint64(nil, page)
	p = binary.LittleEndian.AppendUint64(p, arg)
	return frame(kind, 0, append(p, data...))
}

// pages builds a Page frame of one raw record of n bytes filled with fill.
func pages(page uint64, n int, fill byte) []byte {
	p := binary.LittleEndian.AppendUint64(nil, page)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint32(p, uint32(n))
	return frame(KindPage, 1, append(p, bytes.Repeat([]byte{fill}, n)...))
}

func hello() []byte {
	h := make([]byte, HelloSize)
	copy(h, helloMagic)
	for i := 4; i < len(h); i++ {
		h[i] = byte(i)
	}
	return h
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// harness is a proxy in front of a listener the test accepts on itself.
type harness struct {
	t  *testing.T
	p  *Proxy
	ln net.Listener
}

func newHarness(t *testing.T, rules ...Rule) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(ln.Addr().String(), rules...)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		ln.Close()
	})
	return &harness{t: t, p: p, ln: ln}
}

// dial opens a connection through the proxy: the client (source) end and
// the server (destination) end.
func (h *harness) dial() (client, server *net.TCPConn) {
	h.t.Helper()
	c, err := net.Dial("tcp", h.p.Addr())
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := h.ln.Accept()
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readN reads exactly n bytes, failing the test if they do not come within
// a generous bound.
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// expectSilence checks that nothing arrives within 200 ms while the socket
// stays open: the read times out, it does not end.
func expectSilence(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var b [1]byte
	n, err := c.Read(b[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes, %v; want nothing until the deadline", n, err)
	}
}

// expectEnd checks that the connection ends (EOF or reset) with nothing
// more before it.
func expectEnd(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if len(b) > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d more bytes, %v; want the end", len(b), err)
	}
}

func waitFired(t *testing.T, p *Proxy) []Event {
	t.Helper()
	select {
	case <-p.Fired():
	case <-time.After(10 * time.Second):
		t.Fatal("the fault did not fire")
	}
	return p.Events()
}

func TestPassThrough(t *testing.T) {
	h := newHarness(t)
	client, server := h.dial()
	up := cat(hello(), pages(1, 4096, 0xaa), pages(2, 100, 0), control(KindEndRound, 0, 1, nil),
		control(KindState, 0, 0, []byte("state")), control(KindCommit, 0, 0, nil), frame(KindHeartbeat, 0, nil))
	down := cat(hello(), control(KindAck, 7, AckReady, nil), control(KindAck, 0, AckResumed, nil))
	write(t, client, up)
	write(t, server, down)
	if got := readN(t, server, len(up)); !bytes.Equal(got, up) {
		t.Error("s2d bytes changed")
	}
	if got := readN(t, client, len(down)); !bytes.Equal(got, down) {
		t.Error("d2s bytes changed")
	}
	client.CloseWrite()
	expectEnd(t, server)
	server.CloseWrite()
	expectEnd(t, client)

	select {
	case <-h.p.Fired():
	default:
		t.Error("Fired not closed with no rules")
	}
	s := h.p.Stats()
	if len(s.Conns) != 1 || s.Conns[0].Raw != [2]bool{} {
		t.Fatalf("stats %+v", s.Conns)
	}
	for _, c := range []struct {
		d    Dir
		k    Kind
		want int64
	}{{SrcToDst, KindPage, 2}, {SrcToDst, KindEndRound, 1}, {SrcToDst, KindState, 1}, {SrcToDst, KindCommit, 1},
		{SrcToDst, KindHeartbeat, 1}, {SrcToDst, KindAck, 0}, {DstToSrc, KindAck, 2}} {
		if got := s.Frames(c.d, c.k); got != c.want {
			t.Errorf("%v %v frames: %d, want %d", c.d, c.k, got, c.want)
		}
	}
	if s.Bytes(SrcToDst) != int64(len(up)) || s.Bytes(DstToSrc) != int64(len(down)) {
		t.Errorf("bytes %v, want %d and %d", s.Conns[0].Bytes, len(up), len(down))
	}
}

// TestSplitReads feeds a stream one byte per write, so that the proxy
// finds the frames across many reads, and flips a bit in each of three
// frames.
func TestSplitReads(t *testing.T) {
	h := newHarness(t,
		Rule{Trigger: Trigger{Kind: KindPage, Nth: 2}, Fault: FlipPayload, Bit: 8*40 + 1},
		Rule{Trigger: Trigger{Kind: KindEndRound}, Fault: FlipHeader, Bit: 9},
		Rule{Trigger: Trigger{Kind: KindCommit}, Fault: FlipPayload},
	)
	client, server := h.dial()
	f := [][]byte{hello(), pages(1, 64, 1), pages(2, 64, 2), control(KindEndRound, 0, 1, nil), control(KindCommit, 0, 0, nil)}
	up := cat(f...)
	want := bytes.Clone(up)
	start := len(f[0]) + len(f[1])
	want[start+HeaderSize+40] ^= 2
	start += len(f[2])
	want[start+1] ^= 2
	start += len(f[3])
	want[start+HeaderSize] ^= 1
	go func() {
		for i := range up {
			if _, err := client.Write(up[i : i+1]); err != nil {
				return
			}
		}
	}()
	if got := readN(t, server, len(up)); !bytes.Equal(got, want) {
		t.Errorf("got\n%x\nwant\n%x", got, want)
	}
	if ev := waitFired(t, h.p); len(ev) != 3 {
		t.Errorf("events %v", ev)
	}
}

func TestClose(t *testing.T) {
	for _, after := range []bool{false, true} {
		t.Run(map[bool]string{false: "before", true: "after"}[after], func(t *testing.T) {
			h := newHarness(t, Rule{Trigger: Trigger{Kind: KindCommit, After: after}, Fault: Close})
			client, server := h.dial()
			head := cat(hello(), control(KindEndRound, 0, 1, nil), control(KindDone, 0, 9, nil))
			commit := control(KindCommit, 0, 0, nil)
			write(t, client, cat(head, commit, frame(KindHeartbeat, 0, nil)))
			if after {
				head = cat(head, commit)
			}
			if got := readN(t, server, len(head)); !bytes.Equal(got, head) {
				t.Error("bytes before the fault changed")
			}
			expectEnd(t, server)
			expectEnd(t, client)
			ev := waitFired(t, h.p)
			want := Event{Fault: Close, Kind: KindCommit, Nth: 1, After: after, Offset: int64(HelloSize + 2*32)}
			if after {
				want.Offset += int64(len(commit))
			}
			if len(ev) != 1 || ev[0] != want {
				t.Errorf("events %v, want %v", ev, want)
			}
		})
	}
}

func TestStall(t *testing.T) {
	for _, after := range []bool{false, true} {
		t.Run(map[bool]string{false: "before", true: "after"}[after], func(t *testing.T) {
			h := newHarness(t, Rule{Trigger: Trigger{Kind: KindCommit, After: after}, Fault: Stall})
			client, server := h.dial()
			write(t, server, hello())
			readN(t, client, HelloSize)
			head := cat(hello(), control(KindEndRound, 0, 1, nil))
			commit := control(KindCommit, 0, 0, nil)
			write(t, client, cat(head, commit, frame(KindHeartbeat, 0, nil)))
			if after {
				head = cat(head, commit)
			}
			if got := readN(t, server, len(head)); !bytes.Equal(got, head) {
				t.Error("bytes before the stall changed")
			}
			waitFired(t, h.p)
			expectSilence(t, server)
			// The return path is stalled too.
			ack := control(KindAck, 0, AckResumed, nil)
			write(t, server, ack)
			expectSilence(t, client)

			// The stall lasts until Close, which ends both sockets,
			// with nothing held forwarded.
			if err := h.p.Close(); err != nil {
				t.Fatal(err)
			}
			expectEnd(t, server)
			expectEnd(t, client)
		})
	}
}

// TestStallEnd: a peer that gives up on a stalled connection and closes it
// sends no end through the proxy, as on a dead path.
func TestStallEnd(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Dir: DstToSrc, Kind: KindAck}, Fault: Stall})
	client, server := h.dial()
	write(t, server, cat(hello(), control(KindAck, 0, AckReady, nil)))
	readN(t, client, HelloSize)
	waitFired(t, h.p)
	client.Close() // the source's liveness timeout
	expectSilence(t, server)
}

func TestFlip(t *testing.T) {
	big := pages(5, 1<<20, 0x5a) // many reads
	cases := []struct {
		name   string
		rule   Rule
		frames [][]byte // after the hello
		frame  int      // the frame flipped, index in frames
		at     int      // the byte flipped, from that frame's start
		mask   byte
	}{
		{"header bit 0", Rule{Trigger: Trigger{Kind: KindPage, Nth: 2}, Fault: FlipHeader},
			[][]byte{pages(1, 10, 1), pages(2, 10, 2), pages(3, 10, 3)}, 1, 0, 1},
		{"header bit 17", Rule{Trigger: Trigger{Kind: KindPage, Nth: 2}, Fault: FlipHeader, Bit: 17},
			[][]byte{pages(1, 10, 1), pages(2, 10, 2), pages(3, 10, 3)}, 1, 2, 2},
		{"header any kind", Rule{Trigger: Trigger{Nth: 3}, Fault: FlipHeader, Bit: 31},
			[][]byte{pages(1, 10, 1), control(KindEndRound, 0, 1, nil), control(KindState, 0, 0, []byte("st"))}, 2, 3, 0x80},
		{"payload bit 0", Rule{Trigger: Trigger{Kind: KindCommit}, Fault: FlipPayload},
			[][]byte{control(KindDone, 0, 1, nil), control(KindCommit, 0, 0, nil)}, 1, HeaderSize, 1},
		{"payload bit wraps", Rule{Trigger: Trigger{Kind: KindCommit}, Fault: FlipPayload, Bit: 8*16 + 8*5 + 3},
			[][]byte{control(KindCommit, 0, 0, nil)}, 0, HeaderSize + 5, 8},
		{"empty payload: trailer", Rule{Trigger: Trigger{Kind: KindHeartbeat, Nth: 2}, Fault: FlipPayload, Bit: 8*2 + 6},
			[][]byte{frame(KindHeartbeat, 0, nil), frame(KindHeartbeat, 0, nil)}, 1, HeaderSize + 2, 0x40},
		{"payload deep in a big frame", Rule{Trigger: Trigger{Kind: KindPage, Nth: 2}, Fault: FlipPayload, Bit: 8 * 900000},
			[][]byte{big, big, big}, 1, HeaderSize + 900000, 1},
		{"arg", Rule{Trigger: Trigger{Kind: KindEndRound, Arg: ArgIs(2)}, Fault: FlipPayload, Bit: 8 * 8},
			[][]byte{control(KindEndRound, 0, 1, nil), control(KindEndRound, 0, 2, nil), control(KindEndRound, 0, 3, nil)}, 1, HeaderSize + 8, 1},
		{"arg never matches a page", Rule{Trigger: Trigger{Arg: func(uint64) bool { return true }}, Fault: FlipHeader},
			[][]byte{pages(1, 10, 1), control(KindAck, 0, AckRound, nil)}, 1, 0, 1},
		{"after bytes", Rule{Trigger: Trigger{AfterBytes: HelloSize + 30}, Fault: FlipPayload, Bit: 4},
			[][]byte{pages(1, 100, 1)}, 0, 30, 0x10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.rule)
			client, server := h.dial()
			up := cat(append([][]byte{hello()}, c.frames...)...)
			want := bytes.Clone(up)
			want[len(cat(append([][]byte{hello()}, c.frames[:c.frame]...)...))+c.at] ^= c.mask
			go client.Write(up)
			if got := readN(t, server, len(up)); !bytes.Equal(got, want) {
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("byte %d is %#x, want %#x", i, got[i], want[i])
					}
				}
			}
			waitFired(t, h.p)
		})
	}
}

func TestFlipReturnPath(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Dir: DstToSrc, Kind: KindAck, Arg: ArgIs(AckReady)}, Fault: FlipPayload})
	client, server := h.dial()
	up := cat(hello(), control(KindAck, 0, AckReady, nil)) // an Ack the other way: not matched
	down := cat(hello(), control(KindAck, 0, AckRound, nil), control(KindAck, 3, AckReady, nil))
	write(t, client, up)
	write(t, server, down)
	if got := readN(t, server, len(up)); !bytes.Equal(got, up) {
		t.Error("s2d changed")
	}
	want := bytes.Clone(down)
	want[HelloSize+32+HeaderSize] ^= 1
	if got := readN(t, client, len(down)); !bytes.Equal(got, want) {
		t.Error("d2s: not the one bit flipped")
	}
	if ev := waitFired(t, h.p); ev[0].Dir != DstToSrc || ev[0].Kind != KindAck {
		t.Errorf("events %v", ev)
	}
}

func TestHalfOpen(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Kind: KindCommit}, Fault: HalfOpen})
	client, server := h.dial()
	head := cat(hello(), control(KindDone, 0, 1, nil))
	write(t, client, cat(head, control(KindCommit, 0, 0, nil)))
	readN(t, server, len(head))
	waitFired(t, h.p)
	expectSilence(t, server)
	// The return path flows.
	down := cat(hello(), control(KindAck, 0, AckResumed, nil))
	write(t, server, down)
	if got := readN(t, client, len(down)); !bytes.Equal(got, down) {
		t.Error("return path changed")
	}
	// Its end passes; the dead direction's does not.
	server.CloseWrite()
	expectEnd(t, client)
	client.Close()
	expectSilence(t, server)
}

// TestHalfOpenReturnPath loses the return path alone: the destination's
// AckReady never reaches the source, whose frames still flow.
func TestHalfOpenReturnPath(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Dir: DstToSrc, Kind: KindAck, Arg: ArgIs(AckReady)}, Fault: HalfOpen})
	client, server := h.dial()
	down := cat(hello(), control(KindAck, 0, AckRound, nil))
	write(t, server, cat(down, control(KindAck, 0, AckReady, nil)))
	readN(t, client, len(down))
	waitFired(t, h.p)
	expectSilence(t, client)
	up := cat(hello(), control(KindEndRound, 0, 1, nil), control(KindCommit, 0, 0, nil))
	write(t, client, up)
	if got := readN(t, server, len(up)); !bytes.Equal(got, up) {
		t.Error("s2d changed")
	}
}

func TestDrop(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Kind: KindPage, Nth: 2}, Fault: Drop})
	client, server := h.dial()
	a, b, c := pages(1, 300000, 1), pages(2, 300000, 2), pages(3, 10, 3)
	wrote := make(chan error, 1)
	go func() { _, err := client.Write(cat(hello(), a, b, c)); wrote <- err }()
	want := cat(hello(), a, c)
	if got := readN(t, server, len(want)); !bytes.Equal(got, want) {
		t.Error("not the second frame dropped")
	}
	waitFired(t, h.p)
	// The proxy counts a write after it returns, which can be after the
	// server read it: end the direction, so the pump has finished (and
	// counted) when the server sees the end.
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	expectEnd(t, server)
	if s := h.p.Stats(); s.Frames(SrcToDst, KindPage) != 3 || s.Bytes(SrcToDst) != int64(len(want)) {
		t.Errorf("stats: %d frames, %d bytes", s.Frames(SrcToDst, KindPage), s.Bytes(SrcToDst))
	}
}

// TestConn: a rule on the second connection (the urgent one, or a
// reconnection) leaves the first alone.
func TestConn(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Conn: 1, Kind: KindCommit}, Fault: Close})
	c0, s0 := h.dial()
	c1, s1 := h.dial()
	up := cat(hello(), control(KindCommit, 0, 0, nil))
	write(t, c0, up)
	if got := readN(t, s0, len(up)); !bytes.Equal(got, up) {
		t.Error("conn 0 changed")
	}
	write(t, c1, up)
	readN(t, s1, HelloSize)
	expectEnd(t, s1)
	if ev := waitFired(t, h.p); ev[0].Conn != 1 {
		t.Errorf("events %v", ev)
	}
	// Conn 0 goes on.
	down := cat(hello(), control(KindAck, 0, AckResumed, nil))
	write(t, s0, down)
	if got := readN(t, c0, len(down)); !bytes.Equal(got, down) {
		t.Error("conn 0 changed after conn 1's fault")
	}
}

// TestAnyConn counts matching frames across connections.
func TestAnyConn(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Conn: AnyConn, Kind: KindCommit, Nth: 2}, Fault: Close})
	c0, s0 := h.dial()
	c1, s1 := h.dial()
	up := cat(hello(), control(KindCommit, 0, 0, nil))
	write(t, c0, up)
	readN(t, s0, len(up))
	write(t, c1, up)
	readN(t, s1, HelloSize)
	expectEnd(t, s1)
	if ev := waitFired(t, h.p); ev[0].Conn != 1 || ev[0].Nth != 2 {
		t.Errorf("events %v", ev)
	}
}

// TestSince counts the matching frames only after the first frame of kind
// Since: the pages of the pre-copy rounds before a Commit do not count.
func TestSince(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Kind: KindPage, Nth: 2, Since: KindCommit}, Fault: Close})
	client, server := h.dial()
	head := cat(hello(), pages(1, 100, 1), pages(2, 100, 2), pages(3, 100, 3), control(KindCommit, 0, 0, nil), pages(4, 100, 4))
	write(t, client, cat(head, pages(5, 100, 5), pages(6, 100, 6)))
	if got := readN(t, server, len(head)); !bytes.Equal(got, head) {
		t.Error("bytes before the fault changed")
	}
	expectEnd(t, server)
	want := Event{Fault: Close, Kind: KindPage, Nth: 2, Offset: int64(len(head))}
	if ev := waitFired(t, h.p); len(ev) != 1 || ev[0] != want {
		t.Errorf("events %v, want %v", ev, want)
	}
}

func TestAfterBytes(t *testing.T) {
	for _, f := range []Fault{Close, Stall, HalfOpen} {
		t.Run(f.String(), func(t *testing.T) {
			const n = 1000
			h := newHarness(t, Rule{Trigger: Trigger{AfterBytes: n}, Fault: f})
			client, server := h.dial()
			up := cat(hello(), pages(1, 4096, 7))
			go client.Write(up)
			if got := readN(t, server, n); !bytes.Equal(got, up[:n]) {
				t.Error("bytes before the fault changed")
			}
			waitFired(t, h.p)
			if f == Close {
				expectEnd(t, server)
			} else {
				expectSilence(t, server)
			}
			if ev := h.p.Events(); ev[0].Offset != n || ev[0].String() != f.String()+" on conn 0 s2d after 1000 bytes" {
				t.Errorf("events %v", ev)
			}
		})
	}
}

// TestRawStream: a stream that is not livemig's is forwarded as bytes, and
// byte triggers still apply; frame triggers never fire.
func TestRawStream(t *testing.T) {
	garbage := cat(hello(), []byte{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0}, control(KindCommit, 0, 0, nil))
	for _, c := range []struct {
		name string
		up   []byte
	}{
		{"no magic", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + string(control(KindCommit, 0, 0, nil)))},
		{"short", []byte("LV")},
		{"huge length", garbage},
		{"kind 0", cat(hello(), frame(0, 0, nil), control(KindCommit, 0, 0, nil))},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t,
				Rule{Trigger: Trigger{Kind: KindCommit}, Fault: Close},
				Rule{Trigger: Trigger{Dir: DstToSrc, AfterBytes: 3}, Fault: FlipPayload})
			client, server := h.dial()
			write(t, client, c.up)
			if got := readN(t, server, len(c.up)); !bytes.Equal(got, c.up) {
				t.Error("s2d changed")
			}
			client.CloseWrite()
			expectEnd(t, server)
			write(t, server, []byte("abcdef"))
			if got := readN(t, client, 6); string(got) != "abceef" {
				t.Errorf("d2s %q, want one bit of the fourth byte flipped", got)
			}
			if len(h.p.Events()) != 1 {
				t.Errorf("events %v", h.p.Events())
			}
			if s := h.p.Stats(); !s.Conns[0].Raw[SrcToDst] && len(c.up) >= 4 || s.Frames(SrcToDst, KindCommit) != 0 {
				t.Errorf("stats %+v", s.Conns[0].Raw)
			}
		})
	}
}

// TestHeldHeadAtEnd: a stream cut inside a frame header reaches the peer
// whole, then ends.
func TestHeldHeadAtEnd(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Kind: KindCommit}, Fault: Close})
	client, server := h.dial()
	up := cat(hello(), control(KindCommit, 0, 0, nil)[:HeaderSize+10])
	write(t, client, up)
	client.CloseWrite()
	if got := readN(t, server, len(up)); !bytes.Equal(got, up) {
		t.Error("changed")
	}
	expectEnd(t, server)
}

// TestHeal: after a stall on the first connection, Heal lets a
// reconnection through untouched while the stalled one stays stalled.
func TestHeal(t *testing.T) {
	h := newHarness(t,
		Rule{Trigger: Trigger{Conn: AnyConn, Kind: KindCommit}, Fault: Stall},
		Rule{Trigger: Trigger{Conn: AnyConn, Kind: KindDone}, Fault: Close})
	c0, s0 := h.dial()
	up := cat(hello(), control(KindCommit, 0, 0, nil))
	write(t, c0, up)
	readN(t, s0, HelloSize)
	for deadline := time.Now().Add(10 * time.Second); len(h.p.Events()) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stall did not fire")
		}
	}
	if ev := h.p.Events(); ev[0].Rule != 0 {
		t.Fatalf("events %v", ev)
	}
	h.p.Heal()
	c1, s1 := h.dial()
	up = cat(hello(), control(KindCommit, 0, 0, nil), control(KindDone, 0, 0, nil))
	write(t, c1, up)
	if got := readN(t, s1, len(up)); !bytes.Equal(got, up) {
		t.Error("the healed connection changed")
	}
	expectSilence(t, s0)
	if ev := h.p.Events(); len(ev) != 1 {
		t.Errorf("events %v", ev)
	}
}

// TestCloseStalled: Close ends stalled, half-open and busy connections and
// leaves no goroutine behind.
func TestCloseStalled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, err := New(ln.Addr().String(),
		Rule{Trigger: Trigger{Conn: 0, Kind: KindCommit}, Fault: Stall},
		Rule{Trigger: Trigger{Conn: 1, Kind: KindCommit}, Fault: HalfOpen})
	if err != nil {
		t.Fatal(err)
	}
	var socks []net.Conn
	for i := range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, c, s)
		if i < 2 {
			write(t, c, cat(hello(), control(KindCommit, 0, 0, nil)))
		} else {
			go c.Write(bytes.Repeat([]byte{1}, 8<<20)) // blocks: nobody reads
		}
	}
	waitFired(t, p)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, s := range socks {
		s.Close()
	}
	goleak.VerifyNone(t)
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRules(t *testing.T) {
	for _, r := range []Rule{
		{},
		{Fault: Drop + 1},
		{Trigger: Trigger{Conn: -2}, Fault: Close},
		{Trigger: Trigger{Dir: 2}, Fault: Close},
		{Trigger: Trigger{Nth: -1}, Fault: Close},
		{Trigger: Trigger{AfterBytes: -1}, Fault: Close},
		{Trigger: Trigger{AfterBytes: 5, Kind: KindPage}, Fault: Close},
		{Trigger: Trigger{AfterBytes: 5, Since: KindCommit}, Fault: Close},
		{Trigger: Trigger{AfterBytes: 5}, Fault: FlipHeader},
		{Trigger: Trigger{AfterBytes: 5}, Fault: Drop},
		{Trigger: Trigger{After: true}, Fault: FlipPayload},
		{Fault: FlipHeader, Bit: 32},
		{Fault: FlipPayload, Bit: -1},
	} {
		if p, err := New("127.0.0.1:1", r); err == nil {
			p.Close()
			t.Errorf("%+v accepted", r)
		}
	}
}

func TestNames(t *testing.T) {
	for k := KindPage; k <= KindHeartbeat+1; k++ {
		if got, err := ParseKind(k.String()); err != nil || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k.String(), got, err)
		}
	}
	for s, want := range map[string]Kind{"commit": KindCommit, "any": AnyKind, "": AnyKind, "13": KindHeartbeat} {
		if k, err := ParseKind(s); err != nil || k != want {
			t.Errorf("ParseKind(%q) = %v, %v; want %v", s, k, err, want)
		}
	}
	if _, err := ParseKind("nope"); err == nil {
		t.Error("ParseKind(nope) accepted")
	}
	for f := Close; f <= Drop; f++ {
		if got, err := ParseFault(f.String()); err != nil || got != f {
			t.Errorf("ParseFault(%q) = %v, %v", f.String(), got, err)
		}
	}
	for _, d := range []Dir{SrcToDst, DstToSrc} {
		if got, err := ParseDir(d.String()); err != nil || got != d {
			t.Errorf("ParseDir(%q) = %v, %v", d.String(), got, err)
		}
	}
	e := Event{Fault: Stall, Kind: KindCommit, Nth: 1, Offset: 94}
	if got, want := e.String(), "stall on conn 0 s2d at Commit frame 1 (offset 94)"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

// TestTransportFrames runs package transport's own Conns through the proxy:
// its parser must find transport's hello and frames, by kind and with their
// boundaries (a dropped frame leaves a stream the receiver still reads), so
// that a change of transport's wire format fails here rather than making the
// proxy fall back to plain bytes, where frame rules never fire.
func TestTransportFrames(t *testing.T) {
	h := newHarness(t, Rule{Trigger: Trigger{Kind: KindEndRound, Arg: ArgIs(2)}, Fault: Drop})
	client, server := h.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	local := transport.Hello{PageSize: 4096, PageCount: 100}
	cfg := transport.Config{Liveness: -1}
	type opened struct {
		c   transport.Conn
		err error
	}
	srvc := make(chan opened, 1)
	go func() {
		c, _, err := transport.Open(ctx, server, local, cfg)
		srvc <- opened{c, err}
	}()
	src, _, err := transport.Open(ctx, client, local, cfg)
	if err != nil {
		t.Fatal(err)
	}
	o := <-srvc
	if o.err != nil {
		t.Fatal(o.err)
	}
	dst := o.c
	defer src.Close()
	defer dst.Close()

	page := func(n uint64) []byte { return bytes.Repeat([]byte{byte(n + 1)}, 4096) }
	var sent []transport.Msg
	for n := range uint64(10) {
		sent = append(sent, transport.Msg{Kind: KindPage, Page: n, Data: page(n)})
	}
	sent = append(sent,
		transport.Msg{Kind: KindEndRound, Arg: 1},
		transport.Msg{Kind: KindEndRound, Arg: 2},
		transport.Msg{Kind: KindEndRound, Arg: 3},
		transport.Msg{Kind: KindState, Data: []byte("state")},
		transport.Msg{Kind: KindCommit})
	sendErr := make(chan error, 1)
	go func() {
		for _, m := range sent {
			if err := src.Send(ctx, m); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- src.Flush(ctx)
	}()
	var m transport.Msg
	for _, want := range sent {
		if want.Kind == KindEndRound && want.Arg == 2 {
			continue // dropped
		}
		if err := dst.Recv(ctx, &m); err != nil {
			t.Fatalf("receiving %v %d: %v", want.Kind, want.Arg, err)
		}
		if m.Kind != want.Kind || m.Page != want.Page || m.Arg != want.Arg || !bytes.Equal(m.Data, want.Data) {
			t.Fatalf("received %v page %d arg %d (%d bytes), want %v page %d arg %d (%d bytes)",
				m.Kind, m.Page, m.Arg, len(m.Data), want.Kind, want.Page, want.Arg, len(want.Data))
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	if err := dst.Send(ctx, transport.Msg{Kind: KindAck, Arg: AckReady, Page: 7}); err != nil {
		t.Fatal(err)
	}
	if err := dst.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Recv(ctx, &m); err != nil || m.Kind != KindAck || m.Arg != AckReady || m.Page != 7 {
		t.Fatalf("return path: %v %d %d, %v", m.Kind, m.Arg, m.Page, err)
	}

	ev := waitFired(t, h.p)
	if len(ev) != 1 || ev[0].Kind != KindEndRound || ev[0].Nth != 1 {
		t.Errorf("events %v", ev)
	}
	s := h.p.Stats()
	if s.Conns[0].Raw != [2]bool{} {
		t.Fatalf("the proxy took transport's stream for plain bytes: raw %v", s.Conns[0].Raw)
	}
	for _, c := range []struct {
		d    Dir
		k    Kind
		want int64
	}{{SrcToDst, KindEndRound, 3}, {SrcToDst, KindState, 1}, {SrcToDst, KindCommit, 1}, {DstToSrc, KindAck, 1}} {
		if got := s.Frames(c.d, c.k); got != c.want {
			t.Errorf("%v %v frames: %d, want %d", c.d, c.k, got, c.want)
		}
	}
	if n := s.Frames(SrcToDst, KindPage); n < 1 || n > 10 {
		t.Errorf("%d Page frames for 10 pages", n)
	}
}

// flakyListener fails its first n Accepts as a listener out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	n atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptError: an Accept error other than the listener's closing is
// waited out, not the end of the proxy.
func TestAcceptError(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	target.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.n.Store(4)
	var d net.Dialer
	p := start(fl, target.Addr().String(), d.DialContext, nil)
	defer p.Close()
	client, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := target.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	write(t, client, []byte("hi"))
	if got := readN(t, server, 2); string(got) != "hi" {
		t.Errorf("got %q", got)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t)
}

// TestDialHang: a dial of the target that does not answer is bounded and
// does not stop the accepting; the connections accepted after it wait for
// their number until it fails, and Close ends it.
func TestDialHang(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	target.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	hung := make(chan bool, 2)
	release := make(chan struct{})
	var calls atomic.Int32
	var d net.Dialer
	// The first dial, and with blackhole every dial, hangs until released
	// or cancelled.
	blackhole := false
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if calls.Add(1) == 1 || blackhole {
			_, bounded := ctx.Deadline()
			hung <- bounded
			select {
			case <-release:
				return nil, errors.New("no answer")
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return d.DialContext(ctx, network, addr)
	}
	proxy := func(rules ...Rule) *Proxy {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := start(ln, target.Addr().String(), dial, rules)
		t.Cleanup(func() { p.Close() })
		return p
	}
	dialProxy := func(p *Proxy) net.Conn {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	p := proxy(Rule{Trigger: Trigger{Kind: KindCommit}, Fault: Close})
	c0 := dialProxy(p)
	if bounded := <-hung; !bounded {
		t.Error("the dial of the target has no deadline")
	}
	c1 := dialProxy(p) // accepted, and dialled, while the first dial hangs
	s1, err := target.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	write(t, c1, cat(hello(), control(KindCommit, 0, 0, nil)))
	expectSilence(t, s1) // held until the first connection has failed
	close(release)
	expectEnd(t, c0)
	readN(t, s1, HelloSize)
	expectEnd(t, s1)
	if ev := waitFired(t, p); ev[0].Conn != 0 || len(p.Stats().Conns) != 1 {
		t.Errorf("events %v, %d conns", ev, len(p.Stats().Conns))
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	blackhole = true
	p = proxy()
	c := dialProxy(p)
	<-hung
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	expectEnd(t, c)
	goleak.VerifyNone(t)
}

// waitFrames waits until the proxy has seen n frames of kind k in d.
func waitFrames(t *testing.T, p *Proxy, d Dir, k Kind, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); p.Stats().Frames(d, k) < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy did not see %d %v frames", n, k)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestHealClaimed: Heal disarms a rule whose frame was matched (the rule
// taken by its connection) but whose fault was not yet due: an After close
// at the end of the frame, a flip deep in it.
func TestHealClaimed(t *testing.T) {
	big := pages(1, 100000, 1)
	for _, c := range []struct {
		name  string
		rule  Rule
		frame []byte
		kind  Kind
	}{
		{"after", Rule{Trigger: Trigger{Kind: KindCommit, After: true}, Fault: Close}, control(KindCommit, 0, 0, nil), KindCommit},
		{"flip", Rule{Trigger: Trigger{Kind: KindPage}, Fault: FlipPayload, Bit: 8 * 90000}, big, KindPage},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.rule)
			client, server := h.dial()
			up := cat(hello(), c.frame, frame(KindHeartbeat, 0, nil))
			first := HelloSize + HeaderSize + controlHead // the frame's head: it is matched
			write(t, client, up[:first])
			readN(t, server, first)
			waitFrames(t, h.p, SrcToDst, c.kind, 1)
			h.p.Heal()
			write(t, client, up[first:])
			if got := readN(t, server, len(up)-first); !bytes.Equal(got, up[first:]) {
				t.Error("the healed connection changed")
			}
			expectSilence(t, server) // not closed
			if ev := h.p.Events(); len(ev) != 0 {
				t.Errorf("events %v", ev)
			}
			select {
			case <-h.p.Fired():
				t.Error("Fired closed with the rule disarmed")
			default:
			}
		})
	}
}

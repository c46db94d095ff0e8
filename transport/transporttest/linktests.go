package transporttest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

type linkMaker func(t *testing.T) (a, b transport.Link)

func runLinkTests(t *testing.T, links linkMaker) {
	run(t, "Handshake", func(t *testing.T) { testHandshake(t, links) })
	run(t, "HandshakeRefusesVersion", func(t *testing.T) { testRefuseVersion(t, links) })
	run(t, "HandshakeRefusesPageSize", func(t *testing.T) {
		testRefuseGeometry(t, links, transport.Hello{PageSize: 8192, PageCount: 2000}, "peer page size 8192, ours 4096", "peer page size 4096, ours 8192")
	})
	run(t, "HandshakeRefusesPageCount", func(t *testing.T) {
		testRefuseGeometry(t, links, transport.Hello{PageSize: 4096, PageCount: 1000}, "peer has 1000 pages, we have 2000", "peer has 2000 pages, we have 1000")
	})
	run(t, "HandshakeRefusesStranger", func(t *testing.T) { testRefuseStranger(t, links) })
	run(t, "HandshakeCancel", func(t *testing.T) { testHandshakeCancel(t, links) })
	run(t, "CleanEOF", func(t *testing.T) { testCleanEOF(t, links) })
	for _, cut := range []int{3, 1000, frameLen(63) + 5, frameLen(63) + 100000} {
		run(t, fmt.Sprintf("CutAt%d", cut), func(t *testing.T) { testCut(t, links, cut) })
	}
	f := frameLen(63)
	for _, flip := range []struct {
		name string
		off  int
		bit  uint
	}{
		{"LengthLow", 0, 0},
		{"LengthMid", 2, 1},
		{"LengthHigh", 3, 7},
		{"Type", 4, 1},
		{"Flags", 5, 0},
		{"Count", 6, 0},
		{"RecordPage", 8, 3},
		{"RecordEncoding", 16, 2},
		{"RecordLength", 17, 4},
		{"Data", 5000, 6},
		{"CRC", f - 1, 7},
		{"SecondFrameData", f + 70000, 0},
	} {
		run(t, "Corrupt"+flip.name, func(t *testing.T) { testCorrupt(t, links, flip.off, flip.bit) })
	}
	run(t, "HostileLength", func(t *testing.T) { testHostileLength(t, links) })
}

// frameLen is the length on the wire of a batch of n raw 4 KiB pages.
func frameLen(n int) int {
	return transport.FrameOverhead + n*(transport.RecordOverhead+PageSize)
}

var geometry = transport.Hello{PageSize: 4096, PageCount: 2000}

func testHandshake(t *testing.T, links linkMaker) {
	la, lb := links(t)
	ha := geometry
	ha.Features = transport.FeatXBZRLE | transport.FeatDigest | transport.FeatPostCopy
	ha.Session[0] = 0xa5
	hb := geometry
	hb.Features = transport.FeatLZ4 | transport.FeatDigest | transport.FeatPostCopy
	hb.Streams, hb.Stream = 4, 3
	type opened struct {
		c    transport.Conn
		peer transport.Hello
		err  error
	}
	och := make(chan opened, 1)
	go func() {
		c, peer, err := transport.Open(bg, la, ha, transport.Config{})
		och <- opened{c, peer, err}
	}()
	cb, peerA, err := transport.Open(bg, lb, hb, transport.Config{})
	if err != nil {
		t.Fatalf("Open b: %v", err)
	}
	defer cb.Close()
	o := await(t, och, "Open a")
	if o.err != nil {
		t.Fatalf("Open a: %v", o.err)
	}
	defer o.c.Close()
	ha.Version, hb.Version = transport.ProtocolVersion, transport.ProtocolVersion
	// Open announces its liveness bound; the rest is as sent.
	peerA.Liveness, o.peer.Liveness = 0, 0
	if peerA != ha {
		t.Errorf("b saw hello %+v, a sent %+v", peerA, ha)
	}
	if o.peer != hb {
		t.Errorf("a saw hello %+v, b sent %+v", o.peer, hb)
	}
	if got, want := transport.Agreed(ha, hb), transport.FeatDigest|transport.FeatPostCopy; got != want {
		t.Errorf("Agreed = %b, want %b", got, want)
	}
	g := newGen(5)
	exchange(t, o.c, cb, everyKind(g, 100), true)
}

// fakePeer writes raw on l as its hello and reads the other side's.
func fakePeer(l transport.Link, raw []byte) <-chan error {
	return goErr(func() error {
		if _, err := l.Write(raw); err != nil {
			return err
		}
		var in [transport.HelloSize]byte
		_, err := io.ReadFull(l, in[:])
		return err
	})
}

func testRefuseVersion(t *testing.T, links linkMaker) {
	la, lb := links(t)
	h := geometry
	h.Version = transport.ProtocolVersion - 1 // a peer of the previous version
	// Version 1's hello: this one's without the liveness field.
	v1 := transport.AppendHello(nil, h)[:transport.HelloSize-8]
	v1 = binary.LittleEndian.AppendUint32(v1, crc32.Checksum(v1, crc32.MakeTable(crc32.Castagnoli)))
	peer := fakePeer(la, v1)
	got, err := transport.Handshake(bg, lb, geometry)
	want := fmt.Sprintf("peer speaks protocol %d, we speak %d", h.Version, transport.ProtocolVersion)
	if !errors.Is(err, livemig.ErrVersion) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Handshake with a version %d peer: %v, want livemig.ErrVersion saying %q", h.Version, err, want)
	}
	if got.Version != h.Version {
		t.Errorf("refused peer's hello has version %d, want %d", got.Version, h.Version)
	}
	if err := await(t, peer, "fake peer"); err != nil {
		t.Errorf("the refused peer did not get our hello: %v", err)
	}
}

func testRefuseGeometry(t *testing.T, links linkMaker, other transport.Hello, wantB, wantA string) {
	la, lb := links(t)
	errA := goErr(func() error {
		_, err := transport.Handshake(bg, la, other)
		return err
	})
	_, errB := transport.Handshake(bg, lb, geometry)
	for _, c := range []struct {
		side string
		err  error
		want string
	}{{"b", errB, wantB}, {"a", await(t, errA, "handshake a"), wantA}} {
		if !errors.Is(c.err, livemig.ErrVersion) || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("side %s: %v, want livemig.ErrVersion saying %q", c.side, c.err, c.want)
		}
	}
}

func testRefuseStranger(t *testing.T, links linkMaker) {
	la, lb := links(t)
	raw := []byte("GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n")
	peer := fakePeer(la, raw)
	_, err := transport.Handshake(bg, lb, geometry)
	if !errors.Is(err, livemig.ErrCorrupt) || !strings.Contains(err.Error(), "not a livemig peer") {
		t.Fatalf("Handshake with an HTTP client: %v, want livemig.ErrCorrupt saying not a livemig peer", err)
	}
	await(t, peer, "fake peer") // any outcome; it must end

	// A livemig hello with one bit flipped.
	la, lb = links(t)
	raw = transport.AppendHello(nil, geometry)
	raw[12] ^= 0x10
	peer = fakePeer(la, raw)
	if _, err = transport.Handshake(bg, lb, geometry); !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("Handshake with a corrupt hello: %v, want livemig.ErrCorrupt", err)
	}
	await(t, peer, "fake peer")
}

func testHandshakeCancel(t *testing.T, links linkMaker) {
	_, lb := links(t)
	sig := &signalLink{Link: lb, reading: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	done := goErr(func() error {
		_, err := transport.Handshake(ctx, sig, geometry)
		return err
	})
	await(t, sig.reading, "handshake reading")
	cancel()
	if err := await(t, done, "handshake after cancel"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Handshake after cancel: %v, want context.Canceled", err)
	}
}

func testCleanEOF(t *testing.T, links linkMaker) {
	la, lb := links(t)
	a := transport.NewConn(la, transport.Config{})
	b := transport.NewConn(lb, transport.Config{})
	defer b.Close()
	g := newGen(6)
	want := append(g.pages(200, 50), transport.Msg{Kind: wire.KindDone})
	sent := goErr(func() error {
		if err := sendAll(bg, a, want); err != nil {
			return err
		}
		return a.Close()
	})
	got, err := recvN(bg, b, len(want))
	if err != nil {
		t.Fatalf("recv after %d of %d: %v", len(got), len(want), err)
	}
	if err := checkOrder(want, got, true, false); err != nil {
		t.Fatal(err)
	}
	if err := await(t, sent, "send"); err != nil {
		t.Fatal(err)
	}
	var m transport.Msg
	if err := b.Recv(bg, &m); err != io.EOF && !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Recv after the peer closed: %v, want io.EOF", err)
	}
}

// errCut is what a cutLink's Write returns once cut.
var errCut = fmt.Errorf("transporttest: link cut: %w", livemig.ErrClosed)

// cutLink passes the first left bytes written through, then closes the link.
type cutLink struct {
	transport.Link
	left int // only the writing goroutine uses it
}

func (l *cutLink) Write(p []byte) (int, error) {
	if len(p) <= l.left {
		n, err := l.Link.Write(p)
		l.left -= n
		return n, err
	}
	n, _ := l.Link.Write(p[:l.left])
	l.left = 0
	l.Link.Close()
	return n, errCut
}

func testCut(t *testing.T, links linkMaker, cut int) {
	la, lb := links(t)
	a := transport.NewConn(&cutLink{Link: la, left: cut}, transport.Config{})
	b := transport.NewConn(lb, transport.Config{})
	defer a.Close()
	defer b.Close()
	g := newGen(7)
	want := make([]transport.Msg, 300)
	for i := range want {
		want[i] = transport.Msg{Kind: wire.KindPage, Page: uint64(i), Data: g.bytes(PageSize)}
	}
	sent := goErr(func() error { return sendAll(bg, a, want) })
	got, err := recvN(bg, b, len(want))
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Recv over a link cut at byte %d: %v after %d messages, want io.ErrUnexpectedEOF or livemig.ErrClosed", cut, err, len(got))
	}
	if err := checkOrder(want, got, true, true); err != nil {
		t.Fatalf("before the cut: %v", err)
	}
	if max := (cut - transport.FrameOverhead) / (transport.RecordOverhead + PageSize); len(got) > max {
		t.Fatalf("received %d pages through a link cut at byte %d, at most %d fit", len(got), cut, max)
	}
	b.Close() // unblock a sender waiting on an unbuffered link
	if err := await(t, sent, "send over a cut link"); err == nil {
		t.Fatalf("sending 300 pages over a link cut at byte %d succeeded", cut)
	}
}

// flipLink flips one bit of the byte at offset off of what is written.
type flipLink struct {
	transport.Link
	off int // bytes to go before the flip; only the writer uses it
	bit uint
}

func (l *flipLink) Write(p []byte) (int, error) {
	if l.off >= 0 && l.off < len(p) {
		q := append([]byte(nil), p...)
		q[l.off] ^= 1 << l.bit
		l.off = -1
		return l.Link.Write(q)
	}
	if l.off >= 0 {
		l.off -= len(p)
	}
	return l.Link.Write(p)
}

func testCorrupt(t *testing.T, links linkMaker, off int, bit uint) {
	la, lb := links(t)
	a := transport.NewConn(&flipLink{Link: la, off: off, bit: bit}, transport.Config{})
	b := transport.NewConn(lb, transport.Config{})
	defer a.Close()
	defer b.Close()
	g := newGen(8)
	want := make([]transport.Msg, 400) // about 7 frames, so a longer length still meets data
	for i := range want {
		want[i] = transport.Msg{Kind: wire.KindPage, Page: uint64(i), Data: g.bytes(PageSize)}
	}
	want = append(want, transport.Msg{Kind: wire.KindDone})
	sent := goErr(func() error { return sendAll(bg, a, want) })
	got, err := recvN(bg, b, len(want))
	var se *livemig.StreamError
	if !errors.Is(err, livemig.ErrCorrupt) || !errors.As(err, &se) {
		t.Fatalf("Recv with bit %d of byte %d flipped: %v after %d messages, want a *livemig.StreamError wrapping livemig.ErrCorrupt", bit, off, err, len(got))
	}
	if se.Offset > int64(off) {
		t.Errorf("error at stream offset %d, after the flipped byte %d", se.Offset, off)
	}
	if err := checkOrder(want, got, true, true); err != nil {
		t.Fatalf("before the corruption: %v", err)
	}
	var m transport.Msg
	if err2 := b.Recv(bg, &m); !errors.Is(err2, livemig.ErrCorrupt) {
		t.Errorf("Recv after a corrupt frame: %v, want the same error again", err2)
	}
	b.Close()
	await(t, sent, "send") // any outcome: the receiver gave up
}

func testHostileLength(t *testing.T, links linkMaker) {
	for _, h := range []struct {
		name   string
		length uint32
		kind   byte
		count  uint16
	}{
		{"4GiB", 0xffff_ffff, 1, 1},
		{"OverMaxFrame", transport.DefaultMaxFrame + 1, 1, 1},
		{"StateOverMaxFrame", transport.DefaultMaxFrame + 1, byte(wire.KindState), 0},
		{"UnknownType", 20, 0x42, 0},
		{"EmptyBatch", 0, 1, 0},
		{"CountOverLength", 100, 1, 9},
	} {
		t.Run(h.name, func(t *testing.T) {
			la, lb := links(t)
			b := transport.NewConn(lb, transport.Config{})
			defer b.Close()
			var hdr [12]byte // with a valid header CRC: the fields are what is hostile
			binary.LittleEndian.PutUint32(hdr[:], h.length)
			hdr[4] = h.kind
			binary.LittleEndian.PutUint16(hdr[6:], h.count)
			binary.LittleEndian.PutUint32(hdr[8:], crc32.Checksum(hdr[:8], crc32.MakeTable(crc32.Castagnoli)))
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				la.Write(hdr[:]) // then nothing: the receiver must not wait for the payload
			}()
			var m transport.Msg
			err := b.Recv(bg, &m)
			if !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("Recv of a frame header %x: %v, want livemig.ErrCorrupt", hdr, err)
			}
			b.Close()
			wg.Wait()
		})
	}
}

// signalLink sends on reading when Read is first called.
type signalLink struct {
	transport.Link
	reading chan struct{}
	once    sync.Once
}

func (l *signalLink) Read(p []byte) (int, error) {
	l.once.Do(func() { l.reading <- struct{}{} })
	return l.Link.Read(p)
}

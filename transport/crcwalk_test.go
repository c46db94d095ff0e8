package transport

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/livemig/livemig"
)

// crcMsgs is a seeded mix of raw pages, zero pages, short records, a
// record of a page's length that is not raw, controls and a blob longer
// than a frame.
func crcMsgs(seed uint64) []Msg {
	rng := rand.New(rand.NewPCG(seed, 3))
	fill := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	var ms []Msg
	for i := range 300 {
		switch r := rng.IntN(10); {
		case r < 6:
			ms = append(ms, Msg{Kind: kindPage, Enc: EncRaw, Page: uint64(i), Data: fill(4096)})
		case r == 6:
			ms = append(ms, Msg{Kind: kindPage, Enc: EncZero, Page: uint64(i)})
		case r == 7:
			ms = append(ms, Msg{Kind: kindPage, Enc: EncXBZRLE, Page: uint64(i), Data: fill(1 + rng.IntN(4000))})
		case r == 8 || i%100 != 50:
			ms = append(ms, Msg{Kind: kindEndRound, Arg: uint64(i)})
		default:
			ms = append(ms, Msg{Kind: kindState, Data: fill(DefaultMaxFrame + 1 + rng.IntN(DefaultMaxFrame))})
		}
	}
	return ms
}

// sendAll sends ms on a Conn over a pipe, with the raw pages' CRCs given
// (withCRC) or not, and returns the bytes that crossed.
func sendAll(t *testing.T, ms []Msg, withCRC bool, corrupt int) []byte {
	t.Helper()
	a, b := Pipe(1 << 16)
	conn := NewConn(a, Config{Liveness: -1})
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	for i, m := range ms {
		if withCRC && m.Enc == EncRaw {
			m.DataCRC, m.HaveCRC = crc32.Checksum(m.Data, castagnoli), true
			if i == corrupt {
				m.DataCRC ^= 1
			}
		}
		if err := conn.Send(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	return <-got
}

// A sender that gives the raw pages' CRCs puts on the link the very bytes
// of one that does not; the receiver returns every raw page's CRC, right,
// and no CRC for anything else; a wrong CRC given makes the frame corrupt.
func TestPageCRC(t *testing.T) {
	for seed := range uint64(3) {
		ms := crcMsgs(seed)
		plain, given := sendAll(t, ms, false, -1), sendAll(t, ms, true, -1)
		if !bytes.Equal(plain, given) {
			t.Fatalf("seed %d: %d bytes with CRCs given, %d without, or they differ", seed, len(given), len(plain))
		}
		a, b := Pipe(1 << 16)
		go func() {
			b.Write(given)
			b.Close()
		}()
		conn := NewConn(a, Config{Liveness: -1})
		raw := 0
		for i := 0; ; i++ {
			var m Msg
			err := conn.Recv(context.Background(), &m)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("seed %d, message %d: %v", seed, i, err)
			}
			isRaw := m.Kind == kindPage && m.Enc == EncRaw
			if m.HaveCRC != isRaw || (isRaw && m.DataCRC != crc32.Checksum(m.Data, castagnoli)) {
				t.Fatalf("seed %d, message %d (%v, encoding %d): CRC %#08x given %v", seed, i, m.Kind, m.Enc, m.DataCRC, m.HaveCRC)
			}
			if isRaw {
				raw++
			}
		}
		conn.Close()
		if raw == 0 {
			t.Fatalf("seed %d: no raw page received", seed)
		}
	}
	// One wrong CRC among the pages: the receiver refuses its frame.
	ms := crcMsgs(9)
	bad := -1
	for i, m := range ms {
		if m.Enc == EncRaw && i > 50 {
			bad = i
			break
		}
	}
	stream := sendAll(t, ms, true, bad)
	a, b := Pipe(1 << 16)
	go func() {
		b.Write(stream)
		b.Close()
	}()
	conn := NewConn(a, Config{Liveness: -1})
	defer conn.Close()
	for {
		var m Msg
		err := conn.Recv(context.Background(), &m)
		if err == io.EOF {
			t.Fatal("a frame built with a wrong page CRC was taken")
		}
		if err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("want a corrupt frame, got %v", err)
			}
			return
		}
		if m.Kind == kindPage && m.Page == uint64(bad) {
			t.Fatalf("page %d, sent with a wrong CRC, was returned", bad)
		}
	}
}

package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
)

var bg = context.Background()

// bufLink reads from r and appends what is written to w.
type bufLink struct {
	r io.Reader
	w bytes.Buffer
}

func (l *bufLink) Read(p []byte) (int, error)  { return l.r.Read(p) }
func (l *bufLink) Write(p []byte) (int, error) { return l.w.Write(p) }
func (l *bufLink) Close() error                { return nil }

// loopLink replays data forever and discards writes.
type loopLink struct {
	data []byte
	pos  int
}

func (l *loopLink) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.pos:])
	l.pos = (l.pos + n) % len(l.data)
	return n, nil
}
func (l *loopLink) Write(p []byte) (int, error) { return len(p), nil }
func (l *loopLink) Close() error                { return nil }

// encode returns the wire form of msgs sent (and flushed) on a Conn.
func encode(t testing.TB, cfg Config, msgs ...Msg) []byte {
	t.Helper()
	l := &bufLink{r: bytes.NewReader(nil)}
	c := NewConn(l, cfg)
	for _, m := range msgs {
		if err := c.Send(bg, m); err != nil {
			t.Fatalf("Send %v: %v", m.Kind, err)
		}
	}
	if err := c.Flush(bg); err != nil {
		t.Fatal(err)
	}
	return l.w.Bytes()
}

// decode receives from stream until an error, copying the messages.
func decode(stream []byte, cfg Config) ([]Msg, error) {
	c := NewConn(&bufLink{r: bytes.NewReader(stream)}, cfg)
	var out []Msg
	for {
		var m Msg
		if err := c.Recv(bg, &m); err != nil {
			return out, err
		}
		m.Data = bytes.Clone(m.Data)
		out = append(out, m)
	}
}

func seq(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i) + seed
	}
	return b
}

// TestWireFormat pins the byte layout of a batch and a control frame.
func TestWireFormat(t *testing.T) {
	cfg := Config{PageSize: 8}
	got := encode(t, cfg,
		Msg{Kind: kindPage, Enc: EncRaw, Page: 5, Data: seq(8, 1)},
		Msg{Kind: kindPage, Enc: EncZero, Page: 6},
		Msg{Kind: kindEndRound, Page: 0, Arg: 3},
	)
	want := "" +
		// batch: length 34, type 1, flags 0, count 2, CRC32C of those 8 bytes
		"22000000" + "01" + "00" + "0200" + "0bb750e9" +
		"0500000000000000" + "00" + "08000000" + "0102030405060708" +
		"0600000000000000" + "01" + "00000000" +
		"2cfe118f" + // CRC32C of header and payload
		// EndRound: length 16, type 2, page 0, arg 3
		"10000000" + "02" + "00" + "0000" + "bf9839b7" +
		"0000000000000000" + "0300000000000000" +
		"57d18167"
	if h := hex.EncodeToString(got); h != want {
		t.Fatalf("wire form:\n got %s\nwant %s", h, want)
	}
}

func TestHelloFormat(t *testing.T) {
	h := Hello{PageSize: 4096, PageCount: 0x1_0000_0001, Features: FeatLZ4 | FeatDigest, Streams: 4, Stream: 2,
		Liveness: 5 * time.Second}
	h.Session[0], h.Session[15] = 0xaa, 0xbb
	got := AppendHello([]byte{0xff}, h)[1:]
	want := "4c564d47" + "0200" + "00100000" + "0100000001000000" + "0a00000000000000" + "0400" + "0200" +
		"aa0000000000000000000000000000bb" + "88130000" // liveness 5000 ms
	if len(got) != HelloSize || hex.EncodeToString(got[:HelloSize-4]) != want {
		t.Fatalf("hello:\n got %x\nwant %s + crc", got, want)
	}
	back, err := ParseHello(got)
	h.Version = ProtocolVersion
	if err != nil || back != h {
		t.Fatalf("ParseHello = %+v, %v; want %+v", back, err, h)
	}
}

func TestRoundTripAllKinds(t *testing.T) {
	cfg := Config{PageSize: 64, PageCount: 100, MaxFrame: 5000, MaxState: 20000}
	state := seq(12345, 9) // several frames of at most 5000-16 bytes
	msgs := []Msg{
		{Kind: kindPage, Enc: EncRaw, Page: 1, Data: seq(64, 1)},
		{Kind: kindPage, Enc: EncZero, Page: 2},
		{Kind: kindPage, Enc: EncXBZRLE, Page: 3, Data: seq(10, 2)},
		{Kind: kindPage, Enc: EncLZ4, Page: 99, Data: seq(128, 3)},
		{Kind: kindEndRound, Arg: 1},
		{Kind: kindState, Page: 4, Arg: 5, Data: state},
		{Kind: kindState, Data: seq(4984, 4)}, // exactly one frame
		{Kind: kindSwitchover, Arg: 2},
		{Kind: kindDone, Arg: 77},
		{Kind: kindCommit},
		{Kind: kindError, Data: []byte("boom")},
		{Kind: kindRequest, Page: 90, Arg: 10},
		{Kind: kindAck, Arg: ackReady, Page: 42},
		{Kind: kindDiscard, Page: 64, Data: appendWords(nil, []uint64{5})},
		{Kind: kindRecvBitmap, Data: appendWords(nil, []uint64{1, 2})},
		{Kind: kindResume, Page: 7},
	}
	stream := encode(t, cfg, msgs...)
	got, err := decode(stream, cfg)
	if err != io.EOF {
		t.Fatalf("decode: %v, want io.EOF after the last frame", err)
	}
	if len(got) != len(msgs) {
		t.Fatalf("got %d messages, want %d", len(got), len(msgs))
	}
	for i := range msgs {
		w, g := msgs[i], got[i]
		if w.Kind != g.Kind || w.Enc != g.Enc || w.Page != g.Page || w.Arg != g.Arg || !bytes.Equal(w.Data, g.Data) {
			t.Errorf("message %d: got %v enc %d page %d arg %d len %d, want %v enc %d page %d arg %d len %d",
				i, g.Kind, g.Enc, g.Page, g.Arg, len(g.Data), w.Kind, w.Enc, w.Page, w.Arg, len(w.Data))
		}
	}
}

func TestSendRefusesBadMessages(t *testing.T) {
	c := NewConn(&bufLink{r: bytes.NewReader(nil)}, Config{PageSize: 64, PageCount: 10, MaxFrame: 5000, MaxState: 6000})
	for _, tc := range []struct {
		m    Msg
		want error
	}{
		{Msg{Kind: kindPage, Enc: EncRaw, Data: make([]byte, 63)}, ErrInvalid},
		{Msg{Kind: kindPage, Enc: EncZero, Data: make([]byte, 1)}, ErrInvalid},
		{Msg{Kind: kindPage, Enc: 9}, ErrInvalid},
		{Msg{Kind: kindPage, Enc: EncLZ4, Data: make([]byte, 129)}, ErrInvalid},
		{Msg{Kind: kindPage, Enc: EncZero, Page: 10}, livemig.ErrPageRange},
		{Msg{Kind: 0}, ErrInvalid},
		{Msg{Kind: 14}, ErrInvalid}, // not defined
		{Msg{Kind: KindHeartbeat}, ErrInvalid},
		{Msg{Kind: kindError, Data: make([]byte, 5000)}, ErrTooLarge},
		{Msg{Kind: kindState, Data: make([]byte, 6001)}, ErrTooLarge},
	} {
		if err := c.Send(bg, tc.m); !errors.Is(err, tc.want) {
			t.Errorf("Send(%v enc %d page %d, %d bytes) = %v, want %v", tc.m.Kind, tc.m.Enc, tc.m.Page, len(tc.m.Data), err, tc.want)
		}
	}
	// A refused message does not break the Conn.
	if err := c.Send(bg, Msg{Kind: kindDone}); err != nil {
		t.Fatal(err)
	}
}

func TestConfigPageSizeTooLarge(t *testing.T) {
	c := NewConn(&bufLink{r: bytes.NewReader(nil)}, Config{PageSize: MaxPageSize + 1})
	if err := c.Send(bg, Msg{Kind: kindDone}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Send on a Conn with a bad page size: %v, want ErrInvalid", err)
	}
	var m Msg
	if err := c.Recv(bg, &m); !errors.Is(err, ErrInvalid) {
		t.Errorf("Recv on a Conn with a bad page size: %v, want ErrInvalid", err)
	}
}

// frame builds a frame with a correct CRC.
func frame(kind Kind, flags uint8, count int, payload []byte) []byte {
	b := make([]byte, frameHeaderSize, frameHeaderSize+len(payload)+frameTrailerSize)
	putFrameHeader(b, len(payload), kind, flags, count)
	b = append(b, payload...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func record(page uint64, enc Encoding, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, page)
	b = append(b, byte(enc))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func control(page, arg uint64, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, page)
	b = binary.LittleEndian.AppendUint64(b, arg)
	return append(b, data...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// TestRecvRefusesBadFrames checks each receive-side rule on frames with a
// valid CRC, and where the error points.
func TestRecvRefusesBadFrames(t *testing.T) {
	cfg := Config{PageSize: 64, PageCount: 100, MaxFrame: 5000, MaxState: 6000}
	good := frame(kindEndRound, 0, 0, control(0, 1, nil))
	off := int64(len(good))
	for _, tc := range []struct {
		name, what string
		frame      []byte
		want       error
		at         int64 // offset of the error after the good frame
	}{
		{"RawShort", "raw page of the wrong length", frame(kindPage, 0, 1, record(1, EncRaw, seq(63, 0))), livemig.ErrCorrupt, frameHeaderSize},
		{"ZeroWithData", "zero page with data", frame(kindPage, 0, 1, record(1, EncZero, seq(1, 0))), livemig.ErrCorrupt, frameHeaderSize},
		{"UnknownEncoding", "unknown page encoding", frame(kindPage, 0, 1, record(1, 4, nil)), livemig.ErrCorrupt, frameHeaderSize},
		{"EncodedTooLong", "longer than twice", frame(kindPage, 0, 1, record(1, EncLZ4, seq(129, 0))), livemig.ErrCorrupt, frameHeaderSize},
		{"SecondRecordPastEnd", "past the frame's end", frame(kindPage, 0, 2, cat(record(1, EncRaw, seq(64, 0)), record(2, EncZero, nil)[:12])), livemig.ErrCorrupt, frameHeaderSize + 13 + 64},
		{"DataPastEnd", "past the frame's end", frame(kindPage, 0, 1, record(1, EncRaw, seq(64, 0))[:40]), livemig.ErrCorrupt, frameHeaderSize},
		{"TrailingBytes", "after the last of 1 records", frame(kindPage, 0, 1, cat(record(1, EncZero, nil), seq(3, 0))), livemig.ErrCorrupt, frameHeaderSize + 13},
		{"PageRange", "page 100 of 100", frame(kindPage, 0, 2, cat(record(1, EncZero, nil), record(100, EncZero, nil))), livemig.ErrPageRange, frameHeaderSize + 13},
		{"EmptyBatch", "empty batch", frame(kindPage, 0, 0, nil), livemig.ErrCorrupt, 0},
		{"BatchFlags", "batch frame with flags", frame(kindPage, 2, 1, record(1, EncZero, nil)), livemig.ErrCorrupt, 0},
		{"ControlCount", "record count 1", frame(kindDone, 0, 1, control(0, 0, nil)), livemig.ErrCorrupt, 0},
		{"ControlShort", "control frame of 15 bytes", frame(kindDone, 0, 0, seq(15, 0)), livemig.ErrCorrupt, 0},
		{"MoreOnDone", "Done frame with flags", frame(kindDone, frameFlagMore, 0, control(0, 0, nil)), livemig.ErrCorrupt, 0},
		{"UnknownType", "unknown frame type 0", frame(0, 0, 0, control(0, 0, nil)), livemig.ErrCorrupt, 0},
		{"StateCut", "Done frame inside a State blob", cat(frame(kindState, frameFlagMore, 0, control(0, 0, seq(10, 0))), frame(kindDone, 0, 0, control(0, 0, nil))), livemig.ErrCorrupt, frameHeaderSize + 16 + 10 + 4},
		{"StateTooLong", "State blob over the limit 6000", cat(frame(kindState, frameFlagMore, 0, control(0, 0, seq(4000, 0))), frame(kindState, 0, 0, control(0, 0, seq(2001, 0)))), livemig.ErrCorrupt, 0},
		{"BitmapNotWords", "Discard frame with 9 bitmap bytes", frame(kindDiscard, 0, 0, control(0, 0, seq(9, 0))), livemig.ErrCorrupt, 0},
		{"BitmapEmpty", "RecvBitmap frame with 0 bitmap bytes", frame(kindRecvBitmap, 0, 0, control(0, 0, nil)), livemig.ErrCorrupt, 0},
		{"UnknownKind", "unknown frame type 14", frame(14, 0, 0, control(0, 0, nil)), livemig.ErrCorrupt, 0},
		{"BadHeaderCRC", "header CRC mismatch", func() []byte { f := frame(kindDone, 0, 0, control(0, 0, nil)); f[headerCRCOffset] ^= 1; return f }(), livemig.ErrCorrupt, 0},
		{"FlippedLength", "header CRC mismatch", func() []byte { f := frame(kindDone, 0, 0, control(0, 0, nil)); f[0] ^= 0x10; return f }(), livemig.ErrCorrupt, 0},
		{"FlippedKind", "header CRC mismatch", func() []byte { f := frame(kindDone, 0, 0, control(0, 0, nil)); f[4] ^= 0x4; return f }(), livemig.ErrCorrupt, 0},
		{"HeartbeatInsideState", "Done frame inside a State blob", cat(frame(kindState, frameFlagMore, 0, control(0, 0, seq(10, 0))), frame(KindHeartbeat, 0, 0, control(0, 0, nil)), frame(kindDone, 0, 0, control(0, 0, nil))), livemig.ErrCorrupt, frameHeaderSize + 16 + 10 + 4 + heartbeatSize},
		{"BadCRC", "CRC", func() []byte { f := frame(kindDone, 0, 0, control(0, 0, nil)); f[len(f)-1] ^= 1; return f }(), livemig.ErrCorrupt, 0},
		{"TooLong", "frame length 5001 over the limit 5000", frame(kindState, 0, 0, control(0, 0, seq(5001-16, 0))), livemig.ErrCorrupt, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decode(cat(good, tc.frame), cfg)
			var se *livemig.StreamError
			if len(got) != 1 || !errors.Is(err, tc.want) || !errors.Is(err, livemig.ErrCorrupt) || !errors.As(err, &se) {
				t.Fatalf("got %d messages and %v, want 1 and a StreamError wrapping %v", len(got), err, tc.want)
			}
			if !strings.Contains(se.What, tc.what) {
				t.Errorf("error says %q, want it to say %q", se.What, tc.what)
			}
			if se.Offset != off+tc.at {
				t.Errorf("error at offset %d, want %d", se.Offset, off+tc.at)
			}
		})
	}
}

func TestRecvCutStream(t *testing.T) {
	cfg := Config{PageSize: 64}
	stream := encode(t, cfg, Msg{Kind: kindPage, Data: seq(64, 0)}, Msg{Kind: kindDone, Arg: 1})
	first := frameHeaderSize + recordHeaderSize + 64 + frameTrailerSize
	for cut := 0; cut <= len(stream); cut++ {
		got, err := decode(stream[:cut], cfg)
		switch {
		case cut == 0 || cut == first || cut == len(stream):
			if err != io.EOF {
				t.Errorf("cut at %d (a frame boundary): %v, want io.EOF", cut, err)
			}
		case !errors.Is(err, io.ErrUnexpectedEOF):
			t.Errorf("cut at %d: %v, want io.ErrUnexpectedEOF", cut, err)
		}
		if want := min(2, cut/first); cut < len(stream) && len(got) != want && !(cut >= first && len(got) == 1) {
			t.Errorf("cut at %d: %d messages", cut, len(got))
		}
	}
}

// TestHostileLengthAllocatesNothing checks that a frame announcing a huge
// length is refused before its buffer grows.
func TestHostileLengthAllocatesNothing(t *testing.T) {
	var hdr [frameHeaderSize]byte
	putFrameHeader(hdr[:], 0xffff_ffff, kindState, 0, 0)
	c := NewConn(&loopLink{data: hdr[:]}, Config{}).(*conn)
	var m Msg
	if err := c.Recv(bg, &m); !errors.Is(err, livemig.ErrCorrupt) {
		t.Fatalf("Recv: %v, want ErrCorrupt", err)
	}
	if cap(c.rbuf) > c.rbufSize(DefaultBatchBytes+recordHeaderSize+livemig.DefaultPageSize) {
		t.Fatalf("receive buffer grew to %d bytes", cap(c.rbuf))
	}
}

func TestPageRecordsAllocateNothing(t *testing.T) {
	page := make([]byte, livemig.DefaultPageSize)
	send := NewConn(&loopLink{data: []byte{0}}, Config{})
	i := uint64(0)
	if n := testing.AllocsPerRun(10000, func() {
		i++
		if err := send.Send(bg, Msg{Kind: kindPage, Page: i, Data: page}); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Send of a 4 KiB page: %v allocations", n)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var msgs []Msg
	for n := range 300 {
		msgs = append(msgs, Msg{Kind: kindPage, Page: uint64(n), Enc: Encoding(r.IntN(2)), Data: page})
		if msgs[n].Enc == EncZero {
			msgs[n].Data = nil
		}
	}
	recv := NewConn(&loopLink{data: encode(t, Config{}, msgs...)}, Config{})
	var m Msg
	if n := testing.AllocsPerRun(10000, func() {
		if err := recv.Recv(bg, &m); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Recv of a 4 KiB page: %v allocations", n)
	}
}

// TestBatchBounds checks that batches respect BatchBytes and the u16 count.
func TestBatchBounds(t *testing.T) {
	cfg := Config{PageSize: 64, BatchBytes: 1000}
	var msgs []Msg
	for i := range 100 {
		msgs = append(msgs, Msg{Kind: kindPage, Page: uint64(i), Data: seq(64, byte(i))})
	}
	stream := encode(t, cfg, msgs...)
	perFrame := 1000 / (recordHeaderSize + 64) // 12
	for off, n := 0, 0; off < len(stream); n++ {
		h, _ := parseFrameHeader(stream[off:])
		if h.length > 1000 || (off+FrameOverhead+h.length < len(stream) && h.count != perFrame) {
			t.Fatalf("frame %d: %d records in %d bytes, want %d in at most 1000", n, h.count, h.length, perFrame)
		}
		off += FrameOverhead + h.length
	}
	zeros := make([]Msg, 70000)
	for i := range zeros {
		zeros[i] = Msg{Kind: kindPage, Enc: EncZero, Page: uint64(i)}
	}
	stream = encode(t, Config{BatchBytes: 2 << 20, MaxFrame: 2 << 20}, zeros...)
	if h, _ := parseFrameHeader(stream); h.count != maxBatchCount {
		t.Fatalf("first batch of zero pages holds %d records, want %d", h.count, maxBatchCount)
	}
	got, err := decode(stream, Config{MaxFrame: 2 << 20})
	if err != io.EOF || len(got) != len(zeros) || got[69999].Page != 69999 {
		t.Fatalf("decoded %d zero pages, %v", len(got), err)
	}
}

package transport

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/livemig/livemig"
)

var _ BatchSender = (*conn)(nil)

// batchRecord is one record a test puts in a batch, and how.
type batchRecord struct {
	m       Msg
	reserve int  // bytes reserved (≥ len(m.Data))
	crc     bool // give the data's CRC at Commit
}

// fill reserves, writes and commits r in b, writing junk into the reserved
// bytes past the data (a page that turned out zero or compressible).
func fill(t testing.TB, b *Batch, r batchRecord) {
	t.Helper()
	d := b.Reserve(r.m.Page, r.reserve)
	if len(d) != r.reserve {
		t.Fatalf("Reserve(%d, %d): %d bytes", r.m.Page, r.reserve, len(d))
	}
	for i := range d {
		d[i] = 0xa5 // what was read there before the page shrank
	}
	copy(d, r.m.Data)
	if err := b.Commit(r.m.Enc, len(r.m.Data), crc32.Checksum(r.m.Data, castagnoli), r.crc); err != nil {
		t.Fatalf("Commit page %d: %v", r.m.Page, err)
	}
}

// randomRecords returns n records of every encoding, seeded.
func randomRecords(rng *rand.Rand, ps, n int) []batchRecord {
	var rs []batchRecord
	for i := range n {
		r := batchRecord{m: Msg{Kind: kindPage, Page: uint64(rng.IntN(1000))}, reserve: ps}
		switch rng.IntN(4) {
		case 0:
			r.m.Enc, r.m.Data, r.crc = EncRaw, seq(ps, byte(i)), rng.IntN(2) == 0
		case 1:
			r.m.Enc = EncZero
		case 2:
			r.m.Enc, r.m.Data = EncLZ4, seq(1+rng.IntN(ps-1), byte(i))
		default:
			r.m.Enc, r.m.Data = EncXBZRLE, seq(rng.IntN(2*ps+1), byte(i))
			r.reserve = max(ps, len(r.m.Data))
		}
		rs = append(rs, r)
	}
	return rs
}

// TestBatchSameBytes builds batches of seeded records of every encoding,
// raw pages with and without their CRC, the rest of each reservation
// scribbled over, and checks that SendBatch writes byte for byte what Send
// and Flush write for the same records, and that a receiver reads them back.
func TestBatchSameBytes(t *testing.T) {
	const ps = 256
	cfg := Config{PageSize: ps, PageCount: 1000, BatchBytes: 64 << 10}
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		rs := randomRecords(rng, ps, 1+rng.IntN(40))
		var msgs []Msg
		for _, r := range rs {
			msgs = append(msgs, r.m)
		}
		want := encode(t, cfg, msgs...)
		l := &bufLink{r: bytes.NewReader(nil)}
		c := NewConn(l, cfg).(*conn)
		b := c.NewBatch(kindPage)
		for _, r := range rs {
			fill(t, b, r)
		}
		if b.Count() != len(rs) {
			t.Fatalf("trial %d: %d records, want %d", trial, b.Count(), len(rs))
		}
		var got []Msg
		for m := range b.Records() {
			got = append(got, m)
		}
		if !sameMsgs(got, msgs) {
			t.Fatalf("trial %d: Records differ from what was committed", trial)
		}
		if err := c.SendBatch(bg, b); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(l.w.Bytes(), want) {
			t.Fatalf("trial %d: SendBatch wrote %d bytes, Send %d; they differ", trial, l.w.Len(), len(want))
		}
		if c.Written() != uint64(len(want)) || c.fr.Written() != uint64(len(want)) {
			t.Fatalf("trial %d: metered %d, framing %d, wrote %d", trial, c.Written(), c.fr.Written(), len(want))
		}
		if b.Count() != 0 || b.Len() != 0 {
			t.Fatalf("trial %d: batch not empty after SendBatch", trial)
		}
		back, err := decode(l.w.Bytes(), cfg)
		if err != io.EOF || !sameMsgs(back, msgs) {
			t.Fatalf("trial %d: received %d records (%v), want %d", trial, len(back), err, len(msgs))
		}
	}
}

func sameMsgs(a, b []Msg) bool {
	return slices.EqualFunc(a, b, func(x, y Msg) bool {
		return x.Kind == y.Kind && x.Enc == y.Enc && x.Page == y.Page && bytes.Equal(x.Data, y.Data)
	})
}

// TestBatchContract checks Batch's rules: what fits, what Commit refuses
// (leaving the batch as it was), Cancel, a page that turns out zero after
// it was read into its reservation, and SendBatch's order among Sends.
func TestBatchContract(t *testing.T) {
	const ps = 64
	cfg := Config{PageSize: ps, PageCount: 100, BatchBytes: 4 * (ps + recordHeaderSize)}
	l := &bufLink{r: bytes.NewReader(nil)}
	c := NewConn(l, cfg).(*conn)
	b := c.NewBatch(kindPage)
	if err := b.Commit(EncZero, 0, 0, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Commit with no reservation: %v", err)
	}
	if d := b.Reserve(1, -1); d != nil {
		t.Fatal("negative reservation granted")
	}
	if d := b.Reserve(1, 2*ps+1); d != nil {
		t.Fatal("reservation over MaxEncodedLen granted")
	}
	// An empty batch takes a record larger than BatchBytes' share.
	if d := b.Reserve(1, 2*ps); len(d) != 2*ps || cap(d) != 2*ps {
		t.Fatalf("largest record: %d bytes, cap %d", len(d), cap(d))
	}
	b.Cancel()
	if err := b.Commit(EncRaw, ps, 0, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Commit after Cancel: %v", err)
	}
	for _, tc := range []struct {
		name    string
		page    uint64
		enc     Encoding
		reserve int
		n       int
		want    error
	}{
		{"PastReservation", 1, EncLZ4, 10, 11, ErrInvalid},
		{"RawShort", 1, EncRaw, ps, ps - 1, ErrInvalid},
		{"ZeroWithData", 1, EncZero, ps, 1, ErrInvalid},
		{"UnknownEncoding", 1, 9, ps, 0, ErrInvalid},
		{"PageRange", 100, EncZero, ps, 0, livemig.ErrPageRange},
	} {
		b.Reserve(tc.page, tc.reserve)
		err := b.Commit(tc.enc, tc.n, 0, false)
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Commit: %v, want %v", tc.name, err, tc.want)
		}
		if b.Count() != 0 || b.Len() != 0 {
			t.Fatalf("%s: a refused record is in the batch", tc.name)
		}
		if err := b.Commit(EncZero, 0, 0, false); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s: the refused reservation stayed open: %v", tc.name, err)
		}
	}
	// A page read into its reservation that turns out zero: its bytes are
	// given back and the next record takes them.
	d := b.Reserve(7, ps)
	copy(d, make([]byte, ps))
	if err := b.Commit(EncZero, 0, 0, false); err != nil {
		t.Fatal(err)
	}
	if b.Len() != recordHeaderSize {
		t.Fatalf("a zero page's record takes %d bytes", b.Len())
	}
	fill(t, b, batchRecord{m: Msg{Kind: kindPage, Page: 8, Enc: EncRaw, Data: seq(ps, 8)}, reserve: ps, crc: true})
	fill(t, b, batchRecord{m: Msg{Kind: kindPage, Page: 9, Enc: EncLZ4, Data: seq(5, 9)}, reserve: ps})
	fill(t, b, batchRecord{m: Msg{Kind: kindPage, Page: 10, Enc: EncRaw, Data: seq(ps, 10)}, reserve: ps})
	// 13 + 77 + 18 + 77 = 185 bytes of 308: one more page fits, not two.
	fill(t, b, batchRecord{m: Msg{Kind: kindPage, Page: 11, Enc: EncRaw, Data: seq(ps, 11)}, reserve: ps})
	if d := b.Reserve(12, ps); d != nil {
		t.Fatal("a record past BatchBytes was granted")
	}
	if d := b.Reserve(12, 2); d == nil {
		t.Fatal("a small record that fits was refused")
	}
	b.Cancel()
	// Send, SendBatch, Send: in that order on the wire.
	if err := c.Send(bg, Msg{Kind: kindPage, Page: 3, Enc: EncZero}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendBatch(bg, b); err != nil {
		t.Fatal(err)
	}
	if err := c.SendBatch(bg, b); err != nil { // empty: nothing
		t.Fatal(err)
	}
	if err := c.Send(bg, Msg{Kind: kindEndRound, Arg: 1}); err != nil {
		t.Fatal(err)
	}
	got, err := decode(l.w.Bytes(), cfg)
	if err != io.EOF {
		t.Fatal(err)
	}
	var pages []uint64
	for _, m := range got {
		pages = append(pages, m.Page)
	}
	if !slices.Equal(pages, []uint64{3, 7, 8, 9, 10, 11, 0}) || got[6].Kind != kindEndRound {
		t.Fatalf("received pages %v", pages)
	}
	if !bytes.Equal(got[2].Data, seq(ps, 8)) || !bytes.Equal(got[3].Data, seq(5, 9)) || got[1].Data != nil {
		t.Fatal("records' data differ")
	}
	// Another Conn's batch is refused, and emptied.
	other := NewConn(&bufLink{r: bytes.NewReader(nil)}, cfg).(*conn).NewBatch(kindPage)
	fill(t, other, batchRecord{m: Msg{Kind: kindPage, Page: 1, Enc: EncZero}, reserve: 0})
	if err := c.SendBatch(bg, other); !errors.Is(err, ErrInvalid) || other.Count() != 0 {
		t.Fatalf("another Conn's batch: %v, %d records left", err, other.Count())
	}
	// A batch of a kind that is not records is refused.
	bad := c.NewBatch(kindEndRound)
	fill(t, bad, batchRecord{m: Msg{Kind: kindEndRound, Page: 1, Enc: EncZero}, reserve: 0})
	if err := c.SendBatch(bg, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a batch of control kind: %v", err)
	}
}

// TestBatchPipe sends batches over a Pipe: the frame's buffer is handed to
// the receiver, whose records lie in it; the batch gets another buffer, and
// once buffers circulate no page costs an allocation.
func TestBatchPipe(t *testing.T) {
	la, lb := Pipe(8 << 20)
	cfg := Config{Liveness: -1}
	src, dst := NewConn(la, cfg).(*conn), NewConn(lb, cfg).(*conn)
	defer src.Close()
	defer dst.Close()
	ps := livemig.DefaultPageSize
	page := seq(ps, 3)
	crc := crc32.Checksum(page, castagnoli)
	b := src.NewBatch(kindPage)
	const n = 200
	round := func() {
		for i := uint64(0); i < n; {
			d := b.Reserve(i, ps)
			if d == nil {
				first := &b.buf[0]
				if err := src.SendBatch(bg, b); err != nil {
					t.Fatal(err)
				}
				if &b.buf[0] == first {
					t.Fatal("the batch kept the buffer it handed over")
				}
				continue
			}
			copy(d, page)
			if err := b.Commit(EncRaw, ps, crc, true); err != nil {
				t.Fatal(err)
			}
			i++
		}
		if err := src.SendBatch(bg, b); err != nil {
			t.Fatal(err)
		}
		recvTaken(t, dst, n, page)
	}
	round()
	if a := testing.AllocsPerRun(20, round); a != 0 && !raceEnabled {
		t.Errorf("%v allocations per %d pages through a pipe in batches", a, n)
	}
}

// TestBatchFaults: a wrong CRC given at Commit makes the receiver refuse
// the frame; a link cut while a batch goes out fails SendBatch, for good,
// and empties the batch; a cancelled Send context does too.
func TestBatchFaults(t *testing.T) {
	const ps = 64
	cfg := Config{PageSize: ps, Liveness: -1}
	t.Run("WrongCRC", func(t *testing.T) {
		la, lb := Pipe(0)
		src, dst := NewConn(la, cfg).(*conn), NewConn(lb, cfg)
		defer src.Close()
		defer dst.Close()
		b := src.NewBatch(kindPage)
		copy(b.Reserve(1, ps), seq(ps, 1))
		if err := b.Commit(EncRaw, ps, 12345, true); err != nil {
			t.Fatal(err)
		}
		if err := src.SendBatch(bg, b); err != nil {
			t.Fatal(err)
		}
		var m Msg
		if err := dst.Recv(bg, &m); !errors.Is(err, livemig.ErrCorrupt) {
			t.Fatalf("Recv of a frame with a wrong page CRC: %v", err)
		}
	})
	t.Run("WrittenAfterCommit", func(t *testing.T) {
		la, lb := Pipe(0)
		src, dst := NewConn(la, cfg).(*conn), NewConn(lb, cfg)
		defer src.Close()
		defer dst.Close()
		b := src.NewBatch(kindPage)
		d := b.Reserve(1, ps)
		copy(d, seq(ps, 1))
		if err := b.Commit(EncRaw, ps, 0, false); err != nil {
			t.Fatal(err)
		}
		d[5] ^= 1 // breaks the contract: the frame carries its CRC at Commit
		if err := src.SendBatch(bg, b); err != nil {
			t.Fatal(err)
		}
		var m Msg
		if err := dst.Recv(bg, &m); !errors.Is(err, livemig.ErrCorrupt) {
			t.Fatalf("Recv of a record changed after Commit: %v", err)
		}
	})
	t.Run("Cut", func(t *testing.T) {
		la, lb := Pipe(0)
		src := NewConn(la, cfg).(*conn)
		defer src.Close()
		b := src.NewBatch(kindPage)
		fill(t, b, batchRecord{m: Msg{Kind: kindPage, Page: 1, Enc: EncRaw, Data: seq(ps, 1)}, reserve: ps})
		lb.Close()
		if err := src.SendBatch(bg, b); !errors.Is(err, livemig.ErrClosed) {
			t.Fatalf("SendBatch on a cut link: %v", err)
		}
		if b.Count() != 0 {
			t.Fatal("the batch still holds records after a failed SendBatch")
		}
		// The batch holds a buffer again, and the Conn's send side stays failed.
		fill(t, b, batchRecord{m: Msg{Kind: kindPage, Page: 2, Enc: EncZero}, reserve: ps})
		if err := src.SendBatch(bg, b); !errors.Is(err, livemig.ErrClosed) {
			t.Fatalf("SendBatch after the failure: %v", err)
		}
		if err := src.Send(bg, Msg{Kind: kindEndRound}); !errors.Is(err, livemig.ErrClosed) {
			t.Fatalf("Send after the failure: %v", err)
		}
	})
}

// FuzzBatch drives a Batch with the fuzzer's operations (reserve, write,
// commit as any encoding and length, with or without a CRC, cancel) and
// checks it against Send: what Commit refuses Send refuses too, and
// SendBatch writes byte for byte what Send and Flush write for the
// records committed.
func FuzzBatch(f *testing.F) {
	f.Add([]byte{0, 64, 0, 1, 1, 0, 0, 2, 3, 10, 3, 4, 200, 0})
	f.Add([]byte{0, 200, 0, 2, 128, 1, 9, 3, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const ps = 64
		cfg := Config{PageSize: ps, PageCount: 200, BatchBytes: 1024, Liveness: -1}
		l := &bufLink{r: bytes.NewReader(nil)}
		c := NewConn(l, cfg).(*conn)
		defer c.Close()
		b := c.NewBatch(kindPage)
		var msgs []Msg
		var res []byte
		var page uint64
		for len(ops) >= 4 {
			op, x, y, z := ops[0]%4, int(ops[1]), ops[2], ops[3]
			ops = ops[4:]
			switch op {
			case 0: // reserve x bytes for page y, write z-based bytes
				page = uint64(y)
				res = b.Reserve(page, x)
				for i := range res {
					res[i] = z + byte(i)
				}
			case 1, 2: // commit as encoding y%5, x bytes; op 2 with the CRC
				enc, n := Encoding(y%5), min(x, len(res))
				if y&0x80 != 0 {
					n = x // possibly past the reservation
				}
				var data []byte
				if n <= len(res) {
					data = bytes.Clone(res[:n])
				}
				err := b.Commit(enc, n, crc32.Checksum(data, castagnoli), op == 2)
				serr := c.checkPage(page, enc, n)
				if res == nil || n > len(res) {
					serr = ErrInvalid
				}
				if (err == nil) != (serr == nil) {
					t.Fatalf("Commit(%d, %d) of page %d: %v; Send's rules: %v", enc, n, page, err, serr)
				}
				if err == nil {
					msgs = append(msgs, Msg{Kind: kindPage, Page: page, Enc: enc, Data: data})
				}
				res = nil
			default:
				b.Cancel()
				res = nil
			}
		}
		var got []Msg
		for m := range b.Records() {
			got = append(got, m)
		}
		if !sameMsgs(got, msgs) {
			t.Fatalf("Records: %d, committed %d", len(got), len(msgs))
		}
		if len(msgs) == 0 {
			return
		}
		// Send would split the records where a batch fills; the Batch
		// refuses a record that does not fit, so they make one frame.
		want := encode(t, Config{PageSize: ps, PageCount: 200, BatchBytes: 1 << 20, Liveness: -1}, msgs...)
		if err := c.SendBatch(bg, b); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(l.w.Bytes(), want) {
			t.Fatalf("SendBatch wrote %d bytes, Send %d; they differ", l.w.Len(), len(want))
		}
		if back, err := decode(want, cfg); err != io.EOF || !sameMsgs(back, msgs) {
			t.Fatalf("received %d records (%v), sent %d", len(back), err, len(msgs))
		}
	})
}

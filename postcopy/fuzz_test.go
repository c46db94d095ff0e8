package postcopy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpora in testdata/fuzz")

// FuzzStats: the destination's figures decode only from their exact layout,
// and what decodes encodes back to the same bytes.
func FuzzStats(f *testing.F) {
	for _, s := range statsSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStats(b)
		if err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if back := appendStats(nil, s); !bytes.Equal(back, b) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", b, s, back)
		}
	})
}

func statsSeeds() [][]byte {
	return [][]byte{
		appendStats(nil, destStats{Faults: 3, P50: time.Millisecond, P99: 2 * time.Millisecond, Max: 3 * time.Millisecond,
			WaitTotal: 5 * time.Millisecond, LastPage: time.Second, Placed: 100, Duplicates: 2}),
		make([]byte, statsLen-1),
		bytes.Repeat([]byte{0xff}, statsLen),
	}
}

const fuzzPages = 200

// FuzzBitmap: a bitmap message names only pages of the guest, in ascending
// order, as many as its set bits; a bad one is an error saying so.
func FuzzBitmap(f *testing.F) {
	for _, s := range bitmapSeeds() {
		f.Add(s.page, s.data)
	}
	f.Fuzz(func(t *testing.T, page uint64, data []byte) {
		m := transport.Msg{Kind: wire.KindDiscard, Page: page, Data: data}
		var got []uint64
		err := applyBitmap(m, fuzzPages, func(n uint64) error {
			got = append(got, n)
			return nil
		})
		if err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) && !errors.Is(err, livemig.ErrPageRange) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrPageRange", err)
			}
			if len(got) != 0 {
				t.Fatalf("bad chunk applied %d pages", len(got))
			}
			return
		}
		var set int
		for i := 0; i+8 <= len(data); i += 8 {
			set += bits.OnesCount64(binary.LittleEndian.Uint64(data[i:]))
		}
		if len(got) != set {
			t.Fatalf("%d pages for %d set bits", len(got), set)
		}
		for i, n := range got {
			if n >= fuzzPages || (i > 0 && n <= got[i-1]) {
				t.Fatalf("page %d (after %v)", n, got[:i])
			}
		}
	})
}

type bitmapSeed struct {
	page uint64
	data []byte
}

func bitmapSeeds() []bitmapSeed {
	return []bitmapSeed{
		{0, wire.AppendBitmap(nil, []uint64{0x8000_0000_0000_0001, 0, 0, 0xff})},
		{128, wire.AppendBitmap(nil, []uint64{1 << 8})},
		{128, wire.AppendBitmap(nil, []uint64{1 << 8, 1})},
		{64, []byte{1, 2, 3}},
		{3, wire.AppendBitmap(nil, []uint64{1})},
	}
}

// FuzzReceive feeds the destination hostile streams: whatever arrives, it
// returns an error or completes, never panics, never writes outside its
// memory, and never resumes a guest without state.
func FuzzReceive(f *testing.F) {
	for _, s := range receiveSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		mem, err := NewHeapMemory(64, fuzzPages, nil)
		if err != nil {
			t.Fatal(err)
		}
		vm := &fuzzVM{}
		conn := transport.NewConn(&readLink{r: bytes.NewReader(stream)}, transport.Config{PageSize: 64, PageCount: fuzzPages})
		rep, err := Receive(context.Background(), conn, Destination{Memory: mem, VM: vm, Pages: fuzzPages, PageSize: 64},
			Config{Clock: livemig.NewVirtualClock()})
		if err == nil && (!rep.Complete || !rep.Resumed || vm.loads != 1) {
			t.Fatalf("success without completion: %+v, %d loads", rep, vm.loads)
		}
		if vm.resumes > 0 && vm.loads == 0 {
			t.Fatal("resumed a guest without its state")
		}
	})
}

type fuzzVM struct{ loads, resumes int }

func (v *fuzzVM) Pause(context.Context) error                             { return nil }
func (v *fuzzVM) Resume(context.Context) error                            { v.resumes++; return nil }
func (v *fuzzVM) SaveState(_ context.Context, dst []byte) ([]byte, error) { return dst, nil }
func (v *fuzzVM) LoadState(context.Context, []byte) error                 { v.loads++; return nil }

// readLink reads a fixed stream and discards writes.
type readLink struct{ r io.Reader }

func (l *readLink) Read(p []byte) (int, error)  { return l.r.Read(p) }
func (l *readLink) Write(p []byte) (int, error) { return len(p), nil }
func (l *readLink) Close() error                { return nil }

// writeLink collects writes.
type writeLink struct{ bytes.Buffer }

func (l *writeLink) Read([]byte) (int, error) { return 0, io.EOF }
func (l *writeLink) Close() error             { return nil }

// receiveSeeds are streams a source sends: a whole post-copy, a hybrid one
// with a discard, and broken ones.
func receiveSeeds(t testing.TB) [][]byte {
	enc := func(msgs ...transport.Msg) []byte {
		var l writeLink
		// No liveness: a heartbeat must not land in the recorded stream.
		c := transport.NewConn(&l, transport.Config{PageSize: 64, PageCount: fuzzPages, Liveness: -1})
		defer c.Close()
		for _, m := range msgs {
			if err := c.Send(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		return l.Bytes()
	}
	page := func(n uint64) []byte { return bytes.Repeat([]byte{byte(n)}, 64) }
	d := verify.New(fuzzPages, 64)
	var pages []transport.Msg
	for n := uint64(0); n < fuzzPages; n++ {
		if n%4 == 0 {
			pages = append(pages, transport.Msg{Kind: wire.KindPage, Enc: transport.EncZero, Page: n})
			d.Zero(n)
		} else {
			pages = append(pages, transport.Msg{Kind: wire.KindPage, Page: n, Data: page(n)})
			d.Update(n, page(n))
		}
	}
	head := []transport.Msg{
		{Kind: wire.KindSwitchover, Page: 0x5e55, Arg: 1 | wire.FlagPostCopy},
		{Kind: wire.KindState, Data: []byte("state")},
		{Kind: wire.KindCommit},
	}
	post := enc(append(append(head, pages...), transport.Msg{Kind: wire.KindDone, Arg: d.Sum()})...)
	hybrid := enc(append(append([]transport.Msg{
		pages[5], pages[6], {Kind: wire.KindEndRound, Arg: 1},
		{Kind: wire.KindDiscard, Page: 0, Data: wire.AppendBitmap(nil, []uint64{1 << 5})},
	}, head...), append(pages, transport.Msg{Kind: wire.KindDone, Arg: d.Sum()})...)...)
	badDigest := enc(append(append(head, pages...), transport.Msg{Kind: wire.KindDone, Arg: 12345})...)
	early := enc(transport.Msg{Kind: wire.KindCommit})
	badBitmap := enc(transport.Msg{Kind: wire.KindDiscard, Page: 192, Data: wire.AppendBitmap(nil, []uint64{1 << 9})})
	// The same post-copy with its pages as LZ4 blocks, and one block
	// that does not decompress to a page.
	pe := &codec.PageEncoder{LZ4: true}
	var packed []transport.Msg
	for _, m := range pages {
		if m.Enc != transport.EncZero {
			enc, data := pe.Encode(nil, m.Data)
			m.Enc, m.Data = enc, data
		}
		packed = append(packed, m)
	}
	lz4Post := enc(append(append(head, packed...), transport.Msg{Kind: wire.KindDone, Arg: d.Sum()})...)
	badLZ4 := enc(append(head, transport.Msg{Kind: wire.KindPage, Enc: transport.EncLZ4, Page: 3, Data: []byte{0x40, 1, 2}})...)
	// Pre-copy that converged (precopy.HandOff's other end): rounds, a
	// switchover without FlagPostCopy, the rest, the state, Done, the
	// Commit; then the same missing a page, and with the Commit early.
	stop := []transport.Msg{{Kind: wire.KindEndRound, Arg: 1}, {Kind: wire.KindSwitchover, Page: 0x5e55, Arg: 2}}
	tail := []transport.Msg{{Kind: wire.KindState, Data: []byte("state")}, {Kind: wire.KindDone, Arg: d.Sum()}, {Kind: wire.KindCommit}}
	stopCopy := enc(append(append(append(pages[:4:4], stop...), pages[4:]...), tail...)...)
	stopShort := enc(append(append(append(pages[:4:4], stop...), pages[5:]...), tail...)...)
	stopEarly := enc(append(append(append(pages[:4:4], stop...), pages[4:]...), tail[0], tail[2])...)
	return [][]byte{post, hybrid, badDigest, early, badBitmap, post[:len(post)/2], lz4Post, badLZ4, stopCopy, stopShort, stopEarly}
}

func corpusFile(args ...any) []byte {
	b := []byte("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			b = fmt.Appendf(b, "[]byte(%s)\n", strconv.Quote(string(v)))
		case uint64:
			b = fmt.Appendf(b, "uint64(%d)\n", v)
		}
	}
	return b
}

// TestFuzzCorpus checks the seed files in testdata/fuzz hold the seeds the
// targets above add (-update rewrites them), so that `go test` runs them
// even without -fuzz and the fuzzer starts from them.
func TestFuzzCorpus(t *testing.T) {
	files := map[string][][]byte{}
	for _, s := range statsSeeds() {
		files["FuzzStats"] = append(files["FuzzStats"], corpusFile(s))
	}
	for _, s := range bitmapSeeds() {
		files["FuzzBitmap"] = append(files["FuzzBitmap"], corpusFile(s.page, s.data))
	}
	for _, s := range receiveSeeds(t) {
		files["FuzzReceive"] = append(files["FuzzReceive"], corpusFile(s))
	}
	for target, seeds := range files {
		dir := filepath.Join("testdata", "fuzz", target)
		for i, want := range seeds {
			path := filepath.Join(dir, fmt.Sprintf("seed-%d", i))
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestFuzzCorpus -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from its generated seed (run with -update)", path)
			}
		}
	}
}

// TestReceiveSeeds: each seed stream of FuzzReceive has the outcome it was
// made for.
func TestReceiveSeeds(t *testing.T) {
	want := []error{nil, nil, livemig.ErrVerify, livemig.ErrCorrupt, livemig.ErrPageRange, livemig.ErrIncomplete, nil, livemig.ErrCorrupt,
		nil, livemig.ErrIncomplete, livemig.ErrCorrupt}
	for i, s := range receiveSeeds(t) {
		mem, _ := NewHeapMemory(64, fuzzPages, nil)
		vm := &fuzzVM{}
		conn := transport.NewConn(&readLink{r: bytes.NewReader(s)}, transport.Config{PageSize: 64, PageCount: fuzzPages})
		rep, err := Receive(context.Background(), conn, Destination{Memory: mem, VM: vm, Pages: fuzzPages, PageSize: 64}, Config{})
		if (want[i] == nil) != (err == nil) || (err != nil && !errors.Is(err, want[i])) {
			t.Errorf("seed %d: %v, want %v", i, err, want[i])
			continue
		}
		if err == nil && (!rep.Complete || !rep.Verified || vm.resumes != 1) {
			t.Errorf("seed %d: %+v", i, rep)
		}
		if i == 1 && (rep.Discarded != 1 || rep.Duplicates != 1 || rep.Rounds != 1) {
			t.Errorf("hybrid seed: %+v", rep)
		}
		if i == 8 && (rep.Rounds != 1 || rep.PagesReceived != fuzzPages || vm.loads != 1) {
			t.Errorf("stop-and-copy seed: %+v, %d state loads", rep, vm.loads)
		}
	}
}

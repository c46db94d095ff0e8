package region

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/bits"
	"sync"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

func TestWriteMarksDirty(t *testing.T) {
	r, err := New(4096, 130)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, n := range []uint64{0, 63, 64, 129} {
		if err := r.Write(n, 8, []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}
	dst := make([]uint64, livemig.WordsFor(130))
	dst[1] = 1 << 5 // OR semantics: pre-set bits stay
	if err := r.SyncDirty(dst); err != nil {
		t.Fatal(err)
	}
	want := []uint64{1 | 1<<63, 1 | 1<<5, 1 << 1}
	for i := range want {
		if dst[i] != want[i] {
			t.Fatalf("word %d = %x, want %x", i, dst[i], want[i])
		}
	}
	clear(dst)
	if err := r.SyncDirty(dst); err != nil || dst[0]|dst[1]|dst[2] != 0 {
		t.Fatalf("second sync not empty: %x %v", dst, err)
	}
	page := make([]byte, 4096)
	if err := r.ReadPage(129, page); err != nil || !bytes.Equal(page[8:11], []byte{1, 2, 3}) {
		t.Fatalf("read back %v %v", page[:16], err)
	}
}

func TestRangeErrors(t *testing.T) {
	r, err := New(4096, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 4096)
	for name, err := range map[string]error{
		"read":  r.ReadPage(4, buf),
		"write": r.Write(4, 0, []byte{1}),
		"sink":  r.WritePage(9, buf),
		"zero":  r.ZeroPage(4),
	} {
		if !errors.Is(err, livemig.ErrPageRange) {
			t.Errorf("%s: %v, want ErrPageRange", name, err)
		}
	}
	if err := r.Write(0, 4095, []byte{1, 2}); err == nil {
		t.Error("write past the page end accepted")
	}
	if _, err := New(1000, 4); err == nil {
		t.Error("page size 1000 accepted")
	}
}

// Writers run while a drainer syncs: the union of the syncs holds every page
// written, and after the writers stop a final sync leaves nothing behind.
func TestConcurrentWritersNeverLoseAMark(t *testing.T) {
	const pages = 4096
	r, err := New(4096, pages)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	written := make([][]uint64, 4)
	for w := range written {
		written[w] = make([]uint64, livemig.WordsFor(pages))
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			x := uint64(w*7919 + 1)
			for i := 0; i < 20000; i++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				n := x % pages
				if err := r.Write(n, 0, []byte{byte(w)}); err != nil {
					t.Error(err)
					return
				}
				bitmap.Words(written[w]).Set(n)
			}
		}(w)
	}
	union := make([]uint64, livemig.WordsFor(pages))
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if err := r.SyncDirty(union); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.SyncDirty(union); err != nil {
		t.Fatal(err)
	}
	for i := range union {
		var want uint64
		for w := range written {
			want |= written[w][i]
		}
		if union[i] != want {
			t.Fatalf("word %d: synced %x, written %x (lost %d)", i, union[i], want, bits.OnesCount64(want&^union[i]))
		}
	}
}

func TestPauseBlocksWrites(t *testing.T) {
	r, err := New(4096, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	if err := r.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		_ = r.Write(1, 0, []byte{9})
		close(wrote)
	}()
	// While paused, the page stays as it was and nothing is dirty; the write
	// can only have completed after Resume.
	page := make([]byte, 4096)
	_ = r.ReadPage(1, page)
	select {
	case <-wrote:
		t.Fatal("write completed while paused")
	default:
	}
	if page[0] != 0 || r.DirtyCount() != 0 {
		t.Fatal("paused region changed")
	}
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	<-wrote
	if r.DirtyCount() != 1 {
		t.Fatalf("dirty %d after resume", r.DirtyCount())
	}
}

func TestState(t *testing.T) {
	r, err := New(4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetState([]byte("cpu"))
	got, _ := r.SaveState(context.Background(), []byte("x"))
	if string(got) != "xcpu" {
		t.Fatalf("%q", got)
	}
	_ = r.LoadState(context.Background(), []byte("regs"))
	if string(r.State()) != "regs" {
		t.Fatal(string(r.State()))
	}
}

func BenchmarkWrite(b *testing.B) {
	r, err := New(4096, 1<<14)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var v [8]byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		binary.LittleEndian.PutUint64(v[:], uint64(i))
		_ = r.Write(uint64(i)&(1<<14-1), 64, v[:])
	}
}

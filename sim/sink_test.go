package sim

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// copyPages sends the pages set in d (or every page if d is nil) from g to
// s as an engine would: all-zero pages as ZeroPage.
func copyPages(t testing.TB, g *Guest, s *Sink, d []uint64) {
	t.Helper()
	buf := make([]byte, g.PageSize())
	for n := uint64(0); n < g.PageCount(); n++ {
		if d != nil && !bitmap.Words(d).Test(n) {
			continue
		}
		if err := g.ReadPage(n, buf); err != nil {
			t.Fatal(err)
		}
		var err error
		if allZero(buf) {
			err = s.ZeroPage(n)
		} else {
			err = s.WritePage(n, buf)
		}
		if err != nil {
			t.Fatalf("page %d: %v", n, err)
		}
	}
}

// migrate runs a naive pre-copy from g to a new sink: a bulk round, rounds
// of dirty pages while virtual time passes, pause, the rest and the state.
func migrate(t testing.TB, g *Guest, clock *livemig.VirtualClock) *Sink {
	t.Helper()
	ctx := context.Background()
	s, err := NewSink(g.Config())
	if err != nil {
		t.Fatal(err)
	}
	dirty(t, g)
	copyPages(t, g, s, nil)
	for round := 0; round < 5; round++ {
		clock.Advance(20 * time.Millisecond)
		copyPages(t, g, s, dirty(t, g))
	}
	clock.Advance(5 * time.Millisecond)
	if err := g.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	copyPages(t, g, s, dirty(t, g))
	st, err := g.SaveState(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.LoadState(ctx, st); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSinkVerify(t *testing.T) {
	ctx := context.Background()
	w := Mix(HotCold(50000, 300, 0.9, false), Uniform(5000, true))
	g, clock := newGuest(t, GuestConfig{Pages: 5000, Seed: 11}, w)
	clock.Advance(time.Second)
	s := migrate(t, g, clock)
	clock.Advance(time.Second) // paused: nothing changes
	if err := s.Verify(g); err != nil {
		t.Fatalf("Verify after a complete migration: %v", err)
	}
	if s.Received() != 5000 {
		t.Errorf("Received %d, want 5000", s.Received())
	}
	if s.Resumed() {
		t.Error("Resumed before Resume")
	}
	if err := s.Resume(ctx); err != nil || !s.Resumed() {
		t.Errorf("Resume: %v, Resumed %v", err, s.Resumed())
	}
	if err := s.Pause(ctx); err != nil || s.Resumed() {
		t.Errorf("Pause: %v, Resumed %v", err, s.Resumed())
	}
	st, _ := s.SaveState(ctx, nil)
	gs, _ := g.SaveState(ctx, nil)
	if string(st) != string(gs) {
		t.Error("the sink's state differs from the guest's")
	}

	// Everything the sink reads back equals the guest.
	for n := uint64(0); n < g.PageCount(); n++ {
		if string(readPage(t, s, n)) != string(readPage(t, g, n)) {
			t.Fatalf("page %d reads back differently", n)
		}
	}

	// A page written after the pause (stale at the sink) is found.
	for _, n := range []uint64{17, 4000, 4001} {
		if err := g.Write(n, false); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Verify(g)
	if !errors.Is(err, livemig.ErrVerify) || !errors.Is(err, ErrMismatch) {
		t.Fatalf("Verify of stale pages: %v", err)
	}
	for _, want := range []string{"3 of 5000 pages differ", "page 17 (", "page 4000 (", "page 4001 (", "the state differs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Verify error %q does not say %q", err, want)
		}
	}

	// A missing page is found.
	s2, _ := NewSink(g.Config())
	copyPages(t, g, s2, nil)
	s2.have[0] &^= 1 << 5
	if err := s2.Verify(g); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "page 5 (missing)") {
		t.Errorf("Verify with page 5 missing: %v", err)
	}
	// A zero page where the source has contents is found.
	var n uint64
	for n = 0; g.lay.isZero(n, unpack(g.state[n])); n++ {
	}
	if err := s2.ZeroPage(n); err != nil {
		t.Fatal(err)
	}
	if err := s2.Verify(g); err == nil || !strings.Contains(err.Error(), "zero, source") {
		t.Errorf("Verify with page %d zeroed: %v", n, err)
	}
	other, _ := newGuest(t, GuestConfig{Pages: 5000, Seed: 12}, nil)
	if err := s2.Verify(other); !errors.Is(err, ErrConfig) {
		t.Errorf("Verify against another configuration: %v", err)
	}
}

func TestSinkRejectsCorruption(t *testing.T) {
	g, _ := newGuest(t, GuestConfig{Pages: 256, Seed: 13, ZeroFraction: -1}, Idle())
	s, _ := NewSink(g.Config())
	for n := uint64(0); n < 256; n++ {
		if err := g.Write(n, n%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, off := range []int{0, 7, 8, 15, 16, 100, 2048, 4095} {
		n := uint64(off % 256)
		p := readPage(t, g, n)
		p[off] ^= 0x01
		err := s.WritePage(n, p)
		var pe *livemig.PageError
		if !errors.Is(err, livemig.ErrCorrupt) || !errors.As(err, &pe) || pe.Page != n {
			t.Errorf("page %d with byte %d flipped: %v", n, off, err)
		}
		if _, received, _ := s.Page(n); received {
			t.Errorf("page %d: a rejected write was stored", n)
		}
	}
	// A good page sent to the wrong number.
	if err := s.WritePage(3, readPage(t, g, 4)); !errors.Is(err, livemig.ErrCorrupt) {
		t.Errorf("page 4's contents as page 3: %v", err)
	}
	if err := s.WritePage(3, make([]byte, 100)); !errors.Is(err, livemig.ErrCorrupt) {
		t.Errorf("a short page: %v", err)
	}
	// An all-zero page is a zero page.
	if err := s.WritePage(9, make([]byte, 4096)); err != nil {
		t.Errorf("an all-zero page: %v", err)
	}
	if _, received, zero := s.Page(9); !received || !zero {
		t.Errorf("all-zero page 9: received %v zero %v", received, zero)
	}
	// Bad state.
	ctx := context.Background()
	st, _ := g.SaveState(ctx, nil)
	st[500] ^= 1
	if err := s.LoadState(ctx, st); !errors.Is(err, livemig.ErrCorrupt) {
		t.Errorf("LoadState of a corrupt state: %v", err)
	}
	if got, _ := s.SaveState(ctx, nil); len(got) != 0 {
		t.Error("a rejected state was kept")
	}
}

func TestSinkOfHugeGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 128 MiB")
	}
	// 64 GiB of 4 KiB pages: 16 Mi pages at 8 bytes and 2 bits each.
	s, err := NewSink(GuestConfig{Pages: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGuest(GuestConfig{Pages: 16 << 20}, nil, livemig.NewVirtualClock())
	if err != nil {
		t.Fatal(err)
	}
	d := make([]uint64, livemig.WordsFor(16<<20))
	d[0] = 0xFF
	copyPages(t, g, s, d)
	if err := s.WritePage(16<<20-1, readPage(t, g, 16<<20-1)); err != nil {
		t.Fatal(err)
	}
	if s.Received() != 9 {
		t.Errorf("received %d pages, want 9", s.Received())
	}
}

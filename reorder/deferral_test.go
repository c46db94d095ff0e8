package reorder

import (
	"errors"
	"slices"
	"testing"

	"github.com/livemig/livemig/bitmap"
)

func TestDeferredRule(t *testing.T) {
	peek := bm(130, 3, 64, 129)
	for _, tc := range []struct {
		page  uint64
		final bool
		want  bool
	}{
		{3, false, true},    // dirtied again before its turn: skipped
		{4, false, false},   // not dirtied again: sent
		{64, false, true},   // second word
		{129, false, true},  // last page
		{3, true, false},    // final round: nothing is deferred
		{129, true, false},  //
		{500, false, false}, // past the peek bitmap: no knowledge, sent
	} {
		if got := Deferred(peek, tc.page, tc.final); got != tc.want {
			t.Errorf("Deferred(page %d, final %v) = %v, want %v", tc.page, tc.final, got, tc.want)
		}
	}
	if Deferred(nil, 0, false) {
		t.Error("empty peek deferred a page")
	}
}

// fakeLog is a dirty log the test writes to as "time" (pages sent) passes.
type fakeLog struct {
	dirty []uint64
	peeks int
}

func (l *fakeLog) PeekDirty(dst []uint64) error {
	l.peeks++
	for i, w := range l.dirty {
		dst[i] |= w
	}
	return nil
}

// runRound drives a Deferrer over plan as the engine would; writes[i] are
// the pages the guest writes just before planned page i is considered.
func runRound(t *testing.T, d *Deferrer, log *fakeLog, plan []uint64, final bool, writes map[int][]uint64) (sent []uint64) {
	t.Helper()
	d.Start(final)
	for i, p := range plan {
		for _, w := range writes[i] {
			bitmap.Words(log.dirty).Set(w)
		}
		if buf := d.Due(); buf != nil {
			if err := log.PeekDirty(buf); err != nil {
				t.Fatal(err)
			}
		}
		if d.Skip(p) {
			continue
		}
		sent = append(sent, p)
	}
	return sent
}

func TestDeferrerRound(t *testing.T) {
	const pages = 100
	d, err := NewDeferrer(pages, DeferConfig{PeekEvery: 2})
	if err != nil {
		t.Fatal(err)
	}
	log := &fakeLog{dirty: make([]uint64, 2)}
	plan := []uint64{10, 11, 12, 13, 14, 15}
	// Before page index 0: 13 written (seen by the first peek, at index 0).
	// Before index 1: 15 written, not seen until the peek at index 2,
	// which defers it at index 5.
	// Before index 3: 12 written, after 12's turn (index 2): 12 was sent
	// (and stays dirty in the log for the next round).
	writes := map[int][]uint64{0: {13}, 1: {15}, 3: {12}}
	sent := runRound(t, d, log, plan, false, writes)
	if want := []uint64{10, 11, 12, 14}; !slices.Equal(sent, want) {
		t.Fatalf("sent %v, want %v", sent, want)
	}
	if d.Skipped() != 2 || log.peeks != 3 {
		t.Fatalf("skipped %d, peeks %d; want 2, 3", d.Skipped(), log.peeks)
	}

	// The final round defers nothing and never peeks, though the log
	// holds pages.
	log.peeks = 0
	sent = runRound(t, d, log, plan, true, nil)
	if !slices.Equal(sent, plan) || d.Skipped() != 0 || log.peeks != 0 {
		t.Fatalf("final round sent %v, skipped %d, peeks %d", sent, d.Skipped(), log.peeks)
	}

	// A new round forgets the last peek: with a clean log nothing is
	// deferred even before the first Due.
	clear(log.dirty)
	d.Start(false)
	if d.Skip(13) {
		t.Fatal("stale peek deferred a page")
	}
}

func TestDeferrerDefaults(t *testing.T) {
	d, err := NewDeferrer(1<<20, DeferConfig{PeekEvery: -3})
	if err != nil {
		t.Fatal(err)
	}
	log := &fakeLog{dirty: make([]uint64, (1<<20)/64)}
	plan := make([]uint64, 3*DefaultPeekEvery)
	for i := range plan {
		plan[i] = uint64(i)
	}
	runRound(t, d, log, plan, false, nil)
	if log.peeks != 3 {
		t.Fatalf("%d peeks over %d pages, want 3", log.peeks, len(plan))
	}
	if _, err := NewDeferrer(MaxPages+1, DeferConfig{}); !errors.Is(err, ErrTooLarge) {
		t.Fatal(err)
	}
}

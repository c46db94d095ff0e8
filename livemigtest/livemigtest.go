// Package livemigtest holds conformance checks for implementations of
// livemig's interfaces: a hypervisor author runs them against their own
// Memory, DirtySource, VM and PageSink from a test, with one call each.
//
// Each check reports failures through t (t.Errorf for a broken rule, which
// lets the check go on; t.Fatalf when it cannot) and calls t only from the
// goroutine that called the check. Run them with -race: the concurrent parts
// of the checks find data races only then.
//
// # Usage
//
//	func TestConformance(t *testing.T) {
//		g := newMyGuest(t) // quiescent: the guest itself writes nothing
//		livemigtest.TestMemory(t, g)
//		livemigtest.TestDirtySource(t, g, g.PageCount(), func(n uint64) { g.Poke(n) })
//		g.StartVCPUs() // running: its vCPUs write by themselves
//		livemigtest.TestVM(t, g, g, g, nil)
//		s := newMySink(t)
//		livemigtest.TestPageSink(t, s, s, s.PageSize(), s.PageCount(), nil)
//	}
package livemigtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// TB is the part of testing.TB the checks use; *testing.T and *testing.B
// satisfy it.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// samplePages returns up to max distinct page numbers spread over [0,
// pages): the first, the last, the 64-page word boundaries around them, and
// seeded random ones.
func samplePages(pages uint64, max int, seed uint64) []uint64 {
	seen := map[uint64]bool{}
	var out []uint64
	add := func(n uint64) {
		if n < pages && !seen[n] && len(out) < max {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, n := range []uint64{0, pages - 1, 63, 64, pages / 2, pages - 2, 1} {
		add(n)
	}
	r := rand.New(rand.NewPCG(seed, 0x6c6d74))
	for i := 0; len(out) < max && uint64(len(out)) < pages && i < 8*max; i++ {
		add(r.Uint64N(pages))
	}
	return out
}

// guard is the number of guard bytes around the buffers handed to
// implementations, to catch writes outside them.
const guard = 16

// TestMemory checks m against the livemig.Memory contract: a positive page
// size and count that do not change; ReadPage fills exactly the caller's
// buffer of PageSize bytes, every byte of it and nothing around it, for pages
// across the whole range; two reads of a page give the same bytes; a page
// past the end returns an error wrapping livemig.ErrPageRange; reads from
// several goroutines at once succeed and give the bytes a lone read gives
// (run with -race to find data races).
//
// Nothing may write m while the check runs (pause the guest's vCPUs or give
// it nothing to do): the check compares reads of the same page. It cannot
// tell which bytes a page should hold, only that a read writes all of dst
// and gives the same bytes each time; that the right page is read shows in a
// migration test that compares the destination with the source.
func TestMemory(t TB, m livemig.Memory) {
	t.Helper()
	ps, pages := m.PageSize(), m.PageCount()
	if ps <= 0 || pages == 0 {
		t.Fatalf("livemigtest: Memory: PageSize %d, PageCount %d: both must be positive", ps, pages)
		return
	}
	// Each page is read twice, into buffers prefilled with two patterns
	// that differ in every byte: a byte ReadPage leaves unwritten keeps the
	// pattern and differs between the reads.
	pattern := func(dst []byte, k byte) {
		for i := range dst {
			dst[i] = byte(i*7+0x5A) ^ k
		}
	}
	buf := make([]byte, ps+2*guard)
	dst := buf[guard : guard+ps : guard+ps]
	read := func(n uint64, k byte) bool {
		t.Helper()
		for i := range buf {
			buf[i] = 0xA5
		}
		pattern(dst, k)
		if err := m.ReadPage(n, dst); err != nil {
			t.Errorf("livemigtest: Memory.ReadPage(%d): %v", n, err)
			return false
		}
		if !allByte(buf[:guard], 0xA5) || !allByte(buf[guard+ps:], 0xA5) {
			t.Errorf("livemigtest: Memory.ReadPage(%d) wrote outside its %d-byte buffer", n, ps)
		}
		return true
	}
	first := make([]byte, ps)
	other := make([]byte, ps)
	bad := 0 // pages whose two reads differ; the first three are reported
	for _, n := range samplePages(pages, 64, 1) {
		if !read(n, 0) {
			continue
		}
		copy(first, dst)
		if !read(n, 0xFF) {
			continue
		}
		if i := diffAt(first, dst); i < ps {
			if bad++; bad > 3 {
				continue
			}
			pattern(other, 0)
			if first[i] == other[i] && dst[i] == ^other[i] {
				t.Errorf("livemigtest: Memory.ReadPage(%d) left byte %d of dst unwritten: ReadPage must copy all %d bytes of the page into dst", n, i, ps)
			} else {
				t.Errorf("livemigtest: Memory.ReadPage(%d): two reads of the page, with nothing writing it, differ at byte %d", n, i)
			}
		}
	}
	if bad > 3 {
		t.Errorf("livemigtest: Memory: ... and %d more pages whose two reads differ", bad-3)
	}
	for _, n := range []uint64{pages, pages + 1, pages + 64, math.MaxUint64} {
		if n < pages {
			continue
		}
		err := m.ReadPage(n, dst)
		if !errors.Is(err, livemig.ErrPageRange) {
			t.Errorf("livemigtest: Memory.ReadPage(%d) of a %d-page memory: got %v, want an error wrapping livemig.ErrPageRange", n, pages, err)
		}
	}
	if m.PageSize() != ps || m.PageCount() != pages {
		t.Errorf("livemigtest: Memory geometry changed from %d×%d to %d×%d", pages, ps, m.PageCount(), m.PageSize())
	}

	// Concurrent reads of the same and different pages give what a lone
	// read gives.
	const readers, each = 4, 64
	sample := samplePages(pages, each, 2)
	want := make([][]byte, len(sample))
	for i, n := range sample {
		want[i] = make([]byte, ps)
		if err := m.ReadPage(n, want[i]); err != nil {
			t.Errorf("livemigtest: Memory.ReadPage(%d): %v", n, err)
			return
		}
	}
	errc := make(chan error, readers)
	var wg sync.WaitGroup
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			b := make([]byte, ps)
			for i := range sample {
				j := (i + r*7) % len(sample)
				n := sample[j]
				if err := m.ReadPage(n, b); err != nil {
					errc <- fmt.Errorf("concurrent ReadPage(%d): %w", n, err)
					return
				}
				if k := diffAt(b, want[j]); k < ps {
					errc <- fmt.Errorf("concurrent ReadPage(%d) differs at byte %d from a lone read of the page", n, k)
					return
				}
			}
		}(r)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Errorf("livemigtest: Memory: %v", err)
	}
}

func allByte(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

// TestDirtySource checks ds, the dirty log of a guest of pages pages,
// against the livemig.DirtySource contract. write(n) must write page n of
// that guest so that the dirty log sees it; it is called from several
// goroutines at once. The guest must write nothing by itself while the
// check runs (pause its vCPUs or give it nothing to do), or the exact
// checks below fail.
//
// It checks that a write shows in the next sync and not in the one after
// (fetch-and-clear); that a sync with no writes between reports nothing;
// that bits past the page count are never set, even in a longer dst; that
// bits already set in dst stay set (OR semantics); and that pages written by
// several goroutines while another syncs in a loop all show in the union of
// the syncs (a write racing with a sync is never lost: each page is written
// once in a round, so a lost mark is not made good by a later write).
func TestDirtySource(t TB, ds livemig.DirtySource, pages uint64, write func(n uint64)) {
	t.Helper()
	if pages == 0 {
		t.Fatalf("livemigtest: DirtySource: pages must be positive")
		return
	}
	words := livemig.WordsFor(pages)
	const extra = 2
	sync1 := func(what string) []uint64 {
		t.Helper()
		dst := make([]uint64, words+extra)
		if err := ds.SyncDirty(dst); err != nil {
			t.Fatalf("livemigtest: DirtySource.SyncDirty (%s): %v", what, err)
			return nil
		}
		checkPast(t, dst, pages, what)
		return dst
	}
	if sync1("drain") == nil { // forget what was dirty before the check
		return
	}
	if d := sync1("no writes"); d != nil {
		if c := bitmap.CountWords(d); c != 0 {
			t.Errorf("livemigtest: DirtySource: a sync with no writes since the previous one reported %d pages (first %d); the guest must be quiescent, or SyncDirty does not clear", c, first(d))
		}
	}

	// Written pages show once.
	written := samplePages(pages, 32, 3)
	for _, n := range written {
		write(n)
	}
	d1 := sync1("after writes")
	if d1 == nil {
		return
	}
	for _, n := range written {
		if !bitmap.Words(d1).Test(n) {
			t.Errorf("livemigtest: DirtySource: page %d was written but the next SyncDirty did not report it", n)
		}
	}
	if c := bitmap.CountWords(d1); c != uint64(len(written)) {
		t.Errorf("livemigtest: DirtySource: %d pages written, SyncDirty reported %d", len(written), c)
	}
	if d2 := sync1("second sync"); d2 != nil {
		for _, n := range written {
			if bitmap.Words(d2).Test(n) {
				t.Errorf("livemigtest: DirtySource: page %d was reported again by the sync after the one that reported it (SyncDirty must clear)", n)
				break
			}
		}
	}

	// OR semantics: pre-set bits stay set, including a guard bit past the
	// page count in an extra word.
	dst := make([]uint64, words+extra)
	pre := samplePages(pages, 16, 4)
	for _, n := range pre {
		bitmap.Words(dst).Set(n)
	}
	dst[words+1] = 1 << 7
	w := pages / 2
	write(w)
	if err := ds.SyncDirty(dst); err != nil {
		t.Fatalf("livemigtest: DirtySource.SyncDirty (OR): %v", err)
		return
	}
	for _, n := range pre {
		if !bitmap.Words(dst).Test(n) {
			t.Errorf("livemigtest: DirtySource: SyncDirty cleared bit %d that was set in dst (it must OR)", n)
			break
		}
	}
	if !bitmap.Words(dst).Test(w) {
		t.Errorf("livemigtest: DirtySource: page %d written before a sync into a non-empty dst was not reported", w)
	}
	if dst[words+1] != 1<<7 {
		t.Errorf("livemigtest: DirtySource: SyncDirty changed dst word %d past the bitmap's %d words", words+1, words)
	}

	// Writes racing with syncs are never lost. Each round writes distinct
	// pages, each once, so that a mark a sync loses is not made good by a
	// later write of the same page.
	const writers, rounds, perRound = 4, 8, 2000
	r := rand.New(rand.NewPCG(5, 6))
	for round := 0; round < rounds; round++ {
		want := make([]uint64, words)
		var targets [writers][]uint64
		for i, n := range distinctPages(r, pages, perRound) {
			targets[i%writers] = append(targets[i%writers], n)
			bitmap.Words(want).Set(n)
		}
		union := make([]uint64, words+extra)
		done := make(chan struct{})
		var wg sync.WaitGroup
		for i := range targets {
			wg.Add(1)
			go func(ns []uint64) {
				defer wg.Done()
				for _, n := range ns {
					write(n)
				}
			}(targets[i])
		}
		go func() { wg.Wait(); close(done) }()
		syncs := 0
		for running := true; running; {
			select {
			case <-done:
				running = false
			default:
			}
			if err := ds.SyncDirty(union); err != nil {
				t.Fatalf("livemigtest: DirtySource.SyncDirty (concurrent): %v", err)
				<-done
				return
			}
			syncs++
		}
		checkPast(t, union, pages, "concurrent")
		var lost uint64
		firstLost := -1
		for i := range want {
			if m := want[i] &^ union[i]; m != 0 {
				if firstLost < 0 {
					firstLost = i
				}
				lost += bitmap.CountWords([]uint64{m})
			}
		}
		if lost > 0 {
			t.Errorf("livemigtest: DirtySource: %d pages written while SyncDirty ran (%d syncs) were never reported, the first in word %d", lost, syncs, firstLost)
			return
		}
	}
}

// distinctPages returns min(k, pages) distinct page numbers below pages in
// a random order drawn from r.
func distinctPages(r *rand.Rand, pages uint64, k int) []uint64 {
	if pages <= uint64(k) {
		out := make([]uint64, pages)
		for i := range out {
			out[i] = uint64(i)
		}
		r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		return out
	}
	seen := make(map[uint64]bool, k)
	out := make([]uint64, 0, k)
	for len(out) < k {
		if n := r.Uint64N(pages); !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func checkPast(t TB, dst []uint64, pages uint64, what string) {
	t.Helper()
	if n, ok := bitmap.Words(dst).NextSet(pages); ok {
		t.Errorf("livemigtest: DirtySource.SyncDirty (%s) set page %d, past the page count %d", what, n, pages)
	}
}

func first(b []uint64) int64 {
	for i, w := range b {
		for j := 0; j < 64; j++ {
			if w&(1<<j) != 0 {
				return int64(i*64 + j)
			}
		}
	}
	return -1
}

// TestPageSink checks s, a sink of pages pages of pageSize bytes, against
// the livemig.PageSink contract, reading back through r when r is not nil
// (often s itself).
//
// fill(n, k, dst) must write into dst a valid k-th version (k = 0, 1, ...)
// of page n, different from its other versions and not all zeros; a nil fill
// writes seeded random bytes, which suits any sink that stores what it is
// given. Sinks that accept only certain contents (such as sim.Sink) pass
// their own.
//
// It checks that a written page reads back equal; that a newer copy
// replaces an older one; that the sink keeps no reference to the caller's
// buffer; that ZeroPage makes a page all zeros and a later WritePage
// replaces the zeros; that pages written from several goroutines at once
// (distinct pages) all read back; and that WritePage, ZeroPage and ReadPage
// of a page past the end return errors wrapping livemig.ErrPageRange.
func TestPageSink(t TB, s livemig.PageSink, r livemig.PageReader, pageSize int, pages uint64, fill func(n uint64, k int, dst []byte)) {
	t.Helper()
	if pageSize <= 0 || pages == 0 {
		t.Fatalf("livemigtest: PageSink: pageSize %d, pages %d: both must be positive", pageSize, pages)
		return
	}
	if fill == nil {
		fill = func(n uint64, k int, dst []byte) {
			rr := rand.New(rand.NewPCG(n, uint64(k)+0x66696c6c))
			for i := range dst {
				dst[i] = byte(rr.Uint32())
			}
			dst[0] |= 1
		}
	}
	readBack := func(n uint64, want []byte, what string) {
		t.Helper()
		if r == nil {
			return
		}
		got := make([]byte, pageSize)
		if err := r.ReadPage(n, got); err != nil {
			t.Errorf("livemigtest: PageSink: ReadPage(%d) %s: %v", n, what, err)
			return
		}
		if !bytes.Equal(got, want) {
			t.Errorf("livemigtest: PageSink: page %d %s: read back differs from what was written at byte %d", n, what, diffAt(got, want))
		}
	}
	zeros := make([]byte, pageSize)
	sample := samplePages(pages, 16, 7)
	v0 := make([][]byte, len(sample))
	for i, n := range sample {
		v0[i] = make([]byte, pageSize)
		fill(n, 0, v0[i])
		data := append([]byte(nil), v0[i]...)
		if err := s.WritePage(n, data); err != nil {
			t.Errorf("livemigtest: PageSink.WritePage(%d): %v", n, err)
			continue
		}
		for j := range data { // the sink must have copied it
			data[j] ^= 0xFF
		}
		readBack(n, v0[i], "after WritePage (with the caller's buffer changed since)")
	}
	// Newer copies win; zero pages; content after zero.
	for i, n := range sample {
		v1 := make([]byte, pageSize)
		fill(n, 1, v1)
		if bytes.Equal(v1, v0[i]) {
			t.Fatalf("livemigtest: PageSink: fill gave page %d equal versions 0 and 1", n)
			return
		}
		if err := s.WritePage(n, v1); err != nil {
			t.Errorf("livemigtest: PageSink.WritePage(%d) of a newer copy: %v", n, err)
			continue
		}
		readBack(n, v1, "after a newer copy")
		if i%2 == 0 {
			if err := s.ZeroPage(n); err != nil {
				t.Errorf("livemigtest: PageSink.ZeroPage(%d): %v", n, err)
				continue
			}
			readBack(n, zeros, "after ZeroPage")
			v2 := make([]byte, pageSize)
			fill(n, 2, v2)
			if err := s.WritePage(n, v2); err != nil {
				t.Errorf("livemigtest: PageSink.WritePage(%d) after ZeroPage: %v", n, err)
				continue
			}
			readBack(n, v2, "written after ZeroPage")
		}
	}
	// Concurrent writes of distinct pages.
	const writers = 4
	conc := samplePages(pages, 64, 8)
	errc := make(chan error, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			b := make([]byte, pageSize)
			for i := w; i < len(conc); i += writers {
				fill(conc[i], 3, b)
				if err := s.WritePage(conc[i], b); err != nil {
					errc <- fmt.Errorf("concurrent WritePage(%d): %w", conc[i], err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Errorf("livemigtest: PageSink: %v", err)
	}
	want := make([]byte, pageSize)
	for _, n := range conc {
		fill(n, 3, want)
		readBack(n, want, "written concurrently")
	}
	// Out of range.
	data := make([]byte, pageSize)
	fill(0, 0, data)
	for _, n := range []uint64{pages, math.MaxUint64} {
		if err := s.WritePage(n, data); !errors.Is(err, livemig.ErrPageRange) {
			t.Errorf("livemigtest: PageSink.WritePage(%d) of a %d-page sink: got %v, want an error wrapping livemig.ErrPageRange", n, pages, err)
		}
		if err := s.ZeroPage(n); !errors.Is(err, livemig.ErrPageRange) {
			t.Errorf("livemigtest: PageSink.ZeroPage(%d) of a %d-page sink: got %v, want an error wrapping livemig.ErrPageRange", n, pages, err)
		}
		if r != nil {
			if err := r.ReadPage(n, data); !errors.Is(err, livemig.ErrPageRange) {
				t.Errorf("livemigtest: PageReader.ReadPage(%d) of a %d-page sink: got %v, want an error wrapping livemig.ErrPageRange", n, pages, err)
			}
		}
	}
}

func diffAt(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// How long TestVM lets a running guest go before it concludes that the
// guest does not write: calls of run, or wall-clock time for a nil run.
const (
	runSteps    = 64
	selfRunning = 5 * time.Second
)

// TestVM checks vm, the control of a running guest whose memory is m and
// whose dirty log is ds, against the livemig.VM contract. The guest must be
// running when the check starts; it is running again when the check ends.
//
// run lets the guest's vCPUs run for a moment, as the passing of time does:
// for a guest on a virtual clock, such as a sim.Guest, it advances the
// clock; for a guest whose vCPUs run by themselves (goroutines writing a
// region.Region, a KVM guest), run is nil and the check yields to them
// instead. While the guest runs, its vCPUs must write pages that ds reports
// within 64 calls of run (or, for a nil run, within five seconds); while
// it is paused, run must return without blocking and without writing. run
// is the guest running, not a hand that writes: a function that writes a
// paused guest's memory (as sim.Guest.Write does) makes every Pause look
// like a lie.
//
// It checks that:
//   - Pause is real: a page written before Pause returned is reported by
//     the SyncDirty after it, a second SyncDirty reports nothing, and the
//     pages' contents do not change while the guest is paused, even while
//     run is called; a second Pause returns nil and keeps it paused;
//   - a Pause that returns an error leaves the guest running;
//   - SaveState appends: it leaves dst[:len(dst)] as it was, whether dst
//     has spare capacity or not, and returns at least len(dst) bytes;
//   - LoadState accepts what SaveState saved; it is called on vm itself,
//     paused, so a VM that only serves as a source may check the state and
//     change nothing, as sim.Guest does;
//   - Resume lets the guest write again (its writes show in ds), and a
//     second Resume returns nil; Resume of the running guest at the start
//     returns nil too.
//
// A Pause that stops the vCPUs some time after it returns is caught when
// they write during the check: for certain when run drives them, by chance
// (but high chance) when they run by themselves.
func TestVM(t TB, vm livemig.VM, m livemig.Memory, ds livemig.DirtySource, run func()) {
	t.Helper()
	ctx := context.Background()
	ps, pages := m.PageSize(), m.PageCount()
	if ps <= 0 || pages == 0 {
		t.Fatalf("livemigtest: VM: the memory's PageSize %d, PageCount %d: both must be positive", ps, pages)
		return
	}
	words := livemig.WordsFor(pages)
	step := func() {
		if run != nil {
			run()
		} else {
			runtime.Gosched()
		}
	}
	syncd := func(what string) []uint64 {
		t.Helper()
		d := make([]uint64, words)
		if err := ds.SyncDirty(d); err != nil {
			t.Fatalf("livemigtest: VM: DirtySource.SyncDirty (%s): %v", what, err)
			return nil
		}
		return d
	}
	// wrote lets the guest run until its dirty log reports a write, and
	// says whether it did.
	wrote := func(what string) bool {
		t.Helper()
		start := time.Now()
		for i := 1; ; i++ {
			step()
			d := syncd(what)
			if d == nil {
				return false
			}
			if bitmap.CountWords(d) > 0 {
				return true
			}
			if run != nil && i >= runSteps || run == nil && time.Since(start) > selfRunning {
				return false
			}
		}
	}
	const pauseSteps = 8 // calls of run while the guest is paused
	readAll := func(ns []uint64, what string) [][]byte {
		t.Helper()
		out := make([][]byte, len(ns))
		for i, n := range ns {
			out[i] = make([]byte, ps)
			if err := m.ReadPage(n, out[i]); err != nil {
				t.Fatalf("livemigtest: VM: Memory.ReadPage(%d) (%s): %v", n, what, err)
				return nil
			}
		}
		return out
	}
	// report lists up to a few pages of d as errors.
	report := func(d []uint64, format string) {
		t.Helper()
		shown := 0
		w := bitmap.Words(d)
		for n, ok := w.NextSet(0); ok && shown < 4; n, ok = w.NextSet(n + 1) {
			t.Errorf(format, n)
			shown++
		}
		if c := bitmap.CountWords(d); c > uint64(shown) {
			t.Errorf("livemigtest: VM: ... and %d more pages", c-uint64(shown))
		}
	}

	// The guest runs and writes.
	if err := vm.Resume(ctx); err != nil {
		t.Errorf("livemigtest: VM.Resume of a running guest: %v (it must do nothing and return nil)", err)
	}
	if !wrote("while running") {
		t.Fatalf("livemigtest: VM: the running guest wrote nothing its dirty log reported: run must let it write (or, for a nil run, its vCPUs must write by themselves)")
		return
	}

	// A Pause that fails leaves the guest running.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := vm.Pause(cancelled); err != nil {
		if !wrote("after a failed Pause") {
			t.Errorf("livemigtest: VM.Pause returned %v, yet the guest wrote nothing after it: a Pause that fails must leave the guest running", err)
			if err := vm.Resume(ctx); err != nil {
				t.Fatalf("livemigtest: VM.Resume: %v", err)
				return
			}
		}
	} else if err := vm.Resume(ctx); err != nil { // it paused: run again
		t.Fatalf("livemigtest: VM.Resume: %v", err)
		return
	}

	// Pause is real.
	if syncd("before Pause") == nil { // start from a clean log
		return
	}
	sample := samplePages(pages, 1024, 9)
	before := readAll(sample, "before Pause")
	if before == nil {
		return
	}
	step()
	step()
	if err := vm.Pause(ctx); err != nil {
		t.Fatalf("livemigtest: VM.Pause: %v", err)
		return
	}
	first := syncd("first after Pause")
	if first == nil {
		return
	}
	paused1 := readAll(sample, "after Pause")
	if paused1 == nil {
		return
	}
	for i := 0; i < pauseSteps; i++ {
		step()
	}
	paused2 := readAll(sample, "after Pause, again")
	if paused2 == nil {
		return
	}
	second := syncd("second after Pause")
	if second == nil {
		return
	}
	report(second, "livemigtest: VM: Pause returned but page %d was written after it (the second SyncDirty after Pause reported it)")
	changed, lost := make([]uint64, words), make([]uint64, words)
	for i, n := range sample {
		if !bytes.Equal(paused1[i], paused2[i]) {
			bitmap.Words(changed).Set(n)
		}
		if !bytes.Equal(before[i], paused1[i]) && !bitmap.Words(first).Test(n) && !bitmap.Words(second).Test(n) {
			bitmap.Words(lost).Set(n)
		}
	}
	report(changed, "livemigtest: VM: Pause returned but page %d was written after it (two reads of it after Pause differ)")
	report(lost, "livemigtest: VM: page %d was written before Pause returned but no SyncDirty after Pause reported it (Pause must wait until every write is in the dirty log)")
	if err := vm.Pause(ctx); err != nil {
		t.Errorf("livemigtest: VM.Pause of a paused guest: %v (it must do nothing and return nil)", err)
	}
	for i := 0; i < pauseSteps; i++ {
		step()
	}
	if d := syncd("after a second Pause"); d != nil {
		report(d, "livemigtest: VM: page %d was written after a second Pause (Pause of a paused guest must keep it paused)")
	} else {
		return
	}

	// SaveState appends; LoadState takes what it saved.
	prefix := []byte("livemigtest: SaveState must append after this")
	tight := append([]byte(nil), prefix...)[:len(prefix):len(prefix)]
	roomy := make([]byte, len(prefix), len(prefix)+1<<16)
	copy(roomy, prefix)
	for _, c := range []struct {
		what string
		dst  []byte
	}{{"a dst with no spare capacity", tight}, {"a dst with spare capacity", roomy}, {"a nil dst", nil}} {
		out, err := vm.SaveState(ctx, c.dst)
		if err != nil {
			t.Errorf("livemigtest: VM.SaveState into %s: %v", c.what, err)
			continue
		}
		n := len(c.dst)
		if len(out) < n {
			t.Errorf("livemigtest: VM.SaveState into %s of %d bytes returned %d bytes: it must append to dst", c.what, n, len(out))
			continue
		}
		if c.dst != nil && !bytes.Equal(c.dst, prefix) {
			t.Errorf("livemigtest: VM.SaveState into %s changed dst[:len(dst)] at byte %d: it must append to dst and leave what it holds", c.what, diffAt(c.dst, prefix))
		}
		if c.dst != nil && !bytes.Equal(out[:n], prefix) {
			t.Errorf("livemigtest: VM.SaveState into %s returned a slice whose first %d bytes are not dst's (they differ at byte %d): it must append to dst", c.what, n, diffAt(out[:n], prefix))
		}
		state := append([]byte(nil), out[n:]...)
		if err := vm.LoadState(ctx, state); err != nil {
			t.Errorf("livemigtest: VM.LoadState of the %d bytes SaveState saved into %s: %v (LoadState must accept what SaveState saved)", len(state), c.what, err)
		}
	}
	if d := syncd("after SaveState and LoadState"); d != nil {
		report(d, "livemigtest: VM: page %d was written while the guest was paused, during SaveState or LoadState")
	} else {
		return
	}

	// Resume lets the guest write again.
	if err := vm.Resume(ctx); err != nil {
		t.Fatalf("livemigtest: VM.Resume of the paused guest: %v", err)
		return
	}
	if !wrote("after Resume") {
		t.Errorf("livemigtest: VM: Resume returned but the guest wrote nothing after it (Resume must let the guest run)")
	}
	if err := vm.Resume(ctx); err != nil {
		t.Errorf("livemigtest: VM.Resume of a running guest: %v (it must do nothing and return nil)", err)
	}
}

//go:build linux

package wpmem

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/livemig/livemig"
)

// A writer goroutine stores a known, seeded sequence while SyncDirty runs
// again and again (and PeekDirty from a third goroutine): a copy kept up to
// date only from the pages each sync reports ends equal to the memory, so
// no write racing with a sync was lost. The writer goes on until at least
// minSyncs syncs have run during its writes, so the race is exercised
// without sleeping.
func TestRacingWritesNeverLost(t *testing.T) {
	const pages, minWrites, minSyncs = 1024, 200_000, 2000
	r := newOrSkip(t, pages)
	ps := r.PageSize()
	mem := r.Bytes()
	shadow := make([]byte, len(mem)) // the destination: zeros, like mem
	var syncs atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the writer
		defer wg.Done()
		defer close(done)
		rng := rand.New(rand.NewPCG(42, 7))
		for i := 0; i < minWrites || syncs.Load() < minSyncs; i++ {
			n := rng.IntN(pages)
			off := rng.IntN(ps/8) * 8
			binary.LittleEndian.PutUint64(mem[n*ps+off:], uint64(i)+1)
		}
	}()
	go func() { // a peeker: scans serialize with SyncDirty
		defer wg.Done()
		peek := make([]uint64, livemig.WordsFor(pages))
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := r.PeekDirty(peek); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	dirty := make([]uint64, livemig.WordsFor(pages))
	reported := 0
	pull := func() {
		clear(dirty)
		if err := r.SyncDirty(dirty); err != nil {
			t.Fatal(err)
		}
		for _, n := range pagesOf(dirty) {
			reported++
			if err := r.ReadPage(n, shadow[int(n)*ps:int(n+1)*ps]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		pull()
		syncs.Add(1)
	}
	wg.Wait()
	pull() // the writer has stopped: this sync takes its last writes
	if !bytes.Equal(shadow, mem) {
		diff := 0
		for n := 0; n < pages; n++ {
			if !bytes.Equal(shadow[n*ps:(n+1)*ps], mem[n*ps:(n+1)*ps]) {
				diff++
			}
		}
		t.Fatalf("%d pages differ from the copy built from the syncs: writes lost", diff)
	}
	wantSynced(t, r)
	t.Logf("%d syncs, %d pages reported", syncs.Load(), reported)
}

//go:build linux && amd64

package kvm_test

import (
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/kvm"
	"github.com/livemig/livemig/internal/kvm/guest"
)

// BenchmarkKVMDirtySync measures one SyncDirty of each dirty log on a
// guest of two 64 MiB slots (a hole between them) after the guest wrote a
// fraction of its data pages in one batch (the guest's run is outside the
// timer), beside physical references in the same run: copying the dirty
// pages out of guest memory, and clearing the guest's bitmap. ms/GiB
// scales the time to a 1 GiB guest.
//
//	go test -run XXX -bench KVMDirtySync -benchtime 20x ./internal/kvm/
func BenchmarkKVMDirtySync(b *testing.B) {
	const slot = 64 << 20
	for _, mode := range []string{"bitmap", "manual", "ring", "ref-memcpy-dirty"} {
		for _, fr := range []struct {
			name string
			f    float64
		}{{"0.1%", 0.001}, {"1%", 0.01}, {"10%", 0.1}} {
			b.Run(mode+"/"+fr.name, func(b *testing.B) {
				ring := 0
				if mode == "ring" {
					ring = 64 << 10 // 4096 entries: 10% of 32 752 pages fits
				}
				dataPages := (2*slot - aGPA) / kvm.PageSize
				k := uint32(fr.f * float64(dataPages))
				m := newMachineSized(b, ring, guest.Params{PerBatch: k, Pattern: guest.Sequential}, slot, slot)
				benchSync(b, m, mode, k)
			})
		}
	}
}

func benchSync(b *testing.B, m *machine, mode string, k uint32) {
	var log interface{ SyncDirty([]uint64) error }
	var err error
	switch mode {
	case "bitmap":
		log, err = m.vm.StartBitmapLog()
	case "manual":
		log, err = m.vm.StartManualLog(0)
	case "ring":
		log, err = m.vm.StartRingLog()
	}
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]uint64, livemig.WordsFor(m.layout.PageCount()))
	page := make([]byte, kvm.PageSize)
	model := guest.NewModel(m.params)
	var pages []uint32
	guestBytes := float64(m.layout.PageCount() * kvm.PageSize)
	b.SetBytes(int64(guestBytes))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		m.batches(b, 1)
		pages = model.Next(pages[:0])
		clear(dst)
		b.StartTimer()
		if log != nil {
			if err := log.SyncDirty(dst); err != nil {
				b.Fatal(err)
			}
			continue
		}
		for _, pg := range pages { // the reference: copy the dirty pages out
			n, err := m.layout.PageOfGPA(m.params.GPA(pg))
			if err == nil {
				err = m.layout.ReadPage(n, page)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	if log != nil && livemig.WordsFor(uint64(k)) > 0 && countBits(dst) < uint64(k) {
		b.Fatalf("last sync found %d dirty pages, the guest wrote %d", countBits(dst), k)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6*(1<<30)/guestBytes, "ms/GiB")
}

func countBits(w []uint64) uint64 {
	var n uint64
	for _, x := range w {
		for ; x != 0; x &= x - 1 {
			n++
		}
	}
	return n
}

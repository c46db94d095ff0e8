package postcopy_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// toucher is a destination memory and a guest access that blocks until a
// page is present.
type toucher struct {
	mem   postcopy.Memory
	touch func(n uint64)
}

func heapToucher(b *testing.B, pages uint64, f *postcopy.FaultQueue) toucher {
	h, err := postcopy.NewHeapMemory(pageSize, pages, f.Fault)
	if err != nil {
		b.Fatal(err)
	}
	return toucher{h, func(n uint64) {
		_ = h.Access(context.Background(), n, func(p []byte) { _ = p[0] })
	}}
}

// benchFaultService measures demand-fault service over loopback TCP: the
// background push is held (PushBandwidth of 1 byte/s, no pre-paging), and a
// guest goroutine touches missing pages one at a time, in a seeded random
// order, each a request on the return path and a page back. Then it
// touches the rest, so that the migration completes.
func benchFaultService(b *testing.B, urgent bool, newMem func(*testing.B, uint64, *postcopy.FaultQueue) toucher) {
	ctx := context.Background()
	pages := uint64(max(b.N, 64))
	src := newSource(b, pages)
	faults := postcopy.NewFaultQueue(pages, nil)
	tm := newMem(b, pages, faults)
	a, bl := linkPair(b, true)
	ca, cb, err := openPair(ctx, a, bl, pages)
	if err != nil {
		b.Fatal(err)
	}
	scfg := postcopy.Config{Prepage: -1, PushBandwidth: 1}
	var dcfg postcopy.Config
	if urgent {
		ua, ub := linkPair(b, true)
		if scfg.Urgent, dcfg.Urgent, err = openPair(ctx, ua, ub, pages); err != nil {
			b.Fatal(err)
		}
	}
	vm := newDstVM()
	wait := migrateAsync(ctx, ca, cb, precopy.Source{Memory: src, VM: src},
		postcopy.Destination{Memory: tm.mem, VM: vm, Faults: faults, Pages: pages, PageSize: pageSize}, scfg, dcfg)
	<-vm.started
	order := rand.New(rand.NewPCG(1, 2)).Perm(int(pages))
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(pageSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		tm.touch(uint64(order[i]))
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	for _, n := range order[b.N:] {
		tm.touch(uint64(n))
	}
	e := wait()
	e.ok(b)
	slices.Sort(lat)
	q := func(p int) float64 { return float64(lat[(len(lat)-1)*p/100]) / float64(time.Microsecond) }
	b.ReportMetric(q(50), "p50-µs")
	b.ReportMetric(q(99), "p99-µs")
	b.ReportMetric(float64(e.drep.PostCopy.FaultP50)/float64(time.Microsecond), "engine-p50-µs")
}

// BenchmarkFaultService: demand faults served over loopback TCP, into the
// in-process memory; see BenchmarkRoundTrip4KiB for the link's own round
// trip.
func BenchmarkFaultService(b *testing.B) {
	b.Run("heap/main", func(b *testing.B) { benchFaultService(b, false, heapToucher) })
	b.Run("heap/urgent", func(b *testing.B) { benchFaultService(b, true, heapToucher) })
	benchFaultServiceUffd(b)
}

// BenchmarkRoundTrip4KiB is the floor under a demand fault: a request
// message one way and a 4 KiB page record back, flushed, between two Conns
// over loopback TCP.
func BenchmarkRoundTrip4KiB(b *testing.B) {
	ctx := context.Background()
	const pages = 1024
	a, bl := linkPair(b, true)
	ca, cb, err := openPair(ctx, a, bl, pages)
	if err != nil {
		b.Fatal(err)
	}
	page := make([]byte, pageSize)
	page[0] = 1
	done := make(chan error, 1)
	go func() {
		var m transport.Msg
		for {
			if err := cb.Recv(ctx, &m); err != nil {
				done <- nil
				return
			}
			if err := cb.Send(ctx, transport.Msg{Kind: wire.KindPage, Page: m.Page, Data: page}); err != nil {
				done <- err
				return
			}
			if err := cb.Flush(ctx); err != nil {
				done <- err
				return
			}
		}
	}()
	lat := make([]time.Duration, 0, b.N)
	var m transport.Msg
	b.SetBytes(pageSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := ca.Send(ctx, transport.Msg{Kind: wire.KindRequest, Page: uint64(i % pages), Arg: 1}); err != nil {
			b.Fatal(err)
		}
		if err := ca.Recv(ctx, &m); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	ca.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	cb.Close()
	slices.Sort(lat)
	q := func(p int) float64 { return float64(lat[(len(lat)-1)*p/100]) / float64(time.Microsecond) }
	b.ReportMetric(q(50), "p50-µs")
	b.ReportMetric(q(99), "p99-µs")
}

// benchFaultUnderPush measures demand faults while the push runs at full
// speed over loopback TCP limited to 1 Gbit/s: the source's writes wait for
// tokens, so what queues ahead of a requested page on the main connection
// is the push the Conn has batched but not written. A guest goroutine
// touches pages in a seeded random order; only touches of pages still
// missing are timed, and timing stops after b.N of them or when the push
// has brought everything. No pre-paging: one page per fault.
func benchFaultUnderPush(b *testing.B, urgent bool) {
	ctx := context.Background()
	const pages = 1 << 16 // 256 MiB: about 2.2 s of push at 1 Gbit/s
	limit := transport.RateConfig{BytesPerSec: 125e6}
	src := newSource(b, pages)
	faults := postcopy.NewFaultQueue(pages, nil)
	mem, err := postcopy.NewHeapMemory(pageSize, pages, faults.Fault)
	if err != nil {
		b.Fatal(err)
	}
	a, bl := linkPair(b, true)
	ca, cb, err := openPair(ctx, transport.RateLimit(a, limit), bl, pages)
	if err != nil {
		b.Fatal(err)
	}
	scfg := postcopy.Config{Prepage: -1}
	var dcfg postcopy.Config
	if urgent {
		ua, ub := linkPair(b, true)
		if scfg.Urgent, dcfg.Urgent, err = openPair(ctx, transport.RateLimit(ua, limit), ub, pages); err != nil {
			b.Fatal(err)
		}
	}
	vm := newDstVM()
	wait := migrateAsync(ctx, ca, cb, precopy.Source{Memory: src, VM: src},
		postcopy.Destination{Memory: mem, VM: vm, Faults: faults, Pages: pages, PageSize: pageSize}, scfg, dcfg)
	<-vm.started
	order := rand.New(rand.NewPCG(3, 4)).Perm(pages)
	lat := make([]time.Duration, 0, b.N)
	touch := func(n int) {
		_ = mem.Access(ctx, uint64(n), func(p []byte) { _ = p[0] })
	}
	b.SetBytes(pageSize)
	b.ResetTimer()
	for _, n := range order {
		if len(lat) == b.N {
			break
		}
		if mem.Present(uint64(n)) {
			continue
		}
		t0 := time.Now()
		touch(n)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	wait().ok(b)
	if len(lat) == 0 {
		b.Fatal("the push brought every page before the guest touched one")
	}
	slices.Sort(lat)
	q := func(p int) float64 { return float64(lat[(len(lat)-1)*p/100]) / float64(time.Microsecond) }
	b.ReportMetric(q(50), "p50-µs")
	b.ReportMetric(q(99), "p99-µs")
	b.ReportMetric(float64(len(lat)), "faults")
}

// BenchmarkFaultUnderPush: a demand fault while the push runs, with the
// requested page on the main connection (behind the batched push) and on
// an urgent one; compare with the model's figures in docs/BENCHMARKS.md.
func BenchmarkFaultUnderPush(b *testing.B) {
	b.Run("main", func(b *testing.B) { benchFaultUnderPush(b, false) })
	b.Run("urgent", func(b *testing.B) { benchFaultUnderPush(b, true) })
}

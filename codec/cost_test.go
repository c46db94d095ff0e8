package codec

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// A model whose every cost is a distinct power of two (in ns), so that a
// sum names the steps it charged.
var powers = CostModel{
	ZeroScan: 1, DataScan: 2, Copy: 4, Digest: 8, XBZRLEMiss: 16, XBZRLEHit: 32, XBZRLEByte: 0.5,
	LZ4Compress: 64, LZ4Reject: 128, ZeroFill: 256, LZ4Decompress: 512, XBZRLEApply: 1024, XBZRLEApplyByte: 0.25,
}

func TestCostModelSteps(t *testing.T) {
	for _, tc := range []struct {
		name     string
		o        Outcome
		ps       int
		enc, dec time.Duration
	}{
		{"zero", Outcome{Zero: true}, 4096, 1, 256},
		{"zero, no digest", Outcome{Zero: true, NoDigest: true}, 4096, 1, 256},
		{"raw", Outcome{}, 4096, 2 + 4 + 8, 4 + 8},
		{"raw, no digest", Outcome{NoDigest: true}, 4096, 2 + 4, 4},
		{"raw, 8 KiB pages", Outcome{}, 8192, 2 * (2 + 4 + 8), 2 * (4 + 8)},
		{"lz4 sent", Outcome{LZ4: LZ4Sent}, 4096, 14 + 64, 512 + 4 + 8},
		{"lz4 rejected", Outcome{LZ4: LZ4Rejected}, 4096, 14 + 128, 12},
		{"xbzrle miss, raw", Outcome{XBZRLE: XBZRLEMiss}, 4096, 14 + 16, 12},
		{"xbzrle miss, lz4", Outcome{XBZRLE: XBZRLEMiss, LZ4: LZ4Sent}, 4096, 14 + 16 + 64, 512 + 12},
		{"xbzrle delta", Outcome{XBZRLE: XBZRLEDelta, DeltaBytes: 100}, 4096, 14 + 32 + 50, 1024 + 25 + 8},
		{"xbzrle delta, 2 KiB pages", Outcome{XBZRLE: XBZRLEDelta, DeltaBytes: 100}, 2048, 7 + 16 + 50, 512 + 25 + 4},
		{"xbzrle unchanged", Outcome{XBZRLE: XBZRLEUnchanged}, 4096, 14 + 32, 0},
		{"xbzrle overflow, lz4 rejected", Outcome{XBZRLE: XBZRLEOverflow, LZ4: LZ4Rejected}, 4096, 14 + 32 + 2048 + 128, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := powers
			if got := m.Encode(tc.o, tc.ps); got != tc.enc {
				t.Errorf("Encode = %v, want %v", got, tc.enc)
			}
			if got := m.Decode(tc.o, tc.ps); got != tc.dec {
				t.Errorf("Decode = %v, want %v", got, tc.dec)
			}
			m.Workers, m.DecodeWorkers = 2, 4
			if e, d := m.Stage(tc.o, tc.ps); e != (tc.enc+1)/2 && e != tc.enc/2 || d != tc.dec/4 && d != (tc.dec+3)/4 {
				t.Errorf("Stage = %v, %v; want about %v, %v", e, d, tc.enc/2, tc.dec/4)
			}
		})
	}
	var free CostModel
	if e, d := free.Encode(Outcome{LZ4: LZ4Sent}, 4096), free.Decode(Outcome{LZ4: LZ4Sent}, 4096); e != 0 || d != 0 {
		t.Errorf("the zero model charges %v, %v", e, d)
	}
	neg := CostModel{Copy: -5, LZ4Compress: -1}
	if e := neg.Encode(Outcome{LZ4: LZ4Sent}, 4096); e != 0 {
		t.Errorf("negative costs charge %v", e)
	}
	var nilModel *CostModel
	def := DefaultCost()
	if nilModel.Encode(Outcome{LZ4: LZ4Sent}, 4096) != def.Encode(Outcome{LZ4: LZ4Sent}, 4096) {
		t.Error("a nil model is not the default")
	}
	// The defaults keep their order: LZ4 is by far the costliest step,
	// the zero check of a data page the cheapest.
	if !(def.LZ4Compress > 5*def.XBZRLEHit && def.DataScan < def.ZeroScan && def.LZ4Decompress < def.LZ4Compress) {
		t.Errorf("defaults out of order: %s", def)
	}
}

// linkSend returns a send function that models a link as transport.SimLink
// does: a record of any size takes tx, starting no earlier than the
// clock and the end of the previous one, and moves the clock to its end.
func linkSend(clock *livemig.VirtualClock, tx time.Duration) func(transport.Msg) error {
	var busy time.Time
	return func(transport.Msg) error {
		start := clock.Now()
		if busy.After(start) {
			start = busy
		}
		busy = start.Add(tx)
		clock.AdvanceTo(busy)
		return nil
	}
}

// kindMem returns a memory of pages pages all of one fillPage kind.
func kindMem(pages, kind int) *mem {
	m := &mem{ps: testPS, data: make([]byte, testPS*pages)}
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range pages {
		fillPage(rng, m.page(uint64(i)), kind)
	}
	return m
}

// In virtual time a round of pages takes as long as its slowest stage: the
// encoders, the link or the decoders, not their sum.
func TestVirtualTimeStages(t *testing.T) {
	const pages = 1024
	const us = time.Microsecond
	random, text := kindMem(pages, 1), kindMem(pages, 2)
	for _, tc := range []struct {
		name     string
		m        *mem
		cost     CostModel
		workers  int // goroutines
		tx       time.Duration
		min, max time.Duration
	}{
		// LZ4 rejects every random page at 10 µs, on a link of 1 µs a page.
		{"encoders slower", random, CostModel{LZ4Reject: 10000}, 1, us, pages * 10 * us, pages*10*us + us},
		{"encoders slower, 2 modelled", random, CostModel{LZ4Reject: 10000, Workers: 2}, 1, us, pages * 5 * us, pages*5*us + us},
		{"encoders slower, 2 goroutines", random, CostModel{LZ4Reject: 10000}, 2, us, pages * 10 * us, pages*10*us + us},
		// 1 µs to encode, 10 µs on the link: the link's time, plus one
		// page's encoding.
		{"link slower", random, CostModel{LZ4Reject: 1000}, 1, 10 * us, pages * 10 * us, pages*10*us + us},
		// The destination decompresses at 10 µs a page: once its buffer of
		// streamAhead records is full, the link waits on it. Its last
		// records' decoding is not charged.
		{"decoders slower", text, CostModel{LZ4Compress: 1000, LZ4Decompress: 10000}, 1, us,
			(pages - streamAhead) * 10 * us, pages * 10 * us},
		{"decoders slower, 2 modelled", text, CostModel{LZ4Compress: 1000, LZ4Decompress: 10000, DecodeWorkers: 2}, 1, us,
			(pages - streamAhead) * 5 * us, pages * 5 * us},
		// Free: only the link's time.
		{"free", random, CostModel{}, 1, us, pages * us, pages * us},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var elapsed [2]time.Duration
			for run := range elapsed {
				clock := livemig.NewVirtualClock()
				cost := tc.cost
				pl, err := NewPipeline(Config{LZ4: true, NoAdapt: true, Workers: tc.workers, Clock: clock, Cost: &cost},
					tc.m, nil, linkSend(clock, tc.tx))
				if err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				t0 := clock.Now()
				pl.StartRound(1, false)
				for n := range uint64(pages) {
					if err := pl.Submit(ctx, n); err != nil {
						t.Fatal(err)
					}
				}
				if err := pl.Barrier(ctx); err != nil {
					t.Fatal(err)
				}
				elapsed[run] = clock.Now().Sub(t0)
				pl.Close()
			}
			if elapsed[0] != elapsed[1] {
				t.Errorf("two runs took %v and %v", elapsed[0], elapsed[1])
			}
			if elapsed[0] < tc.min || elapsed[0] > tc.max {
				t.Errorf("round took %v, want %v to %v", elapsed[0], tc.min, tc.max)
			}
		})
	}
}

// In virtual time, adaptation weighs the modelled costs: with the default
// model LZ4 (about 1 GB/s on one core) is turned off on a 10 Gbit/s link
// and kept on a 100 Mbit/s one; more modelled workers keep it on at
// 10 Gbit/s. Without a Clock, encoding is free and nothing is turned off.
func TestVirtualTimeAdapt(t *testing.T) {
	run := func(cfg Config, link float64) Codecs {
		t.Helper()
		cfg.LZ4 = true
		m := kindMem(256, 2)
		pl, err := NewPipeline(cfg, m, nil, func(transport.Msg) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		defer pl.Close()
		ctx := context.Background()
		pl.StartRound(1, false)
		for n := range uint64(256) {
			if err := pl.Submit(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		if err := pl.Barrier(ctx); err != nil {
			t.Fatal(err)
		}
		d := pl.ObserveLink(link)
		if pl.Stats().LZ4Pages == 0 {
			t.Fatalf("no LZ4 pages: %+v", pl.Stats())
		}
		if got := pl.Stats().Codecs; got != d.Codecs.String() {
			t.Errorf("Stats().Codecs %q, decision %s", got, d.Codecs)
		}
		return d.Codecs
	}
	clock := livemig.NewVirtualClock()
	const gbit = 1e9 / 8
	if got := run(Config{Clock: clock}, 10*gbit); got.LZ4 {
		t.Errorf("10 Gbit/s, default model: LZ4 kept on")
	}
	if got := run(Config{Clock: clock}, 0.1*gbit); !got.LZ4 {
		t.Errorf("100 Mbit/s, default model: LZ4 turned off")
	}
	many := DefaultCost()
	many.Workers = 16
	if got := run(Config{Clock: clock, Cost: &many}, 10*gbit); !got.LZ4 {
		t.Errorf("10 Gbit/s, 16 modelled workers: LZ4 turned off")
	}
	if got := run(Config{VirtualTime: true}, 10*gbit); !got.LZ4 {
		t.Errorf("10 Gbit/s, virtual time without a clock: LZ4 turned off")
	}
}

func TestCalibrate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Calibrate(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if testing.Short() || raceEnabled {
		t.Skip("half a second of measurements; slowed tenfold under the race detector")
	}
	m, err := Calibrate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Log(m)
	for name, v := range map[string]float64{"ZeroScan": m.ZeroScan, "Copy": m.Copy, "Digest": m.Digest,
		"XBZRLEMiss": m.XBZRLEMiss, "XBZRLEByte": m.XBZRLEByte, "LZ4Compress": m.LZ4Compress, "LZ4Reject": m.LZ4Reject,
		"ZeroFill": m.ZeroFill, "LZ4Decompress": m.LZ4Decompress} {
		if !(v > 0) {
			t.Errorf("%s = %v", name, v)
		}
	}
	// Whatever the machine, compressing a page costs more than copying it.
	if m.LZ4Compress <= m.Copy {
		t.Errorf("LZ4 %v ns a page, a copy %v", m.LZ4Compress, m.Copy)
	}
}

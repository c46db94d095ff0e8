package codec

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"strings"
	"testing"

	"github.com/livemig/livemig/transport"
)

func TestAdapt(t *testing.T) {
	both := Codecs{XBZRLE: true, LZ4: true}
	xOnly := Codecs{XBZRLE: true}
	lOnly := Codecs{LZ4: true}
	none := Codecs{}
	// Per input byte: XBZRLE saves 0.6 at 0.5 ns/B (2 GB/s a worker), LZ4
	// saves 0.2 more at 2 ns/B (500 MB/s a worker).
	x := CodecFacts{Known: true, NsPerByte: 0.5, SavedPerByte: 0.6}
	l := CodecFacts{Known: true, NsPerByte: 2, SavedPerByte: 0.2}
	free := CodecFacts{Known: true, NsPerByte: 0, SavedPerByte: 0.2}
	for _, tc := range []struct {
		name         string
		link         float64
		workers      int
		x, l         CodecFacts
		cur, allowed Codecs
		want         Codecs
	}{
		// 125 MB/s (1 Gbit/s): both pay: min(2·400M, 125M/0.2) = 625 MB/s.
		{"slow link keeps both", 125e6, 2, x, l, both, both, both},
		// 1.25 GB/s: with both, min(2·400M, 1.25G/0.2) = 800 MB/s; XBZRLE
		// alone min(4G, 1.25G/0.4) = 3.1 GB/s: LZ4 goes first.
		{"fast link drops LZ4", 1.25e9, 2, x, l, both, both, xOnly},
		// 5 GB/s, one worker: XBZRLE alone 2 GB/s < 5 GB/s raw: both go.
		{"faster link drops both", 5e9, 1, x, l, both, both, none},
		// At 3 GB/s and 2 workers XBZRLE alone gives min(4G, 7.5G) = 4 GB/s,
		// 33 % over 3 GB/s: kept on.
		{"xbzrle alone still pays", 3e9, 2, x, l, xOnly, both, xOnly},
		// Once off, a slower link brings XBZRLE back (LZ4 still loses: min(800M, ...)).
		{"slower link brings xbzrle back", 1.25e9, 2, x, l, none, both, xOnly},
		{"very slow link brings both back", 10e6, 2, x, l, none, both, both},
		// Within the hysteresis band nothing moves: XBZRLE alone 2 GB/s vs
		// 1.9 GB/s raw.
		{"hysteresis keeps off", 1.9e9, 1, x, l, none, both, none},
		{"hysteresis keeps on", 2.1e9, 1, x, l, xOnly, both, xOnly},
		// XBZRLE never ran yet (round 1): it stays on whatever.
		{"unknown xbzrle stays", 5e9, 1, CodecFacts{}, l, both, both, xOnly},
		{"unknown lz4 stays", 5e9, 1, x, CodecFacts{}, both, both, both},
		// Free encoding (a simulation) never turns a codec off.
		{"free encoding", 1e15, 1, CodecFacts{Known: true}, free, both, both, both},
		{"free encoding, no savings", 1e15, 1, CodecFacts{Known: true}, CodecFacts{Known: true}, both, both, both},
		// Unknown link: no change.
		{"link unknown", 0, 1, x, l, both, both, both},
		{"link NaN", math.NaN(), 1, x, l, both, both, both},
		{"link Inf", math.Inf(1), 1, x, l, both, both, both},
		// Only LZ4 allowed.
		{"lz4 only, slow", 125e6, 1, x, l, lOnly, lOnly, lOnly},
		{"lz4 only, fast", 1e9, 1, x, l, lOnly, lOnly, none},
		// Nothing allowed, or cur asks for more than allowed.
		{"nothing allowed", 1e6, 1, x, l, both, none, none},
		{"cur clipped", 125e6, 2, x, l, both, xOnly, xOnly},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := Facts{Workers: tc.workers, LinkBytesPerSec: tc.link, BaseWire: 1, XBZRLE: tc.x, LZ4: tc.l}
			d := Adapt(f, tc.cur, tc.allowed)
			if d.Codecs != tc.want {
				t.Fatalf("got %s, want %s (%s)", d.Codecs, tc.want, d.Reason)
			}
			if d.Reason == "" {
				t.Error("no reason")
			}
		})
	}
}

// TestObserveLink runs the pipeline through rounds and tells it of a link
// far faster or far slower than any encoder.
func TestObserveLink(t *testing.T) {
	run := func(t *testing.T, cfg Config, link float64) (Codecs, string) {
		var logs bytes.Buffer
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		cfg.XBZRLE, cfg.LZ4 = true, true
		ctx := context.Background()
		src := newMem(testPS, 512, 3)
		pl, err := NewPipeline(cfg, src, nil, func(transport.Msg) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		defer pl.Close()
		for round := 1; round <= 4; round++ {
			pl.StartRound(round, false)
			for n := range uint64(512) {
				if round > 1 {
					src.page(n)[round] ^= 1
				}
				if err := pl.Submit(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			if err := pl.Barrier(ctx); err != nil {
				t.Fatal(err)
			}
			pl.ObserveLink(link)
		}
		return pl.Codecs(), logs.String()
	}
	for _, workers := range []int{1, 2} {
		if got, logs := run(t, Config{Workers: workers}, 1e15); got != (Codecs{}) || !strings.Contains(logs, "switching codecs") {
			t.Errorf("workers %d, 1 PB/s link: codecs %s, log %q", workers, got, logs)
		}
		if got, logs := run(t, Config{Workers: workers}, 1e3); got != (Codecs{XBZRLE: true, LZ4: true}) || logs != "" {
			t.Errorf("workers %d, 1 kB/s link: codecs %s, log %q", workers, got, logs)
		}
		if got, _ := run(t, Config{Workers: workers, VirtualTime: true}, 1e15); got != (Codecs{XBZRLE: true, LZ4: true}) {
			t.Errorf("workers %d, virtual time: codecs %s", workers, got)
		}
		if got, _ := run(t, Config{Workers: workers, NoAdapt: true}, 1e15); got != (Codecs{XBZRLE: true, LZ4: true}) {
			t.Errorf("workers %d, NoAdapt: codecs %s", workers, got)
		}
	}
}

// TestAdaptRoundTrip turns XBZRLE off and on again between rounds: the
// destination must stay right (the caches are dropped while it is off).
func TestAdaptRoundTrip(t *testing.T) {
	for _, workers := range []int{1, 3} {
		ctx := context.Background()
		const pages = 64
		src := newMem(testPS, pages, 8)
		dst := newSink(testPS, pages)
		dec := NewDecoder(Config{})
		pl, err := NewPipeline(Config{XBZRLE: true, Workers: workers}, src, nil, func(m transport.Msg) error {
			_, err := dec.Apply(dst, m.Page, m.Enc, m.Data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		// After round 2 (all misses) XBZRLE's gain is unknown; after round
		// 3 (hits) it is known, and loses to a fast link; a slow one brings
		// it back with new, empty caches.
		links := []float64{1e3, 1e15, 1e15, 1e-3, 1e3, 1e3}
		wantX := []bool{true, true, false, true, true, true}
		for round := 1; round <= len(links); round++ {
			pl.StartRound(round, false)
			for n := range uint64(pages) {
				src.page(n)[round*7] ^= byte(round)
				if err := pl.Submit(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			if err := pl.Barrier(ctx); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(src.data, dst.data) {
				t.Fatalf("workers %d, round %d (%s): destination differs", workers, round, pl.Codecs())
			}
			if d := pl.ObserveLink(links[round-1]); d.XBZRLE != wantX[round-1] || pl.Codecs() != d.Codecs {
				t.Fatalf("workers %d, after round %d: %s (%s), want xbzrle %v", workers, round, d.Codecs, d.Reason, wantX[round-1])
			}
		}
		if s := pl.Stats(); s.DeltaPages == 0 {
			t.Errorf("workers %d: no delta pages: %+v", workers, s)
		}
		pl.Close()
	}
}

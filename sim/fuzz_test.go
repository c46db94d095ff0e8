package sim

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/livemig/livemig"
)

// fuzzConfig is small so that the fuzzer can reach valid pages.
var fuzzConfig = GuestConfig{Pages: 16, PageSize: 64, Seed: 1, WriteWords: 2, StateSize: 64}

// FuzzSinkWritePage feeds arbitrary page data to a sink: it must return an
// error or store exactly what it was given, never panic.
func FuzzSinkWritePage(f *testing.F) {
	g, err := NewGuest(fuzzConfig, nil, livemig.NewVirtualClock())
	if err != nil {
		f.Fatal(err)
	}
	for n := uint64(0); n < 4; n++ {
		g.Write(n, n%2 == 0)
		p := make([]byte, 64)
		g.ReadPage(n, p)
		f.Add(n, p)
	}
	f.Add(uint64(20), make([]byte, 64))
	f.Add(uint64(1), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, n uint64, data []byte) {
		s, err := NewSink(fuzzConfig)
		if err != nil {
			t.Fatal(err)
		}
		err = s.WritePage(n, data)
		if err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) && !errors.Is(err, livemig.ErrPageRange) {
				t.Fatalf("error wraps neither ErrCorrupt nor ErrPageRange: %v", err)
			}
			if _, received, _ := s.Page(n); received {
				t.Fatal("a rejected page was stored")
			}
			return
		}
		got := make([]byte, 64)
		if err := s.ReadPage(n, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("accepted page %d reads back differently:\n%x\n%x", n, data, got)
		}
	})
}

// FuzzLoadState feeds arbitrary state to a sink: it must return an error
// wrapping ErrCorrupt or accept exactly a state a guest saves.
func FuzzLoadState(f *testing.F) {
	ctx := context.Background()
	g, err := NewGuest(fuzzConfig, Uniform(10, false), livemig.NewVirtualClock())
	if err != nil {
		f.Fatal(err)
	}
	st, _ := g.SaveState(ctx, nil)
	f.Add(st)
	f.Add(st[:40])
	f.Add([]byte(stateMagic))
	f.Fuzz(func(t *testing.T, state []byte) {
		s, err := NewSink(fuzzConfig)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.LoadState(ctx, state); err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if err := g.LoadState(ctx, state); err != nil {
			t.Fatalf("the sink accepted a state the guest rejects: %v", err)
		}
		if got, _ := s.SaveState(ctx, nil); !bytes.Equal(got, state) {
			t.Fatal("the sink keeps another state than it loaded")
		}
	})
}

package hybrid_test

import (
	"context"
	"errors"
	"testing"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// The engine is package postcopy's, tested there with guests, cuts and
// real userfaultfd memory (postcopy's TestHybridHeap, TestRealPostCopy,
// TestRealRecovery). These tests check what this package adds: Rounds and
// its default, and the destination's Discarder.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pageSize = livemig.DefaultPageSize

// Migrate runs Rounds pre-copy rounds (DefaultRounds if 0; the embedded
// PreCopyRounds is ignored) while writers dirty the source, then post-copy;
// the destination ends equal to the source at the pause, with its state.
func TestMigrate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       hybrid.Config
		minRounds int
		maxRounds int
	}{
		{"default", hybrid.Config{}, 1, hybrid.DefaultRounds},
		{"one round", hybrid.Config{Rounds: 1}, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const pages = 1024
			ctx := context.Background()
			src := testkit.NewSource(t, pageSize, pages)
			stop, _ := testkit.Writers(src, 2)
			mem, err := postcopy.NewHeapMemory(pageSize, pages, nil)
			if err != nil {
				t.Fatal(err)
			}
			vm := testkit.NewSource(t, pageSize, 1) // a region is a VM: it keeps the state
			vm.SetState(nil)
			a, b := transport.Pipe(1 << 20)
			ca, cb, err := testkit.OpenPair(ctx, a, b, transport.Hello{PageSize: pageSize, PageCount: pages})
			if err != nil {
				t.Fatal(err)
			}
			var drep *hybrid.ReceiveReport
			var derr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				drep, derr = hybrid.Receive(ctx, cb, hybrid.Destination{Memory: mem, VM: vm, Pages: pages, PageSize: pageSize}, hybrid.Config{})
			}()
			rep, err := hybrid.Migrate(ctx, ca, precopy.Source{Memory: src, Dirty: src, VM: src}, tc.cfg)
			<-done
			// The source stays paused after the hand-over: its memory is
			// the guest at the pause.
			n, first := testkit.DiffPages(src.Bytes(), mem.Bytes(), pageSize)
			stop()
			if err != nil || derr != nil {
				t.Fatalf("source: %v\ndestination: %v", err, derr)
			}
			if n != 0 {
				t.Fatalf("destination differs from the source at the pause in %d pages (first %d)", n, first)
			}
			if string(vm.State()) != string(src.State()) {
				t.Fatalf("state %q, want %q", vm.State(), src.State())
			}
			rounds := len(rep.Rounds) - 1
			if rep.Algorithm != "hybrid" || rounds < tc.minRounds || rounds > tc.maxRounds || drep.Rounds != rounds ||
				!rep.Verified || !drep.Complete || rep.PostCopy == nil {
				t.Fatalf("algorithm %q, %d pre-copy rounds (destination saw %d), want %d to %d; verified %v, complete %v",
					rep.Algorithm, rounds, drep.Rounds, tc.minRounds, tc.maxRounds, rep.Verified, drep.Complete)
			}
			t.Logf("%v", rep)
		})
	}
}

// A destination memory that cannot discard is refused, and so are negative
// Rounds.
func TestNeedsDiscarder(t *testing.T) {
	a, b := transport.Pipe(1 << 16)
	ctx := context.Background()
	ca, cb, err := testkit.OpenPair(ctx, a, b, transport.Hello{PageSize: pageSize, PageCount: 64})
	if err != nil {
		t.Fatal(err)
	}
	vm := testkit.NewSource(t, pageSize, 1)
	_, err = hybrid.Receive(ctx, cb, hybrid.Destination{Memory: struct{ postcopy.Memory }{}, VM: vm, Pages: 64, PageSize: pageSize}, hybrid.Config{})
	if !errors.Is(err, livemig.ErrNotSupported) {
		t.Fatalf("Receive = %v", err)
	}
	if _, err := hybrid.Migrate(ctx, ca, precopy.Source{}, hybrid.Config{Rounds: -1}); err == nil {
		t.Fatal("negative Rounds accepted")
	}
}

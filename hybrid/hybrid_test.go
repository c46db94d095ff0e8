package hybrid_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// The engines are packages precopy's and postcopy's, tested there with
// guests, cuts and real userfaultfd memory (postcopy's TestHybridHeap,
// TestRealPostCopy, TestRealRecovery), and the hand-off between them in
// internal/faultmatrix. These tests check what this package adds: Rounds and
// its default, the rounds' configuration, Adaptive, and the destination's
// Discarder.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const pageSize = livemig.DefaultPageSize

// Migrate runs up to Rounds pre-copy rounds (DefaultRounds if 0) while
// writers dirty the source, then post-copy; the destination ends equal to
// the source at the pause, with its state. The rounds are pre-copy's, with
// its codecs (XBZRLE deltas applied at the destination against its
// memory). Adaptive goes on by post-copy only when pre-copy does not
// converge: a guest that converges ends by stop-and-copy.
func TestMigrate(t *testing.T) {
	never := time.Nanosecond // a downtime target no round meets
	for _, tc := range []struct {
		name      string
		cfg       hybrid.Config
		minRounds int
		maxRounds int
		alg       string // the report's
	}{
		{"default", hybrid.Config{}, 1, hybrid.DefaultRounds, "hybrid"},
		{"one round", hybrid.Config{Rounds: 1}, 1, 1, "hybrid"},
		{"codecs", hybrid.Config{Rounds: 3, Config: postcopy.Config{LZ4: true},
			PreCopy: precopy.Config{DowntimeTarget: never, StallRounds: 3, Codec: codec.Config{XBZRLE: true}}}, 3, 3, "hybrid"},
		{"adaptive converges", hybrid.Config{Adaptive: true}, 1, 30, "pre-copy"},
		{"adaptive switches", hybrid.Config{Adaptive: true, Rounds: 2, PreCopy: precopy.Config{DowntimeTarget: never}}, 2, 2, "hybrid"},
		// With an urgent connection, which pre-copy's end leaves unused.
		{"adaptive converges urgent", hybrid.Config{Adaptive: true, Config: postcopy.Config{Urgent: urgentMark}}, 1, 30, "pre-copy"},
		{"adaptive switches urgent", hybrid.Config{Adaptive: true, Rounds: 2, Config: postcopy.Config{Urgent: urgentMark},
			PreCopy: precopy.Config{DowntimeTarget: never}}, 2, 2, "hybrid"},
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
			var dcfg hybrid.Config
			if tc.cfg.Urgent != nil {
				ua, ub := transport.Pipe(1 << 20)
				uca, ucb, err := testkit.OpenPair(ctx, ua, ub, transport.Hello{PageSize: pageSize, PageCount: pages})
				if err != nil {
					t.Fatal(err)
				}
				tc.cfg.Urgent, dcfg.Urgent = uca, ucb
			}
			// A link lost on the way would show as a reconnection.
			dcfg.Reaccept = func(context.Context) (transport.Conn, error) {
				t.Error("the destination lost its link")
				return nil, errors.New("no reconnection here")
			}
			var drep *hybrid.ReceiveReport
			var derr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				drep, derr = hybrid.Receive(ctx, cb, hybrid.Destination{Memory: mem, VM: vm, Pages: pages, PageSize: pageSize}, dcfg)
			}()
			rep, err := hybrid.Migrate(ctx, ca, precopy.Source{Memory: src, Dirty: testkit.DirtyOnSync(src, 7), VM: src}, tc.cfg)
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
			if rep.Algorithm != tc.alg || rounds < tc.minRounds || rounds > tc.maxRounds || drep.Rounds != rounds ||
				!rep.Verified || !drep.Complete || !drep.Resumed || (rep.PostCopy != nil) != (tc.alg == "hybrid") {
				t.Fatalf("algorithm %q (want %q), %d pre-copy rounds (destination saw %d), want %d to %d; verified %v, complete %v, post-copy %v",
					rep.Algorithm, tc.alg, rounds, drep.Rounds, tc.minRounds, tc.maxRounds, rep.Verified, drep.Complete, rep.PostCopy)
			}
			if tc.cfg.PreCopy.Codec.XBZRLE && (rep.Codec == nil || rep.Codec.DeltaPages == 0 || rep.Codec.LZ4Pages == 0) {
				t.Fatalf("codecs: %+v: want XBZRLE deltas in the rounds and LZ4 pages", rep.Codec)
			}
			t.Logf("%v", rep)
		})
	}
}

// urgentMark in a case's Config asks for an urgent connection.
var urgentMark transport.Conn = struct{ transport.Conn }{}

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

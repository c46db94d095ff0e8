package scenario

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/reorder"
)

// Algorithm.Order is called once per run with the guest's page count, and
// its order is the one the engine uses: ByFrequency with deferral on a
// skewed workload gives other figures than sequential order.
func TestOrderPerRun(t *testing.T) {
	sc := small("hotcold", Workload{Kind: "hotcold", Rate: 20000, HotBytes: 4 * mib, HotFraction: 0.9})
	sc.GuestBytes = 64 * mib // cheap under -race
	cfg := precopy.Config{DowntimeTarget: 5 * time.Millisecond, Defer: true}
	var calls []uint64
	alg := Algorithm{Name: "reorder", PreCopy: cfg, Order: func(pages uint64) (precopy.Order, error) {
		calls = append(calls, pages)
		return reorder.NewFrequency(pages, reorder.FrequencyConfig{})
	}}
	a, err := Run(context.Background(), sc, alg)
	if err != nil || a.Err != nil {
		t.Fatal(err, a.Err)
	}
	b, err := Run(context.Background(), sc, alg)
	if err != nil || b.Err != nil {
		t.Fatal(err, b.Err)
	}
	if want := sc.GuestBytes / livemig.DefaultPageSize; len(calls) != 2 || calls[0] != want || calls[1] != want {
		t.Fatalf("Order called with %v, want twice with %d", calls, want)
	}
	if a.Row() != b.Row() {
		t.Fatalf("a fresh order per run should give the same figures:\n%+v\n%+v", a.Row(), b.Row())
	}
	seq, err := Run(context.Background(), sc, Algorithm{Name: "reorder", PreCopy: cfg})
	if err != nil || seq.Err != nil {
		t.Fatal(err, seq.Err)
	}
	if seq.Row() == a.Row() {
		t.Fatalf("the order was not used: sequential gives the same figures %+v", a.Row())
	}

	// An order that cannot be made fails the run cleanly: the source
	// reports the error and the destination never resumes.
	bad := Algorithm{Name: "bad", Order: func(uint64) (precopy.Order, error) { return nil, reorder.ErrTooLarge }}
	res, err := Run(context.Background(), sc, bad)
	if err != nil || !errors.Is(res.Err, reorder.ErrTooLarge) || res.Guest.Paused {
		t.Fatalf("bad order: err %v, result err %v, paused %v", err, res.Err, res.Guest.Paused)
	}
}

// A Migrator replaces pre-copy on the same prepared endpoints; Run checks
// its outcome as it checks pre-copy's.
func TestMigrator(t *testing.T) {
	sc := small("uniform", Workload{Kind: "uniform", Rate: 2000})
	sc.GuestBytes = 32 * mib
	var seen Endpoints
	wrapped := Algorithm{Name: "wrapped", Migrate: func(ctx context.Context, e Endpoints) Outcome {
		seen = e
		return Algorithm{Name: "inner"}.preCopy(ctx, e)
	}}
	res, err := Run(context.Background(), sc, wrapped)
	if err != nil || res.Err != nil || !res.Verified {
		t.Fatalf("wrapped pre-copy: %v, %v, verified %v", err, res.Err, res.Verified)
	}
	if seen.Guest == nil || seen.Sink == nil || seen.Pages != sc.GuestBytes/livemig.DefaultPageSize ||
		seen.SourceClock == nil || seen.DestClock == nil || seen.Scenario.Name != sc.Name {
		t.Fatalf("endpoints %+v", seen)
	}
	plain, err := Run(context.Background(), sc, preCopy)
	if err != nil || plain.Row().BytesSent != res.Row().BytesSent {
		t.Fatalf("wrapped and plain pre-copy differ: %v %+v %+v", err, plain.Row(), res.Row())
	}

	// A migrator whose destination resumed although the source failed is a
	// broken algorithm: Run says so.
	liar := Algorithm{Name: "liar", Migrate: func(ctx context.Context, e Endpoints) Outcome {
		e.Source.Close()
		e.Dest.Close()
		return Outcome{Err: livemig.ErrClosed, DestResumed: true}
	}}
	if _, err := Run(context.Background(), sc, liar); err == nil || !strings.Contains(err.Error(), "resumed") {
		t.Fatalf("liar: %v", err)
	}
	// One that reports success without a report is caught too.
	silent := Algorithm{Name: "silent", Migrate: func(ctx context.Context, e Endpoints) Outcome {
		e.Source.Close()
		e.Dest.Close()
		return Outcome{}
	}}
	if _, err := Run(context.Background(), sc, silent); err == nil {
		t.Fatal("a migrator without a report passed")
	}
}

// The video workload writes whole pages through its buffer and a few words
// to its hot set, and migrates like any other.
func TestVideoWorkload(t *testing.T) {
	w := Workload{Kind: "video", Rate: 10000, BufferBytes: 16 * mib, HotBytes: 1 * mib}
	if s := w.String(); !strings.Contains(s, "90% whole pages") || !strings.Contains(s, "16.00 MiB") {
		t.Errorf("String() = %q", s)
	}
	sc := small("video", w)
	sc.GuestBytes = 64 * mib
	res, err := Run(context.Background(), sc, preCopy)
	if err != nil || res.Err != nil || !res.Verified || res.Report.PagesResent == 0 {
		t.Fatalf("video: %v %v %+v", err, res.Err, res.Row())
	}
	if res.Guest.WholeWrites == 0 || res.Guest.Writes == res.Guest.WholeWrites {
		t.Fatalf("video should write both whole pages and words: %+v", res.Guest)
	}
}

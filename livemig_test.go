package livemig_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
)

func TestVirtualClock(t *testing.T) {
	c := livemig.NewVirtualClock()
	if !c.Now().Equal(livemig.VirtualEpoch) {
		t.Fatalf("starts at %v", c.Now())
	}
	c.Advance(time.Second)
	c.Advance(-time.Hour) // never backwards
	c.AdvanceTo(livemig.VirtualEpoch)
	if got := c.Now().Sub(livemig.VirtualEpoch); got != time.Second {
		t.Fatalf("at %v, want 1s", got)
	}
	if err := c.WaitUntil(context.Background(), livemig.VirtualEpoch.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := c.Now().Sub(livemig.VirtualEpoch); got != 3*time.Second {
		t.Fatalf("WaitUntil left the clock at %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.WaitUntil(ctx, livemig.VirtualEpoch.Add(time.Hour)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestWallClockWaitCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := livemig.WallClock{}.WaitUntil(ctx, time.Now().Add(time.Hour))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

func sampleReport() *livemig.Report {
	return &livemig.Report{
		Algorithm: "pre-copy", GuestPages: 1024, PageSize: 4096,
		Rounds: []livemig.Round{
			{Index: 1, Duration: 40 * time.Millisecond, DirtyPages: 1024, PagesSent: 1024, ZeroPages: 12, Bytes: 4 << 20},
			{Index: 2, Final: true, Start: 40 * time.Millisecond, Duration: 1500 * time.Microsecond, DirtyPages: 8, PagesSent: 8, Bytes: 32 << 10},
		},
		TotalTime: 41500 * time.Microsecond, Downtime: 1500 * time.Microsecond,
		BytesSent: 4<<20 + 32<<10, PagesSent: 1032, PagesResent: 8, ZeroPages: 12, Converged: true, Verified: true,
	}
}

func TestReportJSON(t *testing.T) {
	b, err := json.Marshal(sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"algorithm": "pre-copy", "total_ms": 41.5, "downtime_ms": 1.5, "pages_sent": 1032.0,
		"pages_resent": 8.0, "verified": true, "bytes_sent": float64(4<<20 + 32<<10),
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	rounds := got["rounds"].([]any)
	if len(rounds) != 2 || rounds[1].(map[string]any)["duration_ms"] != 1.5 || rounds[1].(map[string]any)["final"] != true {
		t.Errorf("rounds = %v", rounds)
	}
	if _, ok := got["codec"]; ok {
		t.Error("codec figures present without a codec")
	}
}

func TestReportTable(t *testing.T) {
	s := sampleReport().String()
	for _, want := range []string{"pre-copy: total 41.5ms, downtime 1.5ms, 4.03 MiB sent", "2*", "round", "1024"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 4096: "4.00 KiB", 3 << 30: "3.00 GiB", 1536 << 20: "1.50 GiB"} {
		if got := livemig.FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestErrors(t *testing.T) {
	pe := &livemig.PageError{Op: "read", Page: 7, Err: livemig.ErrPageRange}
	if !errors.Is(pe, livemig.ErrPageRange) || !strings.Contains(pe.Error(), "page 7") {
		t.Fatal(pe)
	}
	se := &livemig.StreamError{Offset: 99, What: "frame header", Err: io.ErrUnexpectedEOF}
	if !errors.Is(se, io.ErrUnexpectedEOF) || !strings.Contains(se.Error(), "offset 99") {
		t.Fatal(se)
	}
}

func ExampleReport_String() {
	r := &livemig.Report{Algorithm: "pre-copy", TotalTime: 2 * time.Second, Downtime: 3 * time.Millisecond,
		BytesSent: 1 << 30, PagesSent: 262144, Converged: true, Verified: true,
		Rounds: []livemig.Round{{Index: 1, Duration: 2 * time.Second, DirtyPages: 262144, PagesSent: 262144, Bytes: 1 << 30}}}
	fmt.Print(r)
	// Output:
	// pre-copy: total 2s, downtime 3ms, 1.00 GiB sent, 262144 pages sent (0 re-sent, 0 zero), 1 rounds, converged true, verified true
	//   round  start  duration   dirty    sent  zero     bytes
	//       1     0s        2s  262144  262144     0  1.00 GiB
}

package transport_test

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

func ltElapsed(c *livemig.VirtualClock) time.Duration { return c.Now().Sub(livemig.VirtualEpoch) }

func TestSimLinkExactTimes(t *testing.T) {
	ca, cb := livemig.NewVirtualClock(), livemig.NewVirtualClock()
	a, b := transport.SimLink(transport.SimConfig{Bandwidth: 1e9, Latency: time.Millisecond}, ca, cb)
	defer a.Close()
	defer b.Close()

	// 125,000 bytes at 1 Gbit/s take 1 ms to transmit.
	if _, err := a.Write(make([]byte, 125000)); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(ca); got != time.Millisecond {
		t.Fatalf("sender at %v after one write, want 1ms", got)
	}
	// Two back-to-back writes queue: the second ends at 2 ms, then 3 ms.
	if _, err := a.Write(make([]byte, 125000)); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(ca); got != 2*time.Millisecond {
		t.Fatalf("sender at %v after two writes, want 2ms", got)
	}
	p := make([]byte, 125000)
	if _, err := io.ReadFull(b, p); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(cb); got != 2*time.Millisecond {
		t.Fatalf("receiver at %v after the first chunk, want 2ms", got)
	}
	// A partial read of the second chunk already moves to its arrival.
	if _, err := io.ReadFull(b, p[:10]); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(cb); got != 3*time.Millisecond {
		t.Fatalf("receiver at %v in the second chunk, want 3ms", got)
	}
	if _, err := io.ReadFull(b, p[10:]); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(cb); got != 3*time.Millisecond {
		t.Fatalf("receiver at %v after the second chunk, want 3ms", got)
	}

	// The sender idles until 10 ms: the link is free, the write starts then.
	ca.AdvanceTo(livemig.VirtualEpoch.Add(10 * time.Millisecond))
	if _, err := a.Write(make([]byte, 12500)); err != nil { // 100 µs
		t.Fatal(err)
	}
	if got := ltElapsed(ca); got != 10100*time.Microsecond {
		t.Fatalf("sender at %v, want 10.1ms", got)
	}
	if _, err := io.ReadFull(b, p[:12500]); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(cb); got != 11100*time.Microsecond {
		t.Fatalf("receiver at %v, want 11.1ms", got)
	}

	// The reverse direction has its own schedule and does not move a's
	// sending time.
	if _, err := b.Write(make([]byte, 1250)); err != nil { // 10 µs
		t.Fatal(err)
	}
	if got := ltElapsed(cb); got != 11110*time.Microsecond {
		t.Fatalf("b at %v after writing, want 11.11ms", got)
	}
	if _, err := io.ReadFull(a, p[:1250]); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(ca); got != 12110*time.Microsecond {
		t.Fatalf("a at %v after reading, want 12.11ms", got)
	}

	if s := a.Stats(); s != (transport.SimStats{Sent: 262500, Received: 1250}) {
		t.Fatalf("a stats %+v", s)
	}
	if s := b.Stats(); s != (transport.SimStats{Sent: 1250, Received: 262500}) {
		t.Fatalf("b stats %+v", s)
	}
}

// ltSimRun runs a fixed exchange over a simulated link with a small
// Buffer (so writers block in real time) and returns the virtual times each
// side saw, in order.
func ltSimRun(t *testing.T) []time.Duration {
	ca, cb := livemig.NewVirtualClock(), livemig.NewVirtualClock()
	a, b := transport.SimLink(transport.SimConfig{Bandwidth: 100e6, Latency: 250 * time.Microsecond, Buffer: 5000}, ca, cb)
	defer a.Close()
	defer b.Close()
	var (
		wg          sync.WaitGroup
		timesA      []time.Duration
		timesB      []time.Duration
		errA, errB  error
		sizes       = []int{1, 4096, 3000, 17, 9000, 4096, 4096, 50000, 2}
		total       = 0
		readPattern = []int{1000, 7, 4096, 30000, 1}
	)
	for _, n := range sizes {
		total += n
	}
	wg.Add(2)
	go func() { // a: write every size, then read b's answer
		defer wg.Done()
		for _, n := range sizes {
			if _, errA = a.Write(bytes.Repeat([]byte{byte(n)}, n)); errA != nil {
				return
			}
			timesA = append(timesA, ltElapsed(ca))
		}
		if _, errA = io.ReadFull(a, make([]byte, 100)); errA != nil {
			return
		}
		timesA = append(timesA, ltElapsed(ca))
	}()
	go func() { // b: read in other pieces, then answer
		defer wg.Done()
		buf := make([]byte, 30000)
		for got, i := 0, 0; got < total; i++ {
			n := min(readPattern[i%len(readPattern)], total-got)
			if _, errB = io.ReadFull(b, buf[:n]); errB != nil {
				return
			}
			got += n
			timesB = append(timesB, ltElapsed(cb))
		}
		if _, errB = b.Write(make([]byte, 100)); errB != nil {
			return
		}
		timesB = append(timesB, ltElapsed(cb))
	}()
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	return append(timesA, timesB...)
}

func TestSimLinkDeterministic(t *testing.T) {
	want := ltSimRun(t)
	for i := range 20 {
		if got := ltSimRun(t); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("run %d: times %v, first run %v", i, got, want)
		}
	}
	// 74,308 bytes at 100 Mbit/s end at 5,944.64 µs on a's clock.
	if got := want[8]; got != 5944640*time.Nanosecond {
		t.Fatalf("last write ended at %v, want 5.94464ms", got)
	}
}

func TestSimLinkInfiniteBandwidth(t *testing.T) {
	ca, cb := livemig.NewVirtualClock(), livemig.NewVirtualClock()
	a, b := transport.SimLink(transport.SimConfig{Latency: 5 * time.Millisecond}, ca, cb)
	defer a.Close()
	defer b.Close()
	if _, err := a.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(ca); got != 0 {
		t.Fatalf("sender at %v, want 0", got)
	}
	if _, err := io.ReadFull(b, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(cb); got != 5*time.Millisecond {
		t.Fatalf("receiver at %v, want 5ms", got)
	}
}

package transport_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// ltDrain reads b until it fails and reports the byte count.
func ltDrain(b io.Reader) <-chan int64 {
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, b)
		done <- n
	}()
	return done
}

func TestRateLimitVirtualClock(t *testing.T) {
	clk := livemig.NewVirtualClock()
	a, b := transport.Pipe(0)
	rl := transport.RateLimit(a, transport.RateConfig{BytesPerSec: 1 << 20, Burst: 64 << 10, Clock: clk})
	drained := ltDrain(b)
	// 1 MiB at 1 MiB/s with a full 64 KiB bucket: 15/16 s of waiting.
	if _, err := rl.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	want := 937500 * time.Microsecond
	if got := ltElapsed(clk); got < want-time.Microsecond || got > want+time.Microsecond {
		t.Fatalf("1 MiB took %v of virtual time, want %v", got, want)
	}
	// Faster now: the next 1 MiB at 4 MiB/s takes 1/4 s.
	rl.SetRate(4 << 20)
	if _, err := rl.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	want += 250 * time.Millisecond
	if got := ltElapsed(clk); got < want-time.Microsecond || got > want+time.Microsecond {
		t.Fatalf("after SetRate: %v of virtual time, want %v", got, want)
	}
	rl.Close()
	if n := <-drained; n != 2<<20 {
		t.Fatalf("reader got %d bytes", n)
	}
}

func TestRateLimitRealTime(t *testing.T) {
	a, b := transport.Pipe(0)
	rl := transport.RateLimit(a, transport.RateConfig{BytesPerSec: 8 << 20})
	drained := ltDrain(b)
	start := time.Now()
	if _, err := rl.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	rl.Close()
	<-drained
	// (1 MiB - 64 KiB burst) / 8 MiB/s = 117 ms at least.
	if el < 110*time.Millisecond {
		t.Fatalf("1 MiB at 8 MiB/s took %v, want >= 110ms", el)
	}
}

func TestRateLimitUnlimited(t *testing.T) {
	clk := livemig.NewVirtualClock()
	a, b := transport.Pipe(0)
	rl := transport.RateLimit(a, transport.RateConfig{Clock: clk})
	drained := ltDrain(b)
	if _, err := rl.Write(make([]byte, 10<<20)); err != nil {
		t.Fatal(err)
	}
	if got := ltElapsed(clk); got != 0 {
		t.Fatalf("unlimited write took %v of virtual time", got)
	}
	rl.Close()
	<-drained
}

func TestRateLimitCloseAndSetRateWake(t *testing.T) {
	for _, how := range []string{"Close", "SetRate"} {
		t.Run(how, func(t *testing.T) {
			a, b := transport.Pipe(0)
			defer b.Close()
			rl := transport.RateLimit(a, transport.RateConfig{BytesPerSec: 1, Burst: 1024})
			done := make(chan error, 1)
			go func() {
				_, err := rl.Write(make([]byte, 4096)) // 3072 s at 1 B/s
				done <- err
			}()
			// The first burst goes at once; the rest waits for tokens.
			if _, err := io.ReadFull(b, make([]byte, 1024)); err != nil {
				t.Fatal(err)
			}
			if how == "Close" {
				rl.Close()
				if err := <-done; !errors.Is(err, livemig.ErrClosed) {
					t.Fatalf("waiting Write after Close: %v, want ErrClosed", err)
				}
				return
			}
			rl.SetRate(0)
			if _, err := io.ReadFull(b, make([]byte, 3072)); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			rl.Close()
		})
	}
}

package transport

import (
	"context"
	"io"
	"math/rand/v2"
	"testing"
)

// TestFramingMatchesConn sends random mixes of page records of two kinds,
// controls, blobs longer than a frame and flushes on a Conn, and feeds the
// same to a Framing: the Framing's count, the Conn's Written and the bytes
// that reached the other end of the link are one number, for default and
// small batches.
func TestFramingMatchesConn(t *testing.T) {
	for _, cfg := range []Config{
		{Liveness: -1},
		{Liveness: -1, BatchBytes: 10000, MaxFrame: 20000},
	} {
		for seed := range uint64(4) {
			framingRun(t, cfg, seed)
		}
	}
}

func framingRun(t *testing.T, cfg Config, seed uint64) {
	t.Helper()
	ctx := context.Background()
	a, b := Pipe(1 << 16)
	conn := NewConn(a, cfg)
	// A Conn that counts nothing, counted by Metered: the same bytes, at
	// the defaults.
	var metered Conn
	if cfg.BatchBytes == 0 && cfg.MaxFrame == 0 {
		metered = Metered(struct{ Conn }{conn})
		conn = metered
	}
	got := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, b)
		got <- n
	}()
	maxFrame := cfg.MaxFrame
	if maxFrame == 0 {
		maxFrame = DefaultMaxFrame
	}
	fr := NewFraming(cfg.BatchBytes, maxFrame)
	rng := rand.New(rand.NewPCG(seed, 1))
	page := make([]byte, 8192)
	send := func(m Msg) {
		t.Helper()
		if err := conn.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for range 3000 {
		switch r := rng.IntN(100); {
		case r < 60:
			n := rng.IntN(8193)
			send(Msg{Kind: kindPage, Page: uint64(rng.IntN(1000)), Enc: EncLZ4, Data: page[:n]})
			fr.Page(kindPage, n)
		case r < 75:
			send(Msg{Kind: testRecords, Page: 1, Enc: EncZero})
			fr.Page(testRecords, 0)
		case r < 85:
			n := rng.IntN(64)
			send(Msg{Kind: kindEndRound, Data: page[:n]})
			fr.Control(n, maxFrame)
		case r < 87:
			blob := make([]byte, rng.IntN(3*maxFrame))
			send(Msg{Kind: kindState, Data: blob})
			fr.Control(len(blob), maxFrame)
		default:
			if err := conn.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			fr.Flush()
		}
	}
	if err := conn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	fr.Flush()
	w, ok := Written(conn)
	if !ok {
		t.Fatal("a Conn of this package is no Meter")
	}
	if metered != nil {
		t.Logf("seed %d: Metered counts %d bytes", seed, w)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	n := <-got
	if w != fr.Written() || uint64(n) != w {
		t.Fatalf("batch %d seed %d: Framing counts %d bytes, the Conn wrote %d, the link carried %d",
			cfg.BatchBytes, seed, fr.Written(), w, n)
	}
}

package postcopy

import (
	"testing"

	"github.com/livemig/livemig/transport"
)

func TestPrepager(t *testing.T) {
	type step struct {
		last       uint64
		dir, count int
	}
	cases := []struct {
		name  string
		base  int
		pages uint64
		steps []step
	}{
		{"none", 0, 1000, []step{{10, 1, 0}, {11, 1, 0}, {5, -1, 0}}},
		{"forward doubles to 8x", 4, 1000, []step{
			{10, 1, 4}, {14, 1, 8}, {20, 1, 16}, {30, 1, 32}, {40, 1, 32}, {50, 1, 32},
		}},
		{"a jump resets", 4, 1000, []step{{10, 1, 4}, {14, 1, 8}, {500, 1, 4}}},
		{"turning resets", 4, 1000, []step{{100, 1, 4}, {104, 1, 8}, {100, -1, 4}, {96, -1, 8}}},
		{"same page keeps the window", 4, 1000, []step{{100, 1, 4}, {100, 1, 4}, {104, 1, 8}}},
		{"clipped at the end", 4, 100, []step{{97, 1, 2}, {99, 1, 0}}},
		{"clipped at the start", 4, 100, []step{{50, 1, 4}, {2, -1, 2}, {0, -1, 0}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPrepager(c.base)
			for i, s := range c.steps {
				dir, n := p.next(s.last, c.pages)
				if dir != s.dir || n != s.count {
					t.Fatalf("step %d (page %d): dir %d count %d, want %d %d", i, s.last, dir, n, s.dir, s.count)
				}
			}
		})
	}
}

func TestDiscardSize(t *testing.T) {
	words := make([]uint64, 3*transport.MaxBitmapWords)
	if n := discardSize(words); n != 0 {
		t.Fatalf("no stale page: %d bytes", n)
	}
	// A chunk is a control frame: the framing, page and argument, words.
	frame := transport.FrameOverhead + 16
	words[5] = 1 // one word in the first chunk
	if n, want := discardSize(words), frame+8; n != want {
		t.Fatalf("one page: %d bytes, want %d", n, want)
	}
	words[9] = 1 << 63                    // the first chunk now spans words 5..9
	words[2*transport.MaxBitmapWords] = 1 // and the third chunk holds one word
	if n, want := discardSize(words), 2*frame+5*8+8; n != want {
		t.Fatalf("two chunks: %d bytes, want %d", n, want)
	}
}

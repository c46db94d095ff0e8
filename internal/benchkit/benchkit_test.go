package benchkit

import (
	"testing"
	"time"
)

// TestRace: every contender runs the same number of batches, enough for
// b.N ops, each goes first in some round, and each one's fastest batch
// comes back.
func TestRace(t *testing.T) {
	const ops = 1 << 20
	var runs [3]int
	var firsts [3]int
	var best []time.Duration
	var n int
	testing.Benchmark(func(b *testing.B) {
		runs, firsts = [3]int{}, [3]int{}
		var cs []Contender
		for j := range 3 {
			cs = append(cs, Contender{Name: string(rune('a' + j)), Batch: func() {
				if runs[0]+runs[1]+runs[2] == 3*min(runs[0], runs[1], runs[2]) {
					firsts[j]++ // the first batch of a round
				}
				runs[j]++
			}})
		}
		best = Race(b, ops, 8, cs)
		n = b.N
	})
	want := max(1, (n+ops-1)/ops)
	t.Logf("b.N %d: %d rounds", n, want)
	for j := range 3 {
		if runs[j] != want || best[j] <= 0 {
			t.Fatalf("b.N %d: contender %d ran %d batches (want %d), best %v", n, j, runs[j], want, best[j])
		}
		if want >= 3 && firsts[j] == 0 {
			t.Fatalf("contender %d never went first in %d rounds", j, want)
		}
	}
}

func TestRawTCPCopy(t *testing.T) {
	if d := RawTCPCopy(t, 1<<20+3); d <= 0 {
		t.Fatalf("took %v", d)
	}
	if g := GBps(2e9, time.Second); g != 2 {
		t.Fatalf("GBps = %v", g)
	}
}

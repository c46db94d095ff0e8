package faultmem

import (
	"testing"
	"time"
)

func TestLatenciesSmall(t *testing.T) {
	var l latencies
	if n, p50, p99, m := l.stats(); n != 0 || p50 != 0 || p99 != 0 || m != 0 {
		t.Fatalf("empty stats = %d %v %v %v", n, p50, p99, m)
	}
	for _, d := range []time.Duration{5, 1, 4, 2, 3} {
		l.add(d)
	}
	if n, p50, p99, m := l.stats(); n != 5 || p50 != 3 || p99 != 5 || m != 5 {
		t.Fatalf("stats = %d %v %v %v, want 5 3 5 5", n, p50, p99, m)
	}
}

// TestLatenciesReservoir: past the reservoir's size the count and the
// maximum stay exact and the percentiles stay close to the population's.
func TestLatenciesReservoir(t *testing.T) {
	var l latencies
	const total = 100000
	for i := range total {
		l.add(time.Duration((i*7919)%total + 1)) // a permutation of 1..total
	}
	n, p50, p99, m := l.stats()
	if n != total || m != total {
		t.Fatalf("n %d max %v, want %d and %d", n, m, total, total)
	}
	if p50 < total*45/100 || p50 > total*55/100 {
		t.Errorf("p50 = %v, want about %d", p50, total/2)
	}
	if p99 < total*97/100 {
		t.Errorf("p99 = %v, want about %d", p99, total*99/100)
	}
}

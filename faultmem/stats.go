package faultmem

import (
	"slices"
	"time"
)

// reservoirSize is how many fault service times a Region keeps to compute
// percentiles (a uniform sample of all of them).
const reservoirSize = 1024

// latencies is a fixed-size uniform sample of durations (reservoir
// sampling, Vitter's algorithm R) with an exact count and maximum. The zero
// value is empty. Not safe for concurrent use.
type latencies struct {
	n       uint64
	max     time.Duration
	rng     uint64 // xorshift64 state; 0 means unseeded
	samples [reservoirSize]time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.n++
	l.max = max(l.max, d)
	if l.n <= reservoirSize {
		l.samples[l.n-1] = d
		return
	}
	if l.rng == 0 {
		l.rng = 0x9E3779B97F4A7C15 // fixed seed: repeatable sampling
	}
	l.rng ^= l.rng << 13
	l.rng ^= l.rng >> 7
	l.rng ^= l.rng << 17
	if j := l.rng % l.n; j < reservoirSize {
		l.samples[j] = d
	}
}

// stats returns the count, the 50th and 99th percentiles of the sample
// (nearest rank) and the maximum.
func (l *latencies) stats() (n uint64, p50, p99, maxd time.Duration) {
	k := int(min(l.n, reservoirSize))
	if k == 0 {
		return 0, 0, 0, 0
	}
	s := make([]time.Duration, k)
	copy(s, l.samples[:k])
	slices.Sort(s)
	rank := func(q float64) time.Duration {
		i := int(q*float64(k)+0.999999) - 1
		return s[max(0, min(i, k-1))]
	}
	return l.n, rank(0.50), rank(0.99), l.max
}

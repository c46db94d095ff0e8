package precopy

import (
	"testing"
	"time"
)

const ps = 4096

func facts(round int, sentPages, dirty uint64, d time.Duration) RoundFacts {
	return RoundFacts{Round: round, SentPages: sentPages, SentBytes: sentPages * ps, Duration: d, DirtyPages: dirty, PageSize: ps}
}

func TestPolicyDecide(t *testing.T) {
	// 1000 pages in 100 ms: 40.96 MB/s; 300 ms carries 3000 pages.
	tests := []struct {
		name      string
		cfg       Config
		history   []RoundFacts
		action    Action
		converged bool
		throttle  float64
	}{
		{"nothing left", Config{}, []RoundFacts{facts(1, 1000, 0, time.Second)}, Stop, true, 0},
		{"fits the target", Config{}, []RoundFacts{facts(1, 1000, 3000, 100*time.Millisecond)}, Stop, true, 0},
		{"just over the target", Config{}, []RoundFacts{facts(1, 1000, 3001, 100*time.Millisecond)}, Continue, false, 0},
		{"tighter target", Config{DowntimeTarget: 30 * time.Millisecond}, []RoundFacts{facts(1, 1000, 301, 100*time.Millisecond)}, Continue, false, 0},
		{"round limit stops anyway", Config{MaxRounds: 2}, []RoundFacts{
			facts(1, 100000, 50000, time.Second), facts(2, 50000, 40000, time.Second)}, Stop, false, 0},
		{"round limit aborts", Config{MaxRounds: 2, OnNonConvergence: Abort}, []RoundFacts{
			facts(1, 100000, 50000, time.Second), facts(2, 50000, 40000, time.Second)}, Fail, false, 0},
		{"shrinking goes on", Config{}, []RoundFacts{
			facts(1, 100000, 90000, time.Second), facts(2, 90000, 80000, time.Second), facts(3, 80000, 70000, time.Second),
			facts(4, 70000, 60000, time.Second)}, Continue, false, 0},
		{"three stalls stop", Config{}, []RoundFacts{
			facts(1, 100000, 100000, time.Second), facts(2, 100000, 100000, time.Second), facts(3, 100000, 120000, time.Second)}, Stop, false, 0},
		{"a shrinking round resets the stalls", Config{}, []RoundFacts{
			facts(1, 100000, 100000, time.Second), facts(2, 100000, 100000, time.Second), facts(3, 100000, 89000, time.Second),
			facts(4, 89000, 95000, time.Second)}, Continue, false, 0},
		{"shrinking by less than MinShrink is a stall", Config{}, []RoundFacts{
			facts(1, 100000, 95000, time.Second), facts(2, 95000, 90000, time.Second), facts(3, 90000, 85000, time.Second)}, Stop, false, 0},
		{"a smaller MinShrink accepts slow progress", Config{MinShrink: 0.01}, []RoundFacts{
			facts(1, 100000, 95000, time.Second), facts(2, 95000, 90000, time.Second), facts(3, 90000, 85000, time.Second)}, Continue, false, 0},
		{"three stalls abort", Config{OnNonConvergence: Abort}, []RoundFacts{
			facts(1, 100000, 100000, time.Second), facts(2, 100000, 100000, time.Second), facts(3, 100000, 120000, time.Second)}, Fail, false, 0},
		{"throttle on the second strike", Config{OnNonConvergence: Throttle}, []RoundFacts{
			facts(1, 100000, 60000, time.Second), facts(2, 60000, 50000, time.Second)}, Continue, false, 0.2},
		{"one strike is not enough", Config{OnNonConvergence: Throttle}, []RoundFacts{
			facts(1, 100000, 60000, time.Second)}, Continue, false, 0},
		{"throttle steps by ten", Config{OnNonConvergence: Throttle}, []RoundFacts{
			facts(1, 100000, 60000, time.Second), facts(2, 60000, 50000, time.Second),
			facts(3, 50000, 45000, time.Second), facts(4, 45000, 40000, time.Second)}, Continue, false, 0.3},
		{"throttle stops at the round limit", Config{OnNonConvergence: Throttle, MaxRounds: 4}, []RoundFacts{
			facts(1, 100000, 100000, time.Second), facts(2, 100000, 100000, time.Second),
			facts(3, 100000, 100000, time.Second), facts(4, 100000, 100000, time.Second)}, Stop, false, 0.3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPolicy(tc.cfg)
			var d Decision
			for i, f := range tc.history {
				d = p.Decide(f)
				if i < len(tc.history)-1 && d.Action != Continue {
					t.Fatalf("round %d: %v (%s), want continue before the last round", f.Round, d.Action, d.Reason)
				}
			}
			if d.Action != tc.action || d.Converged != tc.converged {
				t.Fatalf("got %v converged=%v (%s), want %v converged=%v", d.Action, d.Converged, d.Reason, tc.action, tc.converged)
			}
			if got := p.Throttle(); got < tc.throttle-1e-9 || got > tc.throttle+1e-9 {
				t.Fatalf("throttle %v, want %v", got, tc.throttle)
			}
		})
	}
}

// Deferred pages stay dirty on purpose: a round that planned 100,000 pages,
// sent 40,000 and deferred the rest, and left 70,000 dirty, shrank the dirty
// set by 30 % and is no stall, though it left more dirty than it sent.
func TestPolicyCountsPlannedPages(t *testing.T) {
	p := NewPolicy(Config{StallRounds: 1})
	f := facts(2, 40000, 70000, time.Second)
	f.Planned = 100000
	if d := p.Decide(f); d.Action != Continue {
		t.Fatalf("%v (%s), want continue", d.Action, d.Reason)
	}
	f.Planned = 0 // without Planned, the sent pages are the measure: a stall
	if d := p.Decide(f); d.Action != Stop {
		t.Fatalf("%v (%s), want stop", d.Action, d.Reason)
	}
}

func TestPolicyThrottleCaps(t *testing.T) {
	p := NewPolicy(Config{OnNonConvergence: Throttle, MaxRounds: 1000})
	for r := 1; r < 100; r++ {
		p.Decide(facts(r, 100000, 100000, time.Second))
	}
	if got := p.Throttle(); got != 0.99 {
		t.Fatalf("throttle %v, want the 0.99 cap", got)
	}
}

func TestPolicyExpectedDowntime(t *testing.T) {
	p := NewPolicy(Config{})
	d := p.Decide(facts(1, 1000, 6000, 100*time.Millisecond))
	if d.ExpectedDowntime != 600*time.Millisecond {
		t.Fatalf("expected downtime %v, want 600ms", d.ExpectedDowntime)
	}
	if d.Bandwidth != 1000*ps*10 {
		t.Fatalf("bandwidth %v", d.Bandwidth)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{DowntimeTarget: -1}, {MaxRounds: -1}, {OnNonConvergence: 7}, {ThrottleMax: 1.5},
	} {
		c.setDefaults()
		if c.validate() == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
	var c Config
	c.setDefaults()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
}

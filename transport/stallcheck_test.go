package transport

import (
	"errors"
	"testing"
	"time"
)

// The watcher's decisions, tick by tick at live/4, without a clock.
func TestStallCheck(t *testing.T) {
	const live = time.Second
	t0 := time.Unix(0, 0)
	type step struct {
		p     progress
		beat  bool
		stall bool
	}
	cases := []struct {
		name  string
		steps []step // at t0 + (i+1)·live/4
	}{
		{"quiet and idle: heartbeats, no stall", []step{
			{progress{}, true, false}, {progress{}, true, false}, {progress{}, true, false},
			{progress{}, true, false}, {progress{}, true, false}, {progress{}, true, false},
		}},
		{"a waiting Recv with no byte for live", []step{
			{progress{reading: true}, true, false}, {progress{reading: true}, true, false},
			{progress{reading: true}, true, false}, {progress{reading: true}, false, true},
		}},
		{"bytes keep a waiting Recv alive", []step{
			{progress{reads: 1, reading: true}, true, false}, {progress{reads: 2, reading: true}, true, false},
			{progress{reads: 3, reading: true}, true, false}, {progress{reads: 4, reading: true}, true, false},
			{progress{reads: 5, reading: true}, true, false},
		}},
		{"a write blocked for live, nothing coming in", []step{
			{progress{writing: true}, false, false}, {progress{writing: true}, false, false},
			{progress{writing: true}, false, false}, {progress{writing: true}, false, true},
		}},
		{"a write blocked while bytes come in is no stall", []step{
			{progress{writing: true, reads: 1}, false, false}, {progress{writing: true, reads: 2}, false, false},
			{progress{writing: true, reads: 3}, false, false}, {progress{writing: true, reads: 4}, false, false},
			{progress{writing: true, reads: 5}, false, false},
		}},
		{"a write blocked for live after the peer's end, though bytes came before", []step{
			{progress{writing: true, reads: 1}, false, false}, {progress{writing: true, reads: 2}, false, false},
			{progress{writing: true, reads: 3, ended: true}, false, false}, {progress{writing: true, reads: 3, ended: true}, false, true},
		}},
		{"the peer's end with no write under way is no stall", []step{
			{progress{reads: 1, ended: true}, true, false}, {progress{reads: 1, ended: true}, true, false},
			{progress{reads: 1, ended: true}, true, false}, {progress{reads: 1, ended: true}, true, false},
			{progress{reads: 1, ended: true}, true, false},
		}},
		{"writes that end are headway, and no beat is needed", []step{
			{progress{writes: 1, writing: true}, false, false}, {progress{writes: 2, writing: true}, false, false},
			{progress{writes: 3, writing: true}, false, false}, {progress{writes: 4, writing: true}, false, false},
			{progress{writes: 5}, false, false}, {progress{writes: 5}, true, false},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newStallCheck(live, t0, progress{})
			for i, s := range c.steps {
				beat, err := l.tick(t0.Add(time.Duration(i+1)*live/4), s.p)
				if stall := err != nil; stall != s.stall || beat != s.beat {
					t.Fatalf("tick %d (%+v): beat %v, err %v; want beat %v, stall %v", i+1, s.p, beat, err, s.beat, s.stall)
				}
				if err != nil && !errors.Is(err, ErrStalled) {
					t.Fatalf("tick %d: %v does not wrap ErrStalled", i+1, err)
				}
			}
		})
	}
}

package advisor

import (
	"testing"
	"time"

	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
)

// The adaptive engine's decision, table-tested: the Policy's end of the
// rounds first, then Adapt's switch where pre-copy will not converge, acted
// on only as far as the pipeline and the VM allow.
func TestAdaptiveDecide(t *testing.T) {
	// A round that sent 1 GB in 1 s and left 240,000 pages dirty of the
	// 250,000 it set out to send: at 300 ms it will not converge.
	stuck := precopy.RoundFacts{Round: 1, SentBytes: 1e9, SentPages: 250000, Planned: 250000, Duration: time.Second,
		DirtyPages: 240000, PageSize: 4096}
	done := stuck
	done.DirtyPages = 1000 // 4 ms of the link: converged
	// Half the rate: even a fifth slower, the guest outruns the link.
	slow := stuck
	slow.SentBytes, slow.SentPages = 5e8, 125000
	link := Link{Bandwidth: 8e9}
	all := codec.Codecs{XBZRLE: true, LZ4: true}
	withCodecs := func(f precopy.RoundFacts, c codec.Codecs, th float64) precopy.RoundFacts {
		f.Codecs, f.Throttle = c, th
		return f
	}
	for _, tc := range []struct {
		name     string
		cfg      AdaptiveConfig
		facts    precopy.RoundFacts
		action   precopy.Action
		codecs   *codec.Codecs
		throttle float64
		sw       Switch
	}{
		{"converged", AdaptiveConfig{Link: link}, done, precopy.Stop, nil, 0, Stay},
		{"stuck: post-copy", AdaptiveConfig{Link: link, Codecs: all}, stuck, precopy.SwitchToPostCopy, nil, 0, SwitchPostCopy},
		{"stuck, no post-copy: codecs", AdaptiveConfig{Link: link, Objective: NoPostCopy, Codecs: all}, stuck,
			precopy.Continue, &all, 0, SwitchCompress},
		{"stuck, no post-copy, LZ4 only allowed", AdaptiveConfig{Link: link, Objective: NoPostCopy, Codecs: codec.Codecs{LZ4: true}}, stuck,
			precopy.Continue, &codec.Codecs{LZ4: true}, 0, SwitchCompress},
		{"stuck, codecs on: throttle", AdaptiveConfig{Link: link, Objective: NoPostCopy, Codecs: all, Throttle: true},
			withCodecs(stuck, all, 0), precopy.Continue, nil, 0.2, SwitchThrottle},
		{"stuck, throttled: more", AdaptiveConfig{Link: link, Objective: NoPostCopy, Codecs: all, Throttle: true},
			withCodecs(slow, all, 0.2), precopy.Continue, nil, 0.3, SwitchThrottle},
		{"stuck, nothing allowed", AdaptiveConfig{Link: link, Objective: NoPostCopy}, stuck, precopy.Continue, nil, 0, Stay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := NewAdaptive(tc.cfg)
			d := a.Decide(tc.facts)
			if d.Action != tc.action || (d.Codecs == nil) != (tc.codecs == nil) || (d.Codecs != nil && *d.Codecs != *tc.codecs) ||
				d.Throttle < tc.throttle-1e-9 || d.Throttle > tc.throttle+1e-9 {
				t.Fatalf("decision %v codecs %v throttle %v (%s); want %v %v %v", d.Action, d.Codecs, d.Throttle, d.Reason,
					tc.action, tc.codecs, tc.throttle)
			}
			if ds := a.Decisions(); len(ds) != 1 || ds[0].Switch != tc.sw || ds[0].Reason == "" || d.Reason == "" {
				t.Fatalf("decisions %+v, want one %v with its reason", ds, tc.sw)
			}
		})
	}
}

// At the round limit the Policy ends the rounds: by post-copy, or under
// NoPostCopy by stop-and-copy.
func TestAdaptiveLimit(t *testing.T) {
	f := precopy.RoundFacts{Round: 30, SentBytes: 1e9, SentPages: 250000, Planned: 250000, Duration: time.Second,
		DirtyPages: 240000, PageSize: 4096}
	if d := NewAdaptive(AdaptiveConfig{Link: Link{Bandwidth: 8e9}}).Decide(f); d.Action != precopy.SwitchToPostCopy {
		t.Fatalf("balanced at the limit: %v (%s)", d.Action, d.Reason)
	}
	if d := NewAdaptive(AdaptiveConfig{Link: Link{Bandwidth: 8e9}, Objective: NoPostCopy}).Decide(f); d.Action != precopy.Stop {
		t.Fatalf("no post-copy at the limit: %v (%s)", d.Action, d.Reason)
	}
}

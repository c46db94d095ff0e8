package advisor

import (
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
)

func TestAdapt(t *testing.T) {
	// A round of 1 Gbit/s: 30,000 pages in about a second.
	round := func(n int, dirty uint64) precopy.RoundFacts {
		return precopy.RoundFacts{Round: n, SentBytes: 30000 * (4096 + 13), SentPages: 30000, Planned: 30000,
			Duration: 30000 * (4096 + 13) * 8 * time.Second / 1e9, DirtyPages: dirty, PageSize: 4096}
	}
	gig := Link{Bandwidth: 1e9, Latency: 100 * time.Microsecond}
	small := synthetic(16384, 2, 0.002, false) // a hot set of a few words a write: XBZRLE's case
	whole := synthetic(65536, 1, 0.02, true)   // whole pages, faster than the link
	calm := synthetic(2048, 1, 0.0001, false)  // a small hot set: converges
	all := codec.Codecs{XBZRLE: true, LZ4: true}
	for _, c := range []struct {
		name   string
		pr     Progress
		p      Profile
		o      Objective
		want   Switch
		codecs codec.Codecs
	}{
		{"converging, with a profile", Progress{Round: round(2, 2500)}, calm, Balanced, Stay, codec.Codecs{}},
		{"converging, no profile", Progress{Round: round(2, 5000)}, Profile{}, Balanced, Stay, codec.Codecs{}},
		{"rest fits already", Progress{Round: round(3, 1000)}, whole, Balanced, Stay, codec.Codecs{}},
		{"stalling on small writes, never post-copy: compress", Progress{Round: round(3, 29000)}, small, NoPostCopy, SwitchCompress, all},
		{"stalling on small writes, LZ4 on: XBZRLE too", Progress{Round: round(3, 29000), Codecs: codec.Codecs{LZ4: true}}, small, NoPostCopy, SwitchCompress, all},
		{"stalling on whole pages: post-copy the rest", Progress{Round: round(3, 60000)}, whole, Balanced, SwitchPostCopy, codec.Codecs{}},
		{"stalling on whole pages, never post-copy, compressing: throttle", Progress{Round: round(3, 60000), Codecs: all}, whole, NoPostCopy, SwitchThrottle, codec.Codecs{}},
		{"no profile, stalling: post-copy", Progress{Round: round(3, 29500)}, Profile{}, Balanced, SwitchPostCopy, codec.Codecs{}},
		{"no profile, stalling, never post-copy: compress", Progress{Round: round(3, 29500)}, Profile{}, NoPostCopy, SwitchCompress, all},
		{"no profile, stalling, never post-copy, compressing: throttle", Progress{Round: round(3, 29500), Codecs: all}, Profile{}, NoPostCopy, SwitchThrottle, codec.Codecs{}},
		{"no measurable round", Progress{Round: precopy.RoundFacts{Round: 1, PageSize: 4096}}, whole, Balanced, Stay, codec.Codecs{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := Adapt(c.pr, c.p, gig, Target{Downtime: 100 * time.Millisecond}, c.o)
			if d.Switch != c.want || (c.want == SwitchCompress && d.Codecs != c.codecs) {
				t.Errorf("%v %v, want %v %v: %s", d.Switch, d.Codecs, c.want, c.codecs, d.Reason)
			}
			if (d.Switch == Stay) != d.Converges || d.Reason == "" {
				t.Errorf("converges %v with %v: %s", d.Converges, d.Switch, d.Reason)
			}
			if c.o == NoPostCopy && d.Switch == SwitchPostCopy {
				t.Errorf("never post-copy, switched to post-copy")
			}
			if d.Switch != Stay && !strings.Contains(d.Reason, "does not converge") {
				t.Errorf("reason %q", d.Reason)
			}
		})
	}
}

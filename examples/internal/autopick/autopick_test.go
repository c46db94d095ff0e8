package autopick

import (
	"testing"

	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
)

// Every algorithm the advisor can pick is one the commands run.
func TestOf(t *testing.T) {
	want := map[string]Pick{
		"precopy":              {Mode: "precopy"},
		"precopy-throttle":     {Mode: "precopy", Throttle: true},
		"precopy-xbzrle-lz4":   {Mode: "precopy", Codecs: codec.Codecs{XBZRLE: true, LZ4: true}},
		"postcopy-preempt-lz4": {Mode: "postcopy", LZ4: true},
		"hybrid":               {Mode: "hybrid"},
	}
	for _, alg := range advisor.Algorithms {
		p := Of(alg)
		switch p.Mode {
		case "precopy", "postcopy", "hybrid":
		default:
			t.Errorf("%s: mode %q", alg, p.Mode)
		}
		if w, ok := want[alg]; ok && (p.Mode != w.Mode || p.Codecs != w.Codecs || p.LZ4 != w.LZ4 || p.Throttle != w.Throttle) {
			t.Errorf("%s: %+v, want %+v", alg, p, w)
		}
	}
}

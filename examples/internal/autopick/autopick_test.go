package autopick

import (
	"errors"
	"testing"

	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
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

// The handshake says the mode, a destination under auto takes either, and
// two sides of different modes refuse each other.
func TestHelloCheckPeer(t *testing.T) {
	pre, post := Hello(8, "precopy", codec.Codecs{LZ4: true}), Hello(8, "hybrid", codec.Codecs{})
	if pre.Features&transport.FeatPostCopy != 0 || pre.Features&transport.FeatLZ4 == 0 || post.Features&transport.FeatPostCopy == 0 {
		t.Fatalf("features: precopy+lz4 %b, hybrid %b", pre.Features, post.Features)
	}
	auto := Hello(8, "auto", codec.Codecs{})
	if want := transport.FeatPostCopy | transport.FeatXBZRLE | transport.FeatLZ4; auto.Features&want != want {
		t.Fatalf("auto announces %b", auto.Features)
	}
	if err := CheckPeer("precopy", false, post); !errors.Is(err, ErrMode) {
		t.Errorf("pre-copy took a hybrid peer: %v", err)
	}
	if err := CheckPeer("postcopy", false, post); err != nil {
		t.Errorf("post-copy refused a hybrid peer: %v", err)
	}
	if CheckPeer("auto", true, pre) != nil || CheckPeer("auto", true, post) != nil {
		t.Error("auto refused a peer")
	}
}

package autopick

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/precopy"
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

// The adaptive engine's pieces the commands share: no interface holding a
// nil decider, the decision line after a round's end only, and the
// report's name by how the engine ended.
func TestAdaptiveHelpers(t *testing.T) {
	if d := AsDecider(nil); d != nil {
		t.Fatalf("AsDecider(nil) = %#v, want a nil interface", d)
	}
	a := Of("precopy").Decider(Config{Link: advisor.Link{Bandwidth: 8e9}}, false)
	if _, ok := DecisionLine(a, livemig.Event{Kind: livemig.RoundEnded, Round: 1}); ok {
		t.Error("a decision line before any decision")
	}
	a.Decide(precopy.RoundFacts{Round: 1, SentBytes: 1e9, SentPages: 250000, Planned: 250000, Duration: time.Second,
		DirtyPages: 1000, PageSize: 4096})
	if line, ok := DecisionLine(a, livemig.Event{Kind: livemig.RoundEnded, Round: 1}); !ok || !strings.Contains(line, "round  1  stay: ") {
		t.Errorf("decision line %q, %v", line, ok)
	}
	if _, ok := DecisionLine(a, livemig.Event{Kind: livemig.RoundStarted, Round: 2}); ok {
		t.Error("a decision line at a round's start")
	}
	for _, c := range []struct {
		rep      livemig.Report
		adaptive bool
		want     string
	}{
		{livemig.Report{}, false, "auto: precopy"},
		{livemig.Report{}, true, "auto: precopy (adaptive: pre-copy)"},
		{livemig.Report{Codec: &livemig.CodecStats{Codecs: "lz4"}}, true, "auto: precopy (adaptive: pre-copy, codecs lz4)"},
		{livemig.Report{PostCopy: &livemig.PostCopyStats{}, Rounds: make([]livemig.Round, 4)}, true,
			"auto: precopy (adaptive: post-copy for the rest after round 3)"},
	} {
		if got := Name("precopy", &c.rep, c.adaptive); got != c.want {
			t.Errorf("Name = %q, want %q", got, c.want)
		}
	}
}

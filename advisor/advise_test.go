package advisor

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig/codec"
)

const gibPages = 1 << 18 // 1 GiB of 4 KiB pages

// synthetic returns the profile of a 1 GiB guest whose hot pages are written
// hotRate times a second each and whose other pages coldRate times.
func synthetic(hot, hotRate, coldRate float64, whole bool) Profile {
	p := Profile{PageSize: 4096, Pages: gibPages, Window: 2 * time.Second, Interval: 20 * time.Millisecond,
		Classes:   []RateClass{{Pages: hot, Rate: hotRate}, {Pages: gibPages - hot, Rate: coldRate}},
		ZeroShare: 0.25, LZ4Bytes: 1900, DeltaBytes: 40, DeltaSamples: 256, Samples: 1024}
	p.DirtyRate = hot*hotRate + (gibPages-hot)*coldRate
	if whole {
		p.DeltaOverflow, p.DeltaBytes = 1, 0
	}
	return p
}

func TestAdvise(t *testing.T) {
	idle := synthetic(0, 0, 0, false)
	busyWords := synthetic(16384, 2, 0.01, false)      // 33,000 pages/s, a 64 MiB hot set, a few words a write
	busyWhole := synthetic(65536, 1, 0.02, true)       // 70,000 pages/s of whole pages on a 256 MiB hot set
	spread := synthetic(0, 0, 40000.0/gibPages, false) // 40,000 pages/s spread evenly
	for _, c := range []struct {
		name  string
		p     Profile
		link  Link
		t     Target
		o     Objective
		want  []string // one of
		meets bool
	}{
		{"idle guest, never post-copy", idle, Link{Bandwidth: 1e9}, Target{}, NoPostCopy, []string{"precopy", "precopy-throttle", "precopy-lz4", "precopy-xbzrle-lz4", "precopy-xbzrle"}, true},
		{"small deltas of a hot set on 1 Gbit/s: XBZRLE and LZ4", busyWords, Link{Bandwidth: 1e9, Latency: time.Millisecond}, Target{Downtime: 50 * time.Millisecond}, Balanced, []string{"precopy-xbzrle-lz4"}, true},
		{"small deltas on 10 Gbit/s: no LZ4", busyWords, Link{Bandwidth: 10e9, Latency: time.Millisecond}, Target{Downtime: 50 * time.Millisecond}, Balanced, []string{"precopy-xbzrle", "precopy"}, true},
		{"whole pages faster than the link, tight target: post-copy family", busyWhole, Link{Bandwidth: 300e6, Latency: 100 * time.Microsecond}, Target{Downtime: 50 * time.Millisecond}, Balanced, []string{"hybrid", "postcopy-preempt", "postcopy-preempt-lz4"}, true},
		{"the same, never post-copy: auto-converge", busyWhole, Link{Bandwidth: 300e6, Latency: 100 * time.Microsecond}, Target{Downtime: 50 * time.Millisecond}, NoPostCopy, []string{"precopy-throttle"}, true},
		{"minimal downtime", spread, Link{Bandwidth: 1e9}, Target{}, MinDowntime, []string{"postcopy-preempt", "postcopy-preempt-lz4", "hybrid"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			adv := Advise(c.p, c.link, c.t, c.o)
			if !contains(c.want, adv.Algorithm) {
				t.Errorf("advised %s, want one of %v; reasons:\n%s", adv.Algorithm, c.want, strings.Join(adv.Reasons, "\n"))
			}
			if adv.Predicted.MeetsTarget != c.meets {
				t.Errorf("meets target %v, want %v: %+v", adv.Predicted.MeetsTarget, c.meets, adv.Predicted)
			}
			if adv.Predicted.Algorithm != adv.Algorithm || adv.Candidates[0] != adv.Predicted || len(adv.Reasons) < 4 {
				t.Errorf("advice inconsistent: %+v", adv)
			}
			for i := 1; i < len(adv.Candidates); i++ {
				if Better(c.o, adv.Candidates[i], adv.Candidates[i-1]) {
					t.Errorf("candidate %d (%s) better than %d (%s)", i, adv.Candidates[i].Algorithm, i-1, adv.Candidates[i-1].Algorithm)
				}
			}
			if c.o == NoPostCopy {
				for _, p := range adv.Candidates {
					if IsPostCopy(p.Algorithm) {
						t.Errorf("no-postcopy offered %s", p.Algorithm)
					}
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// An idle guest's pre-copy is the bulk round and an empty last round: its
// time is the guest's bytes over the link.
func TestPredictIdle(t *testing.T) {
	p := synthetic(0, 0, 0, false)
	preds, err := Predict(p, Link{Bandwidth: 1e9, Cost: &codec.CostModel{}}, Target{})
	if err != nil {
		t.Fatal(err)
	}
	pc := preds[0]
	data := 0.75 * gibPages * (4096 + 13)
	zero := 0.25 * gibPages * 13
	want := time.Duration((data + zero) * 8 / 1e9 * float64(time.Second))
	if pc.Algorithm != "precopy" || !pc.Converged || pc.Rounds != 2 || pc.Total < want || pc.Total > want+10*time.Millisecond {
		t.Errorf("idle pre-copy %+v, want converged in 2 rounds, total about %v", pc, want)
	}
	for _, pr := range preds {
		if pr.FaultWait != 0 {
			t.Errorf("%s: an idle guest waits on no fault: %v", pr.Algorithm, pr.FaultWait)
		}
	}
}

// Faster dirtying never makes post-copy's wait shorter. (Pre-copy's figures
// are not monotone, in the model as in the engine: a guest that does not
// converge stalls sooner, a converging one stops wherever its rest first
// fits the target, and the state sent after may take it just past.)
func TestPredictMonotone(t *testing.T) {
	var last []Prediction
	for _, r := range []float64{0.5, 1, 2, 4, 8} {
		preds, err := Predict(synthetic(16384, r, 0.01, true), Link{Bandwidth: 1e9}, Target{})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range preds {
			if last != nil && IsPostCopy(p.Algorithm) && p.FaultWait < last[i].FaultWait {
				t.Errorf("%s at hot rate %v: fault wait %v < %v", p.Algorithm, r, p.FaultWait, last[i].FaultWait)
			}
		}
		last = preds
	}
}

func TestAdviseInvalid(t *testing.T) {
	adv := Advise(Profile{}, Link{Bandwidth: 1e9}, Target{}, Balanced)
	if adv.Algorithm != "" || len(adv.Reasons) != 1 {
		t.Errorf("empty profile: %+v", adv)
	}
	if _, err := Predict(synthetic(0, 0, 0, false), Link{}, Target{}); !errors.Is(err, ErrConfig) {
		t.Errorf("no bandwidth: %v", err)
	}
	if _, err := ParseObjective("fastest"); !errors.Is(err, ErrConfig) {
		t.Errorf("unknown objective: %v", err)
	}
}

func TestBetter(t *testing.T) {
	meet := func(total, wait, down time.Duration) Prediction {
		return Prediction{Total: total, FaultWait: wait, Downtime: down, MeetsTarget: true}
	}
	miss := func(total, down time.Duration) Prediction { return Prediction{Total: total, Downtime: down} }
	for _, c := range []struct {
		o    Objective
		a, b Prediction
		want bool
	}{
		{Balanced, meet(10*time.Second, 0, 200*time.Millisecond), miss(time.Second, 400*time.Millisecond), true},
		{Balanced, meet(5*time.Second, 3*time.Second, time.Millisecond), meet(7*time.Second, 0, 290*time.Millisecond), false},
		{Balanced, miss(9*time.Second, 400*time.Millisecond), miss(time.Second, 900*time.Millisecond), true},
		{MinDowntime, meet(9*time.Second, time.Second, time.Millisecond), meet(time.Second, 0, 2*time.Millisecond), true},
		{NoPostCopy, meet(time.Second, 0, time.Millisecond), meet(2*time.Second, 0, time.Millisecond), true},
	} {
		if got := Better(c.o, c.a, c.b); got != c.want {
			t.Errorf("%v: Better(%+v, %+v) = %v", c.o, c.a, c.b, got)
		}
	}
}

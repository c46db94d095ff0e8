package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/scenario"
)

// -advise -json prints one object with the algorithm, its predicted
// figures, the profile and the reasons; the algorithm is one compare runs.
func TestAdviseJSON(t *testing.T) {
	args := []string{"-q", "-json", "-advise", "-guest", "64MiB", "-workload", "hotcold", "-rate", "3000", "-hot", "4MiB", "-downtime", "50ms"}
	out := stableOutput(t, args)
	var obj map[string]any
	if err := json.Unmarshal(out, &obj); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"algorithm", "predicted", "profile", "reasons", "candidates"} {
		if _, ok := obj[k]; !ok {
			t.Errorf("advice lacks %q", k)
		}
	}
	pred, _ := obj["predicted"].(map[string]any)
	for _, k := range []string{"total_ms", "downtime_ms", "bytes_sent", "fault_wait_ms"} {
		if _, ok := pred[k]; !ok {
			t.Errorf("predicted lacks %q: %v", k, pred)
		}
	}
	alg, _ := obj["algorithm"].(string)
	if _, err := chooseAlgorithms(alg, registry(0, 30)); err != nil {
		t.Errorf("advised %q: %v", alg, err)
	}
	prof, _ := obj["profile"].(map[string]any)
	if prof["pages"].(float64) != 16384 || prof["dirty_rate_pps"].(float64) <= 0 {
		t.Errorf("profile %v", prof)
	}
	// Never post-copy.
	var np bytes.Buffer
	if err := run(context.Background(), append(args, "-objective", "no-postcopy"), &np, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(np.Bytes(), &obj); err != nil {
		t.Fatal(err)
	}
	if advisor.IsPostCopy(obj["algorithm"].(string)) {
		t.Errorf("no-postcopy advised %v", obj["algorithm"])
	}
}

func TestAdviseText(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-advise", "-guest", "64MiB", "-workload", "uniform", "-rate", "2000"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "advice for 64.00 MiB") || !strings.Contains(s, "chose ") {
		t.Errorf("output:\n%s", s)
	}
}

// On a small fixed set of scenarios of four regimes (a converging hot set,
// whole pages faster than the link, a video server on a fast link far
// away, an idle guest), the advice is within 10 % of the best algorithm by
// the default objective and its predictions of total time and bytes within
// 20 % (downtime: or 5 ms); and the adaptive engine is no worse than plain
// pre-copy by that objective. The full validation is compare -validate 40
// (docs/EVALUATION.md); this is its smoke test, small enough for go test.
func TestAdviceOnSmallSet(t *testing.T) {
	skipFigures(t)
	sc := func(name string, w scenario.Workload, bw float64, lat time.Duration) scenario.Scenario {
		return scenario.Scenario{Name: name, GuestBytes: 256 * mib, Workload: w, Bandwidth: bw, Latency: lat, Seed: 5}
	}
	cases := []validationCase{
		{sc("hotcold", scenario.Workload{Kind: "hotcold", Rate: 20000, HotBytes: 16 * mib, HotFraction: 0.9}, 1e9, 100*time.Microsecond), 100 * time.Millisecond},
		{sc("uniform-whole", scenario.Workload{Kind: "uniform", Rate: 30000, Whole: true}, 500e6, time.Millisecond), 50 * time.Millisecond},
		{sc("video", scenario.Workload{Kind: "video", Rate: 8000, BufferBytes: 64 * mib}, 10e9, 5*time.Millisecond), 300 * time.Millisecond},
		{sc("idle", scenario.Workload{Kind: "idle"}, 2e9, 100*time.Microsecond), 300 * time.Millisecond},
	}
	advs, rows, err := runCases(context.Background(), cases, 30, 2, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		na := len(advisor.Algorithms)
		s := score(c, advs[i], rows[i][:na])
		a, p := s.advised, s.advised.predicted
		ad := measureRow(c, "adaptive", rows[i][na])
		plain := s.runs[0] // advisor.Algorithms[0], plain pre-copy
		if !ad.ok || (better(plain, ad) && !within(ad, plain, 0)) {
			t.Errorf("%s: the adaptive engine (cost %.1f ms, downtime %.1f ms, %s) worse than plain pre-copy (%.1f ms, %.1f ms)",
				c.sc.Name, ad.cost, ad.downtime, ad.row.Error, plain.cost, plain.downtime)
		}
		t.Logf("%s: advised %s (cost %.1f ms, downtime %.1f ms), best %s (%.1f ms, %.1f ms); predicted total %v, downtime %v, %d bytes; measured %.1f ms, %.1f ms, %d bytes",
			c.sc.Name, a.alg, a.cost, a.downtime, s.best.alg, s.best.cost, s.best.downtime, p.Total, p.Downtime, p.BytesSent,
			a.row.TotalMS, a.row.DowntimeMS, a.row.BytesSent)
		if !s.hit {
			t.Errorf("%s: advised %s, not within 10 %% of %s", c.sc.Name, a.alg, s.best.alg)
		}
		if !s.total || !s.bytes || !s.down {
			t.Errorf("%s: %s's predictions off by more than 20 %%: total %v, bytes %v, downtime %v", c.sc.Name, a.alg, s.total, s.bytes, s.down)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/livemig/livemig/advisor"
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

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// stableOutput runs compare with args twice, at the default parallelism and
// one run at a time, and returns what it printed, failing unless both
// printed the same bytes.
func stableOutput(t *testing.T, args []string) []byte {
	t.Helper()
	var a, b bytes.Buffer
	if err := run(context.Background(), args, &a, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), append(args, "-parallel", "1"), &b, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Fatalf("two runs differ:\n%s\n%s", a.String(), b.String())
	}
	return a.Bytes()
}

// The JSON rows carry the documented keys, and two runs print the same bytes.
func TestJSONRowsAreExactAndStable(t *testing.T) {
	args := []string{"-q", "-json", "-guest", "64MiB", "-workload", "hotcold", "-rate", "3000", "-hot", "4MiB"}
	out := stableOutput(t, args)
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(strings.Split(defaultAlgorithms, ",")) {
		t.Fatalf("%d rows, want one per default algorithm", len(rows))
	}
	for _, k := range []string{"scenario", "algorithm", "total_ms", "downtime_ms", "bytes_sent", "pages_sent", "pages_resent", "rounds", "verified"} {
		if _, ok := rows[0][k]; !ok {
			t.Errorf("row lacks %q: %v", k, rows[0])
		}
	}
	if rows[0]["verified"] != true || rows[0]["pages_sent"].(float64) < 16384 {
		t.Fatalf("row %v", rows[0])
	}
	// Post-copy rows carry the fault figures; pre-copy rows do not.
	for _, r := range rows {
		_, faults := r["demand_faults"]
		_, wait := r["fault_wait_ms"]
		pc := strings.HasPrefix(r["algorithm"].(string), "post-copy") || r["algorithm"] == "hybrid"
		if faults != pc || wait != pc || r["verified"] != true {
			t.Errorf("row %v: demand_faults %v, fault_wait_ms %v", r, faults, wait)
		}
	}
}

func TestTable(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-q", "-guest", "32MiB", "-workload", "idle", "-algorithms", "precopy"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"scenario", "downtime", "idle", "pre-copy", "true", "faults", "fault wait"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-algorithms", "nosuch"}, {"-bandwidth", "fast"}, {"-guest", "lots"}, {"-workload", "bogus", "-guest", "1MiB"},
		{"-cost", "/nonexistent/cost.json"}, {"-cost-workers", "-1"},
	} {
		if err := run(context.Background(), append(args, "-q"), &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestParse(t *testing.T) {
	for s, want := range map[string]float64{"1Gbit": 1e9, "100Mbit/s": 1e8, "10G": 1e10, "2.5gbps": 2.5e9} {
		if got, err := parseBandwidth(s); err != nil || got != want {
			t.Errorf("parseBandwidth(%q) = %v, %v", s, got, err)
		}
	}
	for s, want := range map[string]uint64{"4GiB": 4 << 30, "512MiB": 512 << 20, "64K": 64 << 10, "4096": 4096} {
		if got, err := parseBytes(s); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %v, %v", s, got, err)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/internal/faultproxy"
	"github.com/livemig/livemig/internal/kvm"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
)

// kvmUsable says whether /dev/kvm works here; where it does not the test
// is skipped, or fails with LIVEMIG_REQUIRE_KVM=1.
func kvmUsable(t testing.TB) bool {
	t.Helper()
	sys, err := kvm.Open()
	if err == nil {
		sys.Close()
		return true
	}
	testkit.SkipOrFail(t, err, "/dev/kvm", "LIVEMIG_REQUIRE_KVM")
	return false
}

// uffdUsable says whether userfaultfd works here (skip or fail as above).
func uffdUsable(t testing.TB) bool {
	t.Helper()
	r, err := faultmem.New(livemig.DefaultPageSize, 1, faultmem.Config{})
	if err == nil {
		r.Close()
		return true
	}
	testkit.SkipOrFail(t, err, "userfaultfd", "LIVEMIG_REQUIRE_UFFD")
	return false
}

// useStandIn runs the rest of the test on the Go stand-in for KVM.
func useStandIn(t testing.TB) {
	t.Helper()
	old, oldProbe := newHardware, probeHardware
	newHardware, probeHardware = standIn, func() error { return nil }
	t.Cleanup(func() { newHardware, probeHardware = old, oldProbe })
}

// hardwareFor picks KVM where it works, else the stand-in (saying so);
// false: the test cannot run here (it was skipped).
func hardwareFor(t testing.TB, mode string) bool {
	t.Helper()
	if mode != "precopy" && !uffdUsable(t) {
		return false
	}
	if _, err := kvm.Open(); err != nil {
		t.Logf("no KVM here (%v): on the Go stand-in vCPU", err)
		useStandIn(t)
	}
	return true
}

// testOptions are small, quick options for mode and dirty log.
func testOptions(mode, dirtyLog string) options {
	return options{mode: mode, dirtyLog: dirtyLog, memMiB: 1, rate: 2000, rounds: 2, downtime: 300 * time.Millisecond,
		jsonOut: true, recoverWait: 3 * time.Second, liveness: time.Second, pauseTimeout: 5 * time.Second, timeout: time.Minute}
}

// sides is what both sides of a migration returned and said.
type sides struct {
	srcErr, dstErr error
	src, dst       bytes.Buffer
	res            destResult
	running        map[string]bool // where the guest's vCPU ran at each side's end
}

// migrate runs a destination and a source in this process over loopback
// TCP, through a fault proxy applying rules if any (it checks they fired).
func migrate(t testing.TB, o options, rules ...faultproxy.Rule) *sides {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := &sides{running: map[string]bool{}}
	var mu sync.Mutex
	o.observe = func(side string, running bool) {
		mu.Lock()
		out.running[side] = running
		mu.Unlock()
	}
	l, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	dst := o
	go func() { done <- serve(ctx, dst, l, &out.dst) }()
	o.connect = l.Addr().String()
	if rules != nil {
		o.connect = testkit.FaultProxy(t, o.connect, rules...)
	}
	out.srcErr = source(ctx, o, &out.src)
	if out.srcErr != nil {
		// A source that failed before it connected leaves the destination
		// waiting: give it a while, then end it.
		stop := time.AfterFunc(15*time.Second, cancel)
		defer stop.Stop()
	}
	out.dstErr = <-done
	lines := strings.Split(strings.TrimSpace(out.dst.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out.res); err != nil {
		t.Fatalf("the destination's last line is not JSON: %v: %q (source: %v; destination: %v)", err, out.dst.String(), out.srcErr, out.dstErr)
	}
	t.Logf("destination: %s", lines[len(lines)-1])
	return out
}

// wantMigrated checks a migration that succeeded: the guest runs at the
// destination alone, ran on there, its checksum intact.
func wantMigrated(t testing.TB, out *sides) {
	t.Helper()
	if out.srcErr != nil || out.dstErr != nil {
		t.Fatalf("source: %v; destination: %v", out.srcErr, out.dstErr)
	}
	r := out.res
	if !r.Resumed || !r.Complete || !r.ChecksumOK || r.CounterAfter <= r.CounterAtPause || r.CounterAtPause == 0 || r.BytesSent == 0 {
		t.Errorf("destination: %+v", r)
	}
	if out.running["source"] || !out.running["destination"] {
		t.Errorf("guest running at %v, want the destination alone", out.running)
	}
	var rep livemig.Report
	lines := strings.Split(strings.TrimSpace(out.src.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil || rep.BytesSent == 0 {
		t.Errorf("the source's report: %v: %q", err, out.src.String())
	}
}

// wantAtSource checks a migration that failed before the hand-over: the
// guest runs at the source alone and the destination did not resume it.
func wantAtSource(t testing.TB, out *sides) {
	t.Helper()
	if outcome.Status(out.srcErr) != outcome.ExitFailed || !strings.HasPrefix(outcome.LastLine(false, out.srcErr), "source: guest running HERE at the source") {
		t.Errorf("source: status %d: %v", outcome.Status(out.srcErr), out.srcErr)
	}
	if outcome.Status(out.dstErr) != outcome.ExitFailed || !strings.HasPrefix(outcome.LastLine(true, out.dstErr), "destination: guest NOT resumed here") {
		t.Errorf("destination: status %d: %v", outcome.Status(out.dstErr), out.dstErr)
	}
	if out.res.Resumed || !out.running["source"] || out.running["destination"] {
		t.Errorf("guest running at %v, resumed at the destination %v: want the source alone", out.running, out.res.Resumed)
	}
}

// The guest migrates live by each engine with each of KVM's dirty logs, and
// runs on at the destination with its checksum intact.
func TestMigrateKVM(t *testing.T) {
	for _, mode := range []string{"precopy", "postcopy", "hybrid"} {
		for _, log := range []string{"bitmap", "manual", "ring"} {
			t.Run(mode+"/"+log, func(t *testing.T) {
				if !kvmUsable(t) || (mode != "precopy" && !uffdUsable(t)) {
					return
				}
				wantMigrated(t, migrate(t, testOptions(mode, log)))
			})
		}
	}
}

// The same flows on the Go stand-in vCPU, which runs wherever userfaultfd
// does: the VMM's side of the migration without KVM.
func TestMigrateStandIn(t *testing.T) {
	for _, mode := range []string{"precopy", "postcopy", "hybrid"} {
		t.Run(mode, func(t *testing.T) {
			if mode != "precopy" && !uffdUsable(t) {
				return
			}
			useStandIn(t)
			wantMigrated(t, migrate(t, testOptions(mode, "bitmap")))
		})
	}
}

// -mode auto on both sides: the source profiles its guest through the
// dirty log, takes the advisor's pick and runs it, saying what and why;
// the destination follows from the source's hello. A slow link makes the
// balanced objective leave pre-copy (the guest dirties faster than the
// link drains), never-post-copy keeps to it: both picks migrate the guest.
func TestAuto(t *testing.T) {
	for _, c := range []struct {
		name, objective string
		bandwidth       float64
		postCopy        bool
	}{
		{"fast link", "balanced", 10e9, false},
		{"slow link, never post-copy", "no-postcopy", 20e6, false},
		{"slow link", "balanced", 20e6, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !hardwareFor(t, map[bool]string{false: "precopy", true: "postcopy"}[c.postCopy]) {
				return
			}
			o := testOptions("auto", "bitmap")
			o.auto, o.objective, o.linkBandwidth, o.linkLatency, o.profileWindow = true, c.objective, c.bandwidth, time.Millisecond, 200*time.Millisecond
			if err := o.check(); err != nil {
				t.Fatal(err)
			}
			out := migrate(t, o)
			wantMigrated(t, out)
			if !strings.Contains(out.res.Mode, "auto: ") {
				t.Errorf("destination's mode %q: not auto", out.res.Mode)
			}
			var rep livemig.Report
			if err := json.Unmarshal(lastLineOf(out.src.Bytes()), &rep); err != nil {
				t.Fatalf("source's report: %v", err)
			}
			if !strings.HasPrefix(rep.Algorithm, "auto: ") || len(rep.Algorithm) == len("auto: ") {
				t.Errorf("source's report names algorithm %q, not the pick", rep.Algorithm)
			}
			pc := rep.PostCopy != nil
			if c.objective == "no-postcopy" && pc {
				t.Errorf("never post-copy, yet the source ran post-copy or hybrid")
			}
			if pc != strings.Contains(out.res.Mode, "postcopy") {
				t.Errorf("source ran post-copy %v, destination %q", pc, out.res.Mode)
			}
			t.Logf("source ran post-copy %v; destination %s", pc, out.res.Mode)
		})
	}
}

// A link cut in each phase leaves the guest running at exactly one side:
// before the hand-over at the source (resumed there), after it at the
// destination (recovered by reconnecting), or, for post-copy without
// recovery, at the destination with part of its memory at the source,
// which keeps its guest paused and says so.
func TestCutLink(t *testing.T) {
	// start: inside the first frame after the hellos; rounds: before the
	// second batch of pages of the first round (a 1 MiB guest goes in
	// four batches of 256 KiB).
	first := faultproxy.Rule{Trigger: faultproxy.Trigger{AfterBytes: transport.HelloSize + 8}, Fault: faultproxy.Close}
	rounds := faultproxy.Rule{Trigger: faultproxy.Trigger{Kind: faultproxy.KindPage, Nth: 2}, Fault: faultproxy.Close}
	ready := faultproxy.Rule{Trigger: faultproxy.Trigger{Dir: faultproxy.DstToSrc, Kind: faultproxy.KindAck,
		Arg: faultproxy.ArgIs(faultproxy.AckReady)}, Fault: faultproxy.Close}
	// The destination's answer to the Commit lost: it resumed, the
	// source does not know.
	resumed := faultproxy.Rule{Trigger: faultproxy.Trigger{Dir: faultproxy.DstToSrc, Kind: faultproxy.KindAck,
		Arg: faultproxy.ArgIs(faultproxy.AckResumed)}, Fault: faultproxy.Close}
	push := faultproxy.Rule{Trigger: faultproxy.Trigger{Kind: faultproxy.KindPage, Since: faultproxy.KindCommit, Nth: 1},
		Fault: faultproxy.Close}
	// Hybrid may leave nothing to push (a round that finds nothing dirty
	// ends the pre-copy phase): cut right after its Commit instead, where
	// the push phase begins.
	committed := faultproxy.Rule{Trigger: faultproxy.Trigger{Kind: faultproxy.KindCommit, After: true}, Fault: faultproxy.Close}
	for _, c := range []struct {
		name, mode string
		rule       faultproxy.Rule
		noRecover  bool
		want       func(testing.TB, *sides)
	}{
		{"precopy/start", "precopy", first, false, wantAtSource},
		{"precopy/rounds", "precopy", rounds, false, wantAtSource},
		{"precopy/handover", "precopy", ready, false, wantAtSource},
		{"precopy/commit", "precopy", resumed, false, wantMigrated},
		{"precopy/commit/no-recover", "precopy", resumed, true, wantInDoubt},
		{"postcopy/start", "postcopy", first, false, wantAtSource},
		{"postcopy/handover", "postcopy", ready, false, wantAtSource},
		{"postcopy/push", "postcopy", push, false, wantMigrated},
		{"postcopy/push/no-recover", "postcopy", push, true, wantSplit},
		{"hybrid/rounds", "hybrid", rounds, false, wantAtSource},
		{"hybrid/handover", "hybrid", ready, false, wantAtSource},
		{"hybrid/after-commit", "hybrid", committed, false, wantMigrated},
		{"hybrid/after-commit/no-recover", "hybrid", committed, true, wantSplit},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !hardwareFor(t, c.mode) {
				return
			}
			o := testOptions(c.mode, "bitmap")
			o.noRecover = c.noRecover
			if c.rule.Since == faultproxy.KindCommit {
				o.rate = 0 // flat out: pages are left to push after the hand-over
			}
			c.want(t, migrate(t, o, c.rule))
		})
	}
}

// wantSplit checks a post-copy migration whose link was lost after the
// hand-over without recovery: the guest runs at the destination alone, the
// source keeps it paused with the memory still there, and both say so.
func wantSplit(t testing.TB, out *sides) {
	t.Helper()
	if outcome.Status(out.srcErr) != outcome.ExitSplit || !strings.HasPrefix(outcome.LastLine(false, out.srcErr), "source: guest running at the destination, part of its memory still here") {
		t.Errorf("source: status %d: %v", outcome.Status(out.srcErr), out.srcErr)
	}
	if outcome.Status(out.dstErr) != outcome.ExitSplit || !strings.HasPrefix(outcome.LastLine(true, out.dstErr), "destination: guest resumed HERE, part of its memory") {
		t.Errorf("destination: status %d: %v", outcome.Status(out.dstErr), out.dstErr)
	}
	if !out.res.Resumed || out.running["source"] || !out.running["destination"] {
		t.Errorf("guest running at %v, resumed at the destination %v: want the destination alone", out.running, out.res.Resumed)
	}
}

// wantInDoubt checks a pre-copy migration whose answer to the Commit was
// lost without recovery: the guest runs at the destination alone, the
// source keeps it paused, exits 3 and says the outcome is unknown.
func wantInDoubt(t testing.TB, out *sides) {
	t.Helper()
	if outcome.Status(out.srcErr) != outcome.ExitSplit || !errors.Is(out.srcErr, livemig.ErrInDoubt) ||
		!strings.HasPrefix(outcome.LastLine(false, out.srcErr), "source: guest PAUSED here, outcome unknown") {
		t.Errorf("source: status %d: %v", outcome.Status(out.srcErr), out.srcErr)
	}
	if outcome.Status(out.dstErr) != 0 || !out.res.Resumed || !out.res.ChecksumOK {
		t.Errorf("destination: status %d: %v, %+v", outcome.Status(out.dstErr), out.dstErr, out.res)
	}
	if out.running["source"] || !out.running["destination"] {
		t.Errorf("guest running at %v, want the destination alone", out.running)
	}
}

func TestGeometry(t *testing.T) {
	g, err := newGeometry(4)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.slots) != 2 || g.slots[1].gpa != g.slots[0].size+holeBytes || g.pages() != 1024 {
		t.Fatalf("%+v", g)
	}
	if g.params.A.Pages+g.params.B.Pages != 1024-3 {
		t.Errorf("data region of %d pages", g.params.A.Pages+g.params.B.Pages)
	}
	if err := g.checkLayout(g.stateLayout()); err != nil {
		t.Error(err)
	}
	other, _ := newGeometry(8)
	if err := g.checkLayout(other.stateLayout()); err == nil {
		t.Error("another guest's slots accepted")
	}
	for _, bad := range []int{0, -1, 2048} {
		if _, err := newGeometry(bad); err == nil {
			t.Errorf("-mem %d accepted", bad)
		}
	}
}

// Bad flags are usage errors, found before any work.
func TestCheck(t *testing.T) {
	good := testOptions("precopy", "bitmap")
	if err := good.check(); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(*options){
		"mode":          func(o *options) { o.mode = "copy" },
		"dirty-log":     func(o *options) { o.dirtyLog = "pml" },
		"mem":           func(o *options) { o.memMiB = 0 },
		"rate":          func(o *options) { o.rate = -1 },
		"push":          func(o *options) { o.pushBandwidth = -1 },
		"recover-wait":  func(o *options) { o.recoverWait = 0 },
		"pause-timeout": func(o *options) { o.pauseTimeout = 0 },
		"timeout":       func(o *options) { o.timeout = 0 },
		"liveness":      func(o *options) { o.liveness = -time.Second },
	} {
		o := good
		bad(&o)
		if err := o.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

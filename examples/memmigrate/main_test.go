package main

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/examples/internal/autopick"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/internal/faultproxy"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
)

// migrate runs a destination and a source of mode in this process over
// loopback TCP and returns their errors.
func migrate(t *testing.T, o options) (srcErr, dstErr error) {
	t.Helper()
	return migrateVia(t, o, nil)
}

// migrateVia is migrate with the source dialing through a fault proxy
// that applies rules, if any, and waits for them to fire.
func migrateVia(t *testing.T, o options, rules []faultproxy.Rule) (srcErr, dstErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pages, err := geometry(o)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := o.postCopy()
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	dst := o
	go func() { done <- serve(ctx, dst, l, pages, pc) }()
	o.connect = l.Addr().String()
	if rules != nil {
		o.connect = testkit.FaultProxy(t, o.connect, rules...)
	}
	srcErr = source(ctx, o)
	return srcErr, <-done
}

// Both ends of memmigrate, in one process: pre-copy, and post-copy and
// hybrid into userfaultfd memory whose writers run from the resume; and
// adaptive (pre-copy that hands off to post-copy when it does not
// converge) both ways: converging under the default target, handing off
// under one no round meets.
func TestMemmigrate(t *testing.T) {
	for _, mode := range []string{"precopy", "precopy-streams", "postcopy", "hybrid", "adaptive", "adaptive-stuck"} {
		t.Run(mode, func(t *testing.T) {
			if !strings.HasPrefix(mode, "precopy") && !uffdUsable(t) {
				return
			}
			o := options{sizeMiB: 16, writers: 2, rate: 5000, downtime: 300 * time.Millisecond, maxRounds: 30,
				policy: "stop", timeout: time.Minute, mode: mode, lz4: mode == "hybrid"}
			var streams atomic.Int64
			if mode == "precopy-streams" {
				o.mode, o.streams = "precopy", 3 // DialMulti; AcceptConn
				o.accepted = func(n int) { streams.Store(int64(n)) }
			}
			if mode == "adaptive" {
				// A target every round meets, however loaded the machine
				// (-race): pre-copy's end at a post-copy destination.
				o.downtime = time.Minute
			}
			if mode == "adaptive-stuck" {
				// One round, a target no round meets: not converged, so
				// the rest goes by post-copy.
				o.mode, o.downtime, o.maxRounds, o.rate = "adaptive", time.Nanosecond, 1, 20000
			}
			var rep *livemig.Report
			o.report = func(r *livemig.Report) { rep = r }
			if srcErr, dstErr := migrate(t, o); srcErr != nil || dstErr != nil {
				t.Fatalf("source: %v; destination: %v", srcErr, dstErr)
			}
			if rep == nil || !rep.Verified {
				t.Fatalf("source's report %v: want one, verified", rep)
			}
			switch mode {
			case "precopy-streams":
				if n := streams.Load(); n != 3 {
					t.Errorf("the destination accepted %d streams, want 3", n)
				}
			case "adaptive":
				if rep.PostCopy != nil {
					t.Errorf("adaptive with a target every round meets went on by post-copy: %v", rep)
				}
			case "adaptive-stuck":
				if rep.PostCopy == nil || rep.Algorithm != "hybrid" {
					t.Errorf("adaptive with a target no round meets ended by pre-copy: %v", rep)
				}
			}
		})
	}
	// The two sides must agree on the mode: a post-copy source and a
	// pre-copy destination refuse each other in the handshake.
	o := options{sizeMiB: 4, writers: 1, rate: 1000, downtime: 300 * time.Millisecond, maxRounds: 30, policy: "stop", mode: "postcopy"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	pre := o
	pre.mode = "precopy"
	go func() { done <- serve(ctx, pre, l, 1024, false) }()
	o.connect = l.Addr().String()
	if err, derr := source(ctx, o), <-done; err == nil || derr == nil || !strings.Contains(err.Error(), "-mode") ||
		!strings.Contains(derr.Error(), "-mode") {
		t.Fatalf("mismatched modes: source %v, destination %v", err, derr)
	}
}

// uffdUsable says whether userfaultfd works here; where it does not the
// test is skipped, or fails with LIVEMIG_REQUIRE_UFFD=1.
func uffdUsable(t *testing.T) bool {
	r, err := faultmem.New(livemig.DefaultPageSize, 1, faultmem.Config{})
	if err == nil {
		r.Close()
		return true
	}
	testkit.SkipOrFail(t, err, "userfaultfd", "LIVEMIG_REQUIRE_UFFD")
	return false
}

func TestModes(t *testing.T) {
	for mode, want := range map[string]bool{"precopy": false, "postcopy": true, "hybrid": true, "adaptive": true} {
		if pc, err := (options{mode: mode}).postCopy(); err != nil || pc != want {
			t.Errorf("%s: %v %v", mode, pc, err)
		}
	}
	if _, err := (options{mode: "copy"}).postCopy(); err == nil {
		t.Error("unknown mode accepted")
	}
}

// A cut just after the Commit is recovered by default in every mode: the
// source comes back to the listener the destination keeps open, and the
// migration completes. With -no-recover the same cut leaves a pre-copy
// source in doubt (status 3, guest paused) and a post-copy guest split
// (status 3 on both sides), and each side says so.
func TestRecoverAfterCommit(t *testing.T) {
	// Post-copy: cut once the Commit is through (the push follows).
	// Pre-copy: cut as the destination's AckResumed reaches the proxy, so
	// that the answer is lost for certain (a cut after forwarding the
	// Commit races the answer).
	cutPost := []faultproxy.Rule{{Trigger: faultproxy.Trigger{Kind: faultproxy.KindCommit, After: true}, Fault: faultproxy.Close}}
	cutPre := []faultproxy.Rule{{Trigger: faultproxy.Trigger{Dir: faultproxy.DstToSrc, Kind: faultproxy.KindAck,
		Arg: faultproxy.ArgIs(faultproxy.AckResumed)}, Fault: faultproxy.Close}}
	for _, mode := range []string{"precopy", "postcopy", "hybrid"} {
		cut := cutPost
		if mode == "precopy" {
			cut = cutPre
		}
		for _, noRecover := range []bool{false, true} {
			name := mode
			if noRecover {
				name += "/no-recover"
			}
			t.Run(name, func(t *testing.T) {
				if mode != "precopy" && !uffdUsable(t) {
					return
				}
				o := options{sizeMiB: 16, writers: 2, rate: 5000, downtime: 300 * time.Millisecond, maxRounds: 30,
					policy: "stop", timeout: time.Minute, mode: mode, liveness: time.Second, recoverWait: 5 * time.Second,
					noRecover: noRecover}
				srcErr, dstErr := migrateVia(t, o, cut)
				if !noRecover {
					if srcErr != nil || dstErr != nil {
						t.Fatalf("source: %v; destination: %v", srcErr, dstErr)
					}
					return
				}
				var se *outcome.Error
				if outcome.Status(srcErr) != outcome.ExitSplit || !errors.As(srcErr, &se) {
					t.Fatalf("source: status %d: %v", outcome.Status(srcErr), srcErr)
				}
				if mode == "precopy" {
					if !strings.HasPrefix(se.Where, "guest PAUSED here, outcome unknown (session ") ||
						!errors.Is(srcErr, livemig.ErrInDoubt) {
						t.Errorf("source: %v", srcErr)
					}
					// The Commit got there: the destination resumed.
					if dstErr != nil {
						t.Errorf("destination: %v", dstErr)
					}
					return
				}
				if !strings.HasPrefix(se.Where, "guest running at the destination, part of its memory still here only (post-copy link lost: ") {
					t.Errorf("source: %v", srcErr)
				}
				if outcome.Status(dstErr) != outcome.ExitSplit || !strings.HasPrefix(dstErr.Error(), "guest resumed HERE, part of its memory") {
					t.Errorf("destination: status %d: %v", outcome.Status(dstErr), dstErr)
				}
			})
		}
	}
}

// A failure before the hand-over says the guest runs at the source and
// not at the destination.
func TestFailBeforeHandover(t *testing.T) {
	cut := []faultproxy.Rule{{Trigger: faultproxy.Trigger{Kind: faultproxy.KindPage, Nth: 20}, Fault: faultproxy.Close}}
	o := options{sizeMiB: 16, writers: 2, rate: 5000, downtime: 300 * time.Millisecond, maxRounds: 30,
		policy: "stop", timeout: time.Minute, mode: "precopy", liveness: time.Second, recoverWait: 2 * time.Second}
	srcErr, dstErr := migrateVia(t, o, cut)
	var se *outcome.Error
	if outcome.Status(srcErr) != outcome.ExitFailed || !errors.As(srcErr, &se) || !strings.HasPrefix(se.Where, "guest running HERE at the source (migration failed before the hand-over: ") {
		t.Errorf("source: status %d: %v", outcome.Status(srcErr), srcErr)
	}
	if outcome.Status(dstErr) != outcome.ExitFailed || !strings.HasPrefix(dstErr.Error(), "guest NOT resumed here: ") {
		t.Errorf("destination: status %d: %v", outcome.Status(dstErr), dstErr)
	}
}

// Bad flags are usage errors, found before any work (main exits 2 on them).
func TestCheck(t *testing.T) {
	good := options{listen: "127.0.0.1:0", sizeMiB: 4, policy: "stop", mode: "precopy", recoverWait: time.Second, timeout: time.Minute}
	if err := good.check(); err != nil {
		t.Fatalf("good flags: %v", err)
	}
	for name, bad := range map[string]func(*options){
		"mode":         func(o *options) { o.mode = "copy" },
		"policy":       func(o *options) { o.policy = "wait" },
		"size":         func(o *options) { o.sizeMiB = 0 },
		"tls partial":  func(o *options) { o.cert = "cert.pem" },
		"tls missing":  func(o *options) { o.cert, o.key, o.ca = "/nonexistent/c", "/nonexistent/k", "/nonexistent/ca" },
		"recover-wait": func(o *options) { o.recoverWait = 0 },
		"timeout":      func(o *options) { o.timeout = 0 },
		"liveness":     func(o *options) { o.liveness = -time.Second },
		"streams mode": func(o *options) { o.mode, o.streams = "hybrid", 2 },
		"streams":      func(o *options) { o.streams = transport.MaxStreams + 1 },
	} {
		o := good
		bad(&o)
		if err := o.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// An outage's clock gives up -recover-wait after the first redial, unless
// a reconnection ends it first; each outage has its own clock.
func TestOutage(t *testing.T) {
	ctx, giveUp := context.WithCancelCause(context.Background())
	defer giveUp(nil)
	// A clock too long to run out while the test looks: begin twice is one
	// outage, one timer; a reconnection stops it and starts a new outage.
	u := &outage{wait: time.Hour, giveUp: giveUp}
	u.begin()
	first, gen := u.timer, u.gen
	u.begin() // the same outage: its clock goes on
	if u.timer != first || first == nil {
		t.Fatal("a second begin in one outage started another clock")
	}
	u.end() // reconnected
	if u.timer != nil || u.gen != gen+1 {
		t.Fatalf("after the reconnection: timer %v, outage %d (was %d)", u.timer, u.gen, gen)
	}
	if first.Stop() {
		t.Fatal("the reconnection left the outage's clock running")
	}
	// The next outage's clock runs out: the migration is given up.
	u.wait = 50 * time.Millisecond
	u.begin()
	select {
	case <-ctx.Done():
		if !strings.Contains(context.Cause(ctx).Error(), "no reconnection within -recover-wait 50ms") {
			t.Errorf("cause: %v", context.Cause(ctx))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the outage never ran out")
	}
}

// -mode auto: the source profiles its guest, takes the advisor's pick and
// migrates by it; the destination, also -mode auto, follows. Where
// userfaultfd is missing the objective keeps to pre-copy. Each case's
// advice is checked to be what applyPick ran.
func TestMemmigrateAuto(t *testing.T) {
	for _, c := range []struct {
		name      string
		rate      float64
		bandwidth float64
		objective string
	}{
		{"light guest, fast link", 2000, 10e9, "balanced"},
		{"busy guest, slow link, never post-copy", 50000, 300e6, "no-postcopy"},
		{"busy guest, slow link", 50000, 300e6, "balanced"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := options{sizeMiB: 16, writers: 2, rate: c.rate, downtime: 50 * time.Millisecond, maxRounds: 30,
				policy: "stop", timeout: time.Minute, mode: "auto", auto: true, objective: c.objective,
				linkBandwidth: c.bandwidth, linkLatency: 100 * time.Microsecond, profileWindow: 200 * time.Millisecond,
				recoverWait: defaultRecoverWait}
			if c.objective != "no-postcopy" && !uffdUsable(t) {
				return
			}
			if err := o.check(); err != nil {
				t.Fatal(err)
			}
			if srcErr, dstErr := migrate(t, o); srcErr != nil || dstErr != nil {
				t.Fatalf("source: %v; destination: %v", srcErr, dstErr)
			}
		})
	}
}

func TestApplyAdvice(t *testing.T) {
	for alg, want := range map[string]options{
		"precopy":              {mode: "adaptive", policy: "stop"},
		"precopy-throttle":     {mode: "adaptive", policy: "throttle"},
		"precopy-xbzrle-lz4":   {mode: "adaptive", policy: "stop", codecs: codec.Codecs{XBZRLE: true, LZ4: true}},
		"precopy-lz4":          {mode: "adaptive", policy: "stop", codecs: codec.Codecs{LZ4: true}},
		"postcopy-preempt-lz4": {mode: "postcopy", policy: "stop", lz4: true},
		"hybrid":               {mode: "hybrid", policy: "stop"},
	} {
		o := options{mode: "auto", policy: "stop"}
		applyPick(&o, autopick.Of(alg), advisor.Balanced)
		if o.mode != want.mode || o.policy != want.policy || o.codecs != want.codecs || o.lz4 != want.lz4 {
			t.Errorf("%s: %+v", alg, o)
		}
		// Never post-copy: a pre-copy pick stays on pre-copy's connection.
		o = options{mode: "auto", policy: "stop"}
		if applyPick(&o, autopick.Of(alg), advisor.NoPostCopy); want.mode == "adaptive" && o.mode != "precopy" {
			t.Errorf("%s, no post-copy: mode %q", alg, o.mode)
		}
	}
	for _, alg := range advisor.Algorithms {
		o := options{mode: "auto", policy: "stop"}
		applyPick(&o, autopick.Of(alg), advisor.Balanced)
		if _, err := o.postCopy(); err != nil || o.mode == "auto" {
			t.Errorf("%s: mode %q, %v", alg, o.mode, err)
		}
	}
}

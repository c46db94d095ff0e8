// Command kvm is a mini-VMM: it runs a tiny KVM guest (internal/kvm's
// guest program, which writes pages of its memory in batches and keeps a
// counter and an additive checksum of its data region) and migrates it live
// between two processes over TCP with livemig's pre-copy, post-copy or
// hybrid engine.
//
// Start the destination, then the source, with the same -mode and -mem:
//
//	go run ./examples/kvm -listen 127.0.0.1:4444 -mode precopy -json
//	go run ./examples/kvm -connect 127.0.0.1:4444 -mode precopy -dirty-log bitmap -json
//
//	go run ./examples/kvm -listen 127.0.0.1:4444 -mode postcopy -json
//	go run ./examples/kvm -connect 127.0.0.1:4444 -mode postcopy -dirty-log ring -json
//
// With -mode auto on both sides the source watches its running guest
// through the KVM dirty log for -profile-window, asks package advisor for
// the link given by -link-bandwidth and -link-latency, -downtime and
// -objective, prints what it chose and why, and runs the pick (the
// report's algorithm reads "auto: ", the pick, and how the adaptive engine
// ended); the destination follows the source's hello. A pre-copy pick runs
// as the adaptive engine: advisor.Adaptive decides after each round
// (printed), turning codecs on or, unless -objective no-postcopy, handing
// what is left to post-copy (-mode adaptive, hybrid.Config.Adaptive) when
// pre-copy will not converge. This guest cannot be throttled: a pick of
// auto-converge runs without it, and says so.
//
//	go run ./examples/kvm -listen 127.0.0.1:4444 -mode auto -json
//	go run ./examples/kvm -connect 127.0.0.1:4444 -mode auto -link-bandwidth 1e9 -json
//
// The guest's memory is two KVM memory slots with a hole between them
// (internal/kvm's Layout numbers their pages for livemig). The source runs
// the guest on a vCPU goroutine locked to its thread, logs its writes with
// KVM's dirty log chosen by -dirty-log (bitmap: KVM_GET_DIRTY_LOG; manual:
// the same with MANUAL_DIRTY_LOG_PROTECT2 and KVM_CLEAR_DIRTY_LOG; ring:
// the per-vCPU dirty ring), and migrates it while it runs. Pausing the guest
// kicks its vCPU out of KVM_RUN and waits, at most -pause-timeout, until it
// is out; its CPU state (general, special and FPU/XSAVE registers, MSRs)
// travels in package vmstate's versioned format.
//
// The destination creates the same VM and slots before anything arrives.
// Pre-copy writes pages straight into the slots' memory; post-copy and
// hybrid back the slots with one userfaultfd region (package faultmem), so
// that the vCPU's accesses to pages not yet here fault inside KVM_RUN and
// are served by the engine, which asks the source for them. The guest
// resumes only once the engine says so (every page and the state here for
// pre-copy; the state loaded and the Commit received for post-copy). A
// moment after the resume the destination reads the guest's counter again
// (it must have grown: the guest runs on) and, with every page here, checks
// the guest's checksum over its data region.
//
// With -json each side's last line on stdout is one JSON object: the
// destination's holds resumed, checksum_ok, counter_at_pause,
// counter_after, downtime_ms (the source's pause, as its clock stamped it
// in the state, to the resume here: both clocks must agree, as on one
// host), total_ms (the first connection to the migration's end), and
// bytes_sent (bytes the source sent, counted as they arrived); the
// source's is its engine's report.
//
// # Where the guest is
//
// Each side's last line on stderr says where the guest is, and the exit
// status says it too:
//
//	source:
//	  guest running at the destination (migration complete)                 0
//	  no guest here (it could not be started: ERR)                          1
//	  guest running HERE at the source (migration failed before the
//	    hand-over: ERR)                                                     1
//	  guest running HERE at the source (migration failed: ERR)              1
//	  guest PAUSED here, outcome unknown (session ID): ERR                   3
//	  guest PAUSED here, not resumed at the destination (...: ERR)          3
//	  guest running at the destination, part of its memory still here
//	    only (post-copy link lost: ERR)                                     3
//	destination:
//	  guest resumed HERE                                                    0
//	  guest resumed HERE (the source may be left in doubt: ERR)             0
//	  guest resumed HERE, part of its memory still at the source only
//	    (post-copy link lost: ERR)                                          3
//	  guest NOT resumed here: ERR                                           1
//	either side, before any work:
//	  kvm: ERR                                                              2
//
// These are examples/memmigrate's lines and statuses, with its recovery
// rules: after the hand-over a cut link is recovered by default (the
// source redials, the destination keeps its listener open), each outage
// bounded by -recover-wait; -no-recover turns that off.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/examples/internal/autopick"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/transport"
)

type options struct {
	listen, connect string
	mode            string // precopy, postcopy, hybrid
	dirtyLog        string // bitmap, manual, ring
	memMiB          int
	rate            float64 // guest batches per second, 0: flat out
	rounds          int     // hybrid's pre-copy rounds
	pushBandwidth   int64   // post-copy's push cap, bytes/s; 0: none
	downtime        time.Duration
	jsonOut         bool
	verbose         bool
	noRecover       bool
	recoverWait     time.Duration
	liveness        time.Duration
	pauseTimeout    time.Duration
	timeout         time.Duration
	// -mode auto: the source profiles its guest and runs the advisor's
	// pick (examples/internal/autopick); the destination follows.
	objective     string
	linkBandwidth float64 // bits/s
	linkLatency   time.Duration
	profileWindow time.Duration
	auto          bool         // -mode auto was given (mode then becomes the pick, at the source)
	codecs        codec.Codecs // pre-copy's, from the pick
	lz4           bool         // post-copy's, from the pick
	picked        string       // the advisor's pick, for the report
	// adaptive decides the rounds of a pre-copy pick (the adaptive
	// engine), with adaptCodec its codecs.
	adaptive   *advisor.Adaptive
	adaptCodec codec.Config
	// observe, if set (tests), is told at the end of each side whether the
	// guest's vCPU runs there, just before the side stops it.
	observe func(side string, running bool)
}

// postCopy says whether the mode hands the guest over before its memory.
func (o options) postCopy() (bool, error) {
	switch o.mode {
	case "precopy":
		return false, nil
	case "postcopy", "hybrid", "adaptive":
		return true, nil // adaptive: pre-copy that may hand off to post-copy
	case "auto":
		return false, nil // the source decides, the destination follows
	}
	return false, fmt.Errorf("-mode %q: want precopy, postcopy, hybrid, adaptive or auto", o.mode)
}

// check returns the usage error in o's flags, if any.
func (o options) check() error {
	if _, err := o.postCopy(); err != nil {
		return err
	}
	switch o.dirtyLog {
	case "bitmap", "manual", "ring":
	default:
		return fmt.Errorf("-dirty-log %q: want bitmap, manual or ring", o.dirtyLog)
	}
	if _, err := newGeometry(o.memMiB); err != nil {
		return err
	}
	if o.mode == "auto" {
		if _, err := advisor.ParseObjective(o.objective); err != nil {
			return err
		}
		if !(o.linkBandwidth > 0) || o.linkLatency < 0 || o.profileWindow <= 0 {
			return fmt.Errorf("-mode auto: -link-bandwidth %v, -link-latency %v and -profile-window %v must be positive",
				o.linkBandwidth, o.linkLatency, o.profileWindow)
		}
	}
	switch {
	case o.rate < 0:
		return fmt.Errorf("-rate %v: must not be negative", o.rate)
	case o.pushBandwidth < 0:
		return fmt.Errorf("-push-bandwidth %d: must not be negative", o.pushBandwidth)
	case o.rounds < 0:
		return fmt.Errorf("-rounds %d: must not be negative", o.rounds)
	case o.recoverWait <= 0:
		return fmt.Errorf("-recover-wait %v: must be positive", o.recoverWait)
	case o.pauseTimeout <= 0:
		return fmt.Errorf("-pause-timeout %v: must be positive", o.pauseTimeout)
	case o.timeout <= 0:
		return fmt.Errorf("-timeout %v: must be positive", o.timeout)
	case o.liveness < 0:
		return fmt.Errorf("-liveness %v: must not be negative", o.liveness)
	}
	return nil
}

// hello is the handshake of the mode for a guest of pages pages.
func (o options) hello(pages uint64) transport.Hello {
	return autopick.Hello(pages, o.mode, o.codecs)
}

// checkPeer refuses a peer that runs another mode; with -mode auto either
// is taken (the source decides).
func (o options) checkPeer(peer transport.Hello) error {
	return autopick.CheckPeer(o.mode, o.auto, peer)
}

func (o options) connConfig() transport.Config {
	return transport.Config{Liveness: o.liveness, Logger: o.logger()}
}

func (o options) logger() *slog.Logger {
	if !o.verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// srcNoGuest is a source whose guest could not be started.
const srcNoGuest = "no guest here (it could not be started: %v)"

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "", "run the destination, listening on `ADDR`")
	flag.StringVar(&o.connect, "connect", "", "run the source, connecting to `ADDR`")
	flag.StringVar(&o.mode, "mode", "precopy", "precopy, postcopy, hybrid, adaptive (pre-copy that hands the rest to post-copy if it does not converge), or auto: the source profiles its guest and runs the advisor's pick (the same on both sides)")
	flag.StringVar(&o.objective, "objective", "balanced", "-mode auto's objective: balanced, no-postcopy, min-downtime")
	flag.Float64Var(&o.linkBandwidth, "link-bandwidth", 10e9, "-mode auto: the link's bandwidth in bits/s, as the advisor takes it")
	flag.DurationVar(&o.linkLatency, "link-latency", 100*time.Microsecond, "-mode auto: the link's one-way latency")
	flag.DurationVar(&o.profileWindow, "profile-window", time.Second, "-mode auto: how long the source watches its guest before choosing")
	flag.StringVar(&o.dirtyLog, "dirty-log", "bitmap", "source: KVM's dirty log: bitmap, manual (MANUAL_DIRTY_LOG_PROTECT2) or ring")
	flag.IntVar(&o.memMiB, "mem", 4, "guest memory in MiB, over two slots (the same on both sides)")
	flag.Float64Var(&o.rate, "rate", 0, "source: guest batches per second (0: as fast as the guest runs)")
	flag.IntVar(&o.rounds, "rounds", 2, "hybrid: pre-copy rounds before the switchover")
	flag.Int64Var(&o.pushBandwidth, "push-bandwidth", 0, "source, post-copy and hybrid: cap the background push at `BYTES` per second (0: none)")
	flag.DurationVar(&o.downtime, "downtime", 300*time.Millisecond, "pre-copy: downtime target")
	flag.BoolVar(&o.jsonOut, "json", false, "end stdout with one JSON line: the report")
	flag.BoolVar(&o.verbose, "v", false, "log the engine's decisions on stderr")
	flag.BoolVar(&o.noRecover, "no-recover", false, "do not recover from a link cut after the hand-over")
	flag.DurationVar(&o.recoverWait, "recover-wait", 30*time.Second, "after a cut, how long each side waits for the other to come back")
	flag.DurationVar(&o.liveness, "liveness", 0, "a silent peer is given up after this long (0: the library's default, 5s)")
	flag.DurationVar(&o.pauseTimeout, "pause-timeout", 5*time.Second, "how long a pause waits for the vCPU to leave the guest")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if (o.listen == "") == (o.connect == "") || flag.NArg() > 0 {
		usage("give exactly one of -listen and -connect, and no arguments")
	}
	if err := o.check(); err != nil {
		usage(err.Error())
	}
	o.auto = o.mode == "auto"
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var err error
	if o.listen != "" {
		err = destination(ctx, o, os.Stdout)
	} else {
		err = source(ctx, o, os.Stdout)
	}
	fmt.Fprintln(os.Stderr, outcome.LastLine(o.listen != "", err))
	os.Exit(outcome.Status(err))
}

// usage ends the process with status 2, before any work.
func usage(msg string) {
	flag.Usage()
	fmt.Fprintln(os.Stderr, "kvm: "+msg)
	os.Exit(outcome.ExitUsage)
}

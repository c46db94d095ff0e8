// Command memmigrate migrates real memory, written by running goroutines,
// between two processes with livemig's pre-copy, post-copy or hybrid
// engine.
//
// Start the destination, then the source, with the same -size and -mode:
//
//	go run ./examples/memmigrate -listen 127.0.0.1:4444 -size 1024
//	go run ./examples/memmigrate -connect 127.0.0.1:4444 -size 1024 -writers 2 -rate 20000
//
//	go run ./examples/memmigrate -listen 127.0.0.1:4444 -size 1024 -mode postcopy
//	go run ./examples/memmigrate -connect 127.0.0.1:4444 -size 1024 -mode postcopy -lz4
//
// With -mode postcopy, hybrid (one pre-copy round, then post-copy) or
// adaptive (pre-copy that hands what is left to post-copy when it does not
// converge, QEMU's postcopy-after-precopy; converging, it ends by
// stop-and-copy) the destination's memory is a userfaultfd region (package faultmem; Linux,
// root or vm.unprivileged_userfaultfd=1), requested pages go on a second
// connection, and the guest's -writers goroutines carry on writing at the
// destination from the moment it resumes, each blocking in the kernel on a
// page that has not arrived until the source sends it.
//
// With -mode auto on both sides the source watches its guest for
// -profile-window (package advisor: the dirty rate, the working set and
// how it grows, XBZRLE deltas and LZ4 on sampled pages), asks the advisor
// which algorithm suits a link of -link-bandwidth and -link-latency (given,
// not measured) under -downtime and -objective, says on stderr what it
// chose and why, and migrates by it: post-copy (with LZ4), hybrid, or for a
// pre-copy pick the adaptive engine. That is pre-copy whose rounds
// advisor.Adaptive decides from the profile: after each round the source
// prints the decision (stay, compress, throttle, or post-copy for the
// rest) and the engine acts on it; it ends by stop-and-copy when pre-copy
// converges. Unless -objective no-postcopy it runs as hybrid.Config's
// Adaptive over post-copy's connections, so that it can hand the rest to
// post-copy. The report's algorithm reads "auto: ", the pick, and how the
// adaptive engine ended. The destination follows what the source
// announces in the handshake.
//
//	go run ./examples/memmigrate -listen 127.0.0.1:4444 -size 1024 -mode auto
//	go run ./examples/memmigrate -connect 127.0.0.1:4444 -size 1024 -mode auto -rate 50000 -link-bandwidth 1e9
//
// The source maps a region of -size MiB, starts -writers goroutines that
// write counters into random pages at -rate pages/s in all, migrates the
// region while they run, and prints progress on stderr and the migration's
// report as JSON on stdout. The destination prints what it received.
//
// # Security
//
// -tls-cert, -tls-key and -tls-ca run the link over TLS with client
// certificates; -psk-file FILE makes both sides prove they hold the key in
// FILE (its bytes as they are, at least 16 of them), with or without TLS.
// -liveness bounds how long a silent peer goes unnoticed (heartbeats keep a
// quiet link alive); 0 is the library's default, 5 s.
//
// # Recovery
//
// After the hand-over (the Commit) neither side alone holds the whole
// migration, so by default a cut link is recovered: the source dials the
// -connect address again, and the destination, which keeps its listener
// open for the whole migration, accepts the source's new connection. The
// engines retry the redial with their own backoff; -recover-wait bounds
// each outage: the source gives up once it has not reconnected within
// -recover-wait (30 s) of its first redial after the cut (pre-copy: the
// engine's HandoverTimeout; post-copy and hybrid also stop after the
// engine's 16 reconnections in a migration), and the destination gives up
// once no source has come back within -recover-wait of its noticing the
// cut (a source that comes back and fails to rejoin starts the wait again).
// A post-copy or hybrid destination also waits at most -recover-wait for
// the source's second (urgent) connection, which follows the first at once.
// A post-copy or hybrid migration then goes on from where it stood; a
// pre-copy source whose Commit's outcome is unknown asks the destination
// whether it resumed the guest. -no-recover turns this off: a cut after the
// Commit then splits a post-copy guest's memory, and leaves a pre-copy
// guest paused at the source, outcome unknown.
//
// # Where the guest is
//
// Each side's last line on stderr says where the guest is, and the exit
// status says it too. Every last line either side can print:
//
//	source:
//	  guest running at the destination (migration complete)                  0
//	  guest running HERE at the source (migration failed before the
//	    hand-over: ERR)                                                      1
//	  guest running HERE at the source (migration failed: ERR)               1
//	  guest PAUSED here, outcome unknown (session ID): ERR                    3
//	  guest PAUSED here, not resumed at the destination (migration failed
//	    and the source was not resumed: ERR)                                 3
//	  guest running at the destination, part of its memory still here only
//	    (post-copy link lost: ERR)                                            3
//	destination:
//	  guest resumed HERE                                                      0
//	  guest resumed HERE (the source may be left in doubt: ERR)               0
//	  guest resumed HERE, part of its memory still at the source only
//	    (post-copy link lost: ERR)                                            3
//	  guest NOT resumed here: ERR                                             1
//	either side, after the usage, before any work:
//	  memmigrate: ERR                                                         2
//
// "migration failed before the hand-over" is said when the source knows the
// Commit never went out; "migration failed" when it may have (the
// destination then said it did not resume the guest, and the source resumed
// it). A pre-copy destination that resumed the guest holds all its memory:
// an error after the resume (the source's release lost) is a warning, and
// the source, if it was left in doubt, says so itself.
//
// A source in doubt ("outcome unknown", status 3) must keep its guest
// paused: the destination may run it. A post-copy source with status 3 must
// keep its memory: the destination's guest waits on the pages still here. A
// source "PAUSED here, not resumed at the destination" may resume its guest:
// the destination never ran it (the engine resumes the source after such a
// failure, so this line means that resume did not happen). SIGINT and
// SIGTERM end a side through the same lines. Status 2 is a usage error
// (bad or inconsistent flags, an unreadable -psk-file or TLS file).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/examples/internal/autopick"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// defaultRecoverWait is -recover-wait's default.
const defaultRecoverWait = 30 * time.Second

type options struct {
	listen, connect string
	sizeMiB         int
	writers         int
	rate            float64
	downtime        time.Duration
	maxRounds       int
	policy          string
	cert, key, ca   string
	timeout         time.Duration
	verbose         bool
	mode            string // precopy, postcopy, hybrid, auto; adaptive (auto's pick)
	lz4             bool
	streams         int // -mode precopy: connections (multi-stream)
	// -mode auto: the source profiles its guest and takes the advisor's
	// pick (package advisor) for a link of linkBandwidth bits/s and
	// linkLatency, by objective; the destination follows the source.
	auto          bool
	objective     string
	linkBandwidth float64
	linkLatency   time.Duration
	profileWindow time.Duration
	codecs        codec.Codecs // pre-copy's codecs, as the advice says
	noRecover     bool
	recoverWait   time.Duration // 0: defaultRecoverWait
	psk           []byte        // from -psk-file
	// report, if set (tests), receives the source's report instead of
	// standard output.
	report func(rep *livemig.Report)
	// accepted, if set (tests), learns how many streams each connection
	// the destination accepts has.
	accepted func(streams int)
	liveness time.Duration // transport.Config.Liveness
}

// postCopy says whether the mode hands the guest over before its memory.
func (o options) postCopy() (bool, error) {
	switch o.mode {
	case "precopy", "auto":
		return false, nil // auto: the source decides, the destination follows
	case "postcopy", "hybrid", "adaptive":
		return true, nil // adaptive: -mode auto's pre-copy that may hand off
	}
	return false, fmt.Errorf("-mode %q: want precopy, postcopy, hybrid, adaptive or auto", o.mode)
}

// nonConvergence is the -policy's precopy.NonConvergence.
func (o options) nonConvergence() (precopy.NonConvergence, error) {
	switch o.policy {
	case "stop":
		return precopy.StopAndCopy, nil
	case "abort":
		return precopy.Abort, nil
	case "throttle":
		return precopy.Throttle, nil
	}
	return 0, fmt.Errorf("-policy %q: want stop, abort or throttle", o.policy)
}

// check returns the usage error in o's flags, if any: main exits 2 on it
// before any work. It loads the TLS files, so that a missing or bad one is
// a usage error too.
func (o options) check() error {
	if _, err := o.postCopy(); err != nil {
		return err
	}
	if _, err := geometry(o); err != nil {
		return err
	}
	if _, err := o.nonConvergence(); err != nil {
		return err
	}
	if _, err := advisor.ParseObjective(o.objective); o.mode == "auto" && err != nil {
		return err
	}
	if o.mode == "auto" && (!(o.linkBandwidth > 0) || o.linkLatency < 0 || o.profileWindow <= 0) {
		return fmt.Errorf("-mode auto: -link-bandwidth %v, -link-latency %v and -profile-window %v must be positive",
			o.linkBandwidth, o.linkLatency, o.profileWindow)
	}
	if _, err := tlsConfig(o, o.listen != ""); err != nil {
		return err
	}
	if o.recoverWait <= 0 {
		return fmt.Errorf("-recover-wait %v: must be positive", o.recoverWait)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("-timeout %v: must be positive", o.timeout)
	}
	if o.liveness < 0 {
		return fmt.Errorf("-liveness %v: must not be negative", o.liveness)
	}
	if o.streams < 0 || o.streams > transport.MaxStreams {
		return fmt.Errorf("-streams %d: want 1 to %d", o.streams, transport.MaxStreams)
	}
	if o.streams > 1 && o.mode != "precopy" {
		return fmt.Errorf("-streams %d: only -mode precopy runs over several connections", o.streams)
	}
	return nil
}

// waitToRecover is how long either side waits for the other to come back
// after a cut.
func (o options) waitToRecover() time.Duration {
	if o.recoverWait > 0 {
		return o.recoverWait
	}
	return defaultRecoverWait
}

// connConfig is the transport configuration of every connection.
func (o options) connConfig() transport.Config {
	return transport.Config{Liveness: o.liveness, Logger: logger(o)}
}

// checkPeer refuses a peer that runs another mode: the post-copy feature
// must be on both sides or neither.
//
// With -mode auto either is accepted: the source decides (from its
// profile), the destination follows what it announced.
func (o options) checkPeer(peer transport.Hello) error {
	return autopick.CheckPeer(o.mode, o.auto, peer)
}

// hello is the handshake of the mode.
func (o options) hello(pages uint64) transport.Hello {
	return autopick.Hello(pages, o.mode, o.codecs)
}

// usagePrefix starts a usage error's line.
const usagePrefix = "memmigrate: "

func main() {
	var o options
	var pskFile string
	flag.StringVar(&o.listen, "listen", "", "run the destination, listening on `ADDR`")
	flag.StringVar(&o.connect, "connect", "", "run the source, connecting to `ADDR`")
	flag.IntVar(&o.sizeMiB, "size", 64, "guest memory in MiB (the same on both sides)")
	flag.IntVar(&o.writers, "writers", 2, "goroutines writing the source's memory")
	flag.Float64Var(&o.rate, "rate", 20000, "pages per second the writers write, in all (0: as fast as they can)")
	flag.DurationVar(&o.downtime, "downtime", 300*time.Millisecond, "downtime target")
	flag.IntVar(&o.maxRounds, "max-rounds", 30, "round limit")
	flag.StringVar(&o.policy, "policy", "stop", "when pre-copy does not converge: stop (stop-and-copy anyway), abort, throttle")
	flag.StringVar(&o.cert, "tls-cert", "", "TLS certificate `file` (PEM); with -tls-key and -tls-ca, TLS with client certificates")
	flag.StringVar(&o.key, "tls-key", "", "TLS key `file` (PEM)")
	flag.StringVar(&o.ca, "tls-ca", "", "CA `file` (PEM) that signs the peer's certificate")
	flag.StringVar(&pskFile, "psk-file", "", "pre-shared key `FILE` (its bytes as they are, at least 16) both sides must hold")
	flag.DurationVar(&o.liveness, "liveness", 0, "a silent peer is given up after this long (0: the library's default, 5s)")
	flag.BoolVar(&o.noRecover, "no-recover", false, "do not recover from a link cut after the hand-over")
	flag.DurationVar(&o.recoverWait, "recover-wait", defaultRecoverWait, "after a cut, how long each side waits for the other to come back")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.BoolVar(&o.verbose, "v", false, "log the engine's decisions on stderr")
	flag.StringVar(&o.mode, "mode", "precopy", "precopy, postcopy, hybrid, adaptive (pre-copy that hands the rest to post-copy if it does not converge), or auto: the source profiles its guest and takes the advisor's pick (the same on both sides)")
	flag.StringVar(&o.objective, "objective", "balanced", "-mode auto's objective: balanced, no-postcopy, min-downtime")
	flag.Float64Var(&o.linkBandwidth, "link-bandwidth", 10e9, "-mode auto: the link's bandwidth in bits/s, as the advisor takes it")
	flag.DurationVar(&o.linkLatency, "link-latency", 100*time.Microsecond, "-mode auto: the link's one-way latency")
	flag.DurationVar(&o.profileWindow, "profile-window", 2*time.Second, "-mode auto: how long the source watches its guest before choosing")
	flag.BoolVar(&o.lz4, "lz4", false, "post-copy and hybrid: compress the pages sent with LZ4")
	flag.IntVar(&o.streams, "streams", 1, "-mode precopy, at the source: migrate over this many TCP connections (like QEMU's multifd channels); the destination applies each one's pages on a goroutine of its own")
	flag.Parse()
	// A usage error ends here, before any work, with status 2.
	usage := func(msg string) {
		flag.Usage()
		fmt.Fprintln(os.Stderr, usagePrefix+msg)
		os.Exit(outcome.ExitUsage)
	}
	if (o.listen == "") == (o.connect == "") || flag.NArg() > 0 {
		usage("give exactly one of -listen and -connect, and no arguments")
	}
	if pskFile != "" {
		key, err := os.ReadFile(pskFile)
		if err != nil {
			usage(err.Error())
		}
		if len(key) < transport.MinPSKLen {
			usage(fmt.Sprintf("-psk-file %s: %d bytes, want at least %d", pskFile, len(key), transport.MinPSKLen))
		}
		o.psk = key
	}
	o.auto = o.mode == "auto"
	if err := o.check(); err != nil {
		usage(err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	var err error
	if o.listen != "" {
		err = destination(ctx, o)
	} else {
		err = source(ctx, o)
	}
	fmt.Fprintln(os.Stderr, outcome.LastLine(o.listen != "", err))
	os.Exit(outcome.Status(err))
}

func logger(o options) *slog.Logger {
	if !o.verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func tlsConfig(o options, server bool) (*tls.Config, error) {
	if o.cert == "" && o.key == "" && o.ca == "" {
		return nil, nil
	}
	if o.cert == "" || o.key == "" || o.ca == "" {
		return nil, errors.New("TLS needs all of -tls-cert, -tls-key and -tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert %s, -tls-key %s: %w", o.cert, o.key, err)
	}
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, fmt.Errorf("-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-tls-ca %s: no certificate in it", o.ca)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if server {
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	} else {
		c.RootCAs = pool
	}
	return c, nil
}

func geometry(o options) (uint64, error) {
	if o.sizeMiB <= 0 {
		return 0, fmt.Errorf("-size %d: must be positive", o.sizeMiB)
	}
	return uint64(o.sizeMiB) << 20 / livemig.DefaultPageSize, nil
}

// listenConfig is the destination's listener configuration.
func listenConfig(o options) (transport.ListenConfig, error) {
	tc, err := tlsConfig(o, true)
	if err != nil {
		return transport.ListenConfig{}, err
	}
	return transport.ListenConfig{TLS: tc, PSK: o.psk, Logger: logger(o)}, nil
}

func destination(ctx context.Context, o options) error {
	pages, err := geometry(o)
	if err != nil {
		return err
	}
	pc, err := o.postCopy()
	if err != nil {
		return err
	}
	lc, err := listenConfig(o)
	if err != nil {
		return err
	}
	l, err := transport.Listen(ctx, o.listen, lc)
	if err != nil {
		return err
	}
	defer l.Close()
	return serve(ctx, o, l, pages, pc)
}

// serve receives one migration on l, which stays open for the whole
// migration: a source that comes back after a cut connects to it again.
func serve(ctx context.Context, o options, l *transport.Listener, pages uint64, pc bool) error {
	fmt.Fprintf(os.Stderr, "destination: listening on %s for a %d MiB guest (%s)\n", l.Addr(), o.sizeMiB, o.mode)
	var first *transport.Hello // the first source's hello, for -mode auto
	accept := func(ctx context.Context) (transport.Conn, error) {
		conn, peer, err := l.AcceptConn(ctx, o.hello(pages), o.connConfig())
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = &peer
		}
		if err := o.checkPeer(peer); err != nil {
			conn.Close()
			return nil, err
		}
		streams := 1
		if pr, ok := conn.(transport.ParallelReceiver); ok {
			streams = pr.Streams()
			fmt.Fprintf(os.Stderr, "destination: %d streams, each applying its own pages\n", streams)
		}
		if o.accepted != nil {
			o.accepted(streams)
		}
		return conn, nil
	}
	// reaccept waits at most -recover-wait for the source to come back.
	reaccept := func(ctx context.Context) (transport.Conn, error) {
		fmt.Fprintf(os.Stderr, "destination: link lost; waiting up to %v for the source to come back\n", o.waitToRecover())
		rctx, cancel := context.WithTimeout(ctx, o.waitToRecover())
		defer cancel()
		conn, err := accept(rctx)
		if err != nil {
			if ctx.Err() == nil && rctx.Err() != nil {
				err = fmt.Errorf("the source did not come back within -recover-wait %v: %w", o.waitToRecover(), err)
			}
			return nil, err
		}
		fmt.Fprintln(os.Stderr, "destination: the source came back")
		return conn, nil
	}
	if o.noRecover {
		reaccept = nil
	}
	conn, err := accept(ctx)
	if err != nil {
		return outcome.Failed(outcome.DstNotHere, err)
	}
	if o.auto {
		pc = first.Features&transport.FeatPostCopy != 0
		fmt.Fprintf(os.Stderr, "destination: -mode auto: the source runs %s\n", map[bool]string{false: "pre-copy", true: "post-copy or hybrid"}[pc])
	}
	if pc {
		return postCopyDestination(ctx, o, pages, conn, accept, reaccept)
	}
	mem, err := region.New(livemig.DefaultPageSize, pages)
	if err != nil {
		conn.Close()
		return outcome.Failed(outcome.DstNotHere, err)
	}
	defer mem.Close()
	start := time.Now()
	cfg := precopy.Config{Logger: logger(o)}
	if reaccept != nil {
		cfg.Reaccept = reaccept
	}
	rep, err := precopy.Receive(ctx, conn, precopy.Destination{Sink: mem, VM: mem, Pages: pages, PageSize: livemig.DefaultPageSize}, cfg)
	if rep != nil {
		out, _ := json.Marshal(rep)
		fmt.Println(string(out))
	}
	switch {
	case rep == nil || !rep.Resumed:
		if err == nil {
			err = errors.New("the engine returned without resuming the guest")
		}
		return outcome.Failed(outcome.DstNotHere, err)
	case err != nil:
		// Resumed with every page here: a success. The source may not
		// know it (its release was lost): if it was left in doubt, its
		// own last line says so.
		return outcome.Warned(err)
	}
	fmt.Fprintf(os.Stderr, "destination: guest resumed after %v (%d pages, %d rounds, verified %v, state %q)\n",
		time.Since(start).Round(time.Millisecond), rep.PagesReceived, rep.Rounds, rep.Verified, mem.State())
	return nil
}

// postCopyDestination receives a post-copy or hybrid migration into a
// userfaultfd region, on conn and a second, urgent connection, and runs the
// guest's writers there from the resume on. reaccept, if not nil, takes the
// source's connections after a cut.
func postCopyDestination(ctx context.Context, o options, pages uint64, conn transport.Conn,
	accept, reaccept func(context.Context) (transport.Conn, error)) error {
	// The source dials the urgent connection right after the main one: one
	// that has not within -recover-wait gave up (its set-up failed).
	uctx, cancel := context.WithTimeout(ctx, o.waitToRecover())
	urgent, err := accept(uctx)
	cancel()
	if err != nil {
		conn.Close()
		if ctx.Err() == nil && uctx.Err() != nil {
			err = fmt.Errorf("no urgent connection within -recover-wait %v: %w", o.waitToRecover(), err)
		}
		return outcome.Failed(outcome.DstNotHere, fmt.Errorf("urgent connection: %w", err))
	}
	faults := postcopy.NewFaultQueue(pages, nil)
	mem, err := faultmem.New(livemig.DefaultPageSize, pages, faultmem.Config{OnFault: faults.Fault})
	if err != nil {
		conn.Close()
		urgent.Close()
		return outcome.Failed(outcome.DstNotHere, fmt.Errorf("userfaultfd memory: %w", err))
	}
	defer mem.Close()
	// A writer blocked on a missing page holds its P: leave room for the
	// engine (see package faultmem).
	if runtime.GOMAXPROCS(0) < o.writers+4 {
		runtime.GOMAXPROCS(o.writers + 4)
	}
	vm := &dstGuest{mem: mem, writers: o.writers, rate: o.rate}
	defer vm.stop()
	start := time.Now()
	cfg := postcopy.Config{Urgent: urgent, Logger: logger(o),
		OnEvent: func(e postcopy.Event) {
			switch e.Kind {
			case postcopy.Resumed, postcopy.LinkCut, postcopy.Reconnected:
				fmt.Fprintf(os.Stderr, "destination: %-12s %v elapsed %v\n", e.Kind, e.Elapsed.Round(time.Millisecond), errText(e.Err))
			}
		}}
	if reaccept != nil {
		cfg.Reaccept = reaccept
		// The urgent connection follows the main one at once: no need to
		// announce a wait.
		cfg.ReacceptUrgent = func(ctx context.Context) (transport.Conn, error) {
			rctx, cancel := context.WithTimeout(ctx, o.waitToRecover())
			defer cancel()
			return accept(rctx)
		}
	}
	rep, err := postcopy.Receive(ctx, conn, postcopy.Destination{Memory: mem, VM: vm, Faults: faults, Pages: pages,
		PageSize: livemig.DefaultPageSize}, cfg)
	if rep != nil {
		out, _ := json.Marshal(rep)
		fmt.Println(string(out))
	}
	switch {
	case rep == nil || !rep.Resumed:
		if err == nil {
			err = errors.New("the engine returned without resuming the guest")
		}
		return outcome.Failed(outcome.DstNotHere, err)
	case err != nil || !rep.Complete:
		if err == nil {
			err = errors.New("the engine returned with pages missing")
		}
		return outcome.Split(outcome.DstSplit, err)
	}
	pcs := rep.PostCopy
	fmt.Fprintf(os.Stderr, "destination: every page here %v after the start (%d received, %d rounds before the resume, verified %v, %d reconnections); "+
		"the guest ran from the resume, took %d demand faults (wait p50 %v, p99 %v, max %v) and made %d writes so far\n",
		time.Since(start).Round(time.Millisecond), rep.PagesReceived, rep.Rounds, rep.Verified, rep.Reconnects, pcs.DemandFaults,
		pcs.FaultP50.Round(time.Microsecond), pcs.FaultP99.Round(time.Microsecond), pcs.FaultMax.Round(time.Microsecond), vm.writes.Load())
	return nil
}

// errText is err's text, or nothing.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// dstGuest is the guest at a post-copy destination: its state, and the
// writers that run once it resumes, storing into the userfaultfd region
// (plain Go stores: a missing page blocks the writer in the kernel).
type dstGuest struct {
	mem     *faultmem.Region
	writers int
	rate    float64

	mu     sync.Mutex
	state  []byte
	cancel context.CancelFunc
	wg     sync.WaitGroup
	writes atomic.Uint64
}

func (g *dstGuest) Pause(context.Context) error { return nil }

func (g *dstGuest) Resume(context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cancel != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	b := g.mem.Bytes()
	for i := 0; i < g.writers; i++ {
		g.wg.Add(1)
		go func(i int) {
			defer g.wg.Done()
			writeLoop(ctx, i, g.writers, g.rate, g.mem.PageCount(), nil, func(n uint64, off int, v uint64) {
				binary.LittleEndian.PutUint64(b[int(n)*livemig.DefaultPageSize+off:], v)
				g.writes.Add(1)
			})
		}(i)
	}
	return nil
}

func (g *dstGuest) SaveState(_ context.Context, dst []byte) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append(dst, g.state...), nil
}

func (g *dstGuest) LoadState(_ context.Context, state []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.state = append(g.state[:0], state...)
	return nil
}

// stop ends the writers: a writer blocked on a page that never came is
// released by stopping the region's fault service.
func (g *dstGuest) stop() {
	g.mu.Lock()
	cancel := g.cancel
	g.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	_ = g.mem.Stop()
	g.wg.Wait()
}

// guest is the source: a region plus the goroutines that write it, which a
// throttle slows down.
type guest struct {
	*region.Region
	throttle atomic.Uint64 // math.Float64bits
}

func (g *guest) SetThrottle(f float64) { g.throttle.Store(math.Float64bits(f)) }

func (g *guest) run(ctx context.Context, id, writers int, rate float64) {
	var buf [8]byte
	throttle := func() float64 { return math.Float64frombits(g.throttle.Load()) }
	writeLoop(ctx, id, writers, rate, g.PageCount(), throttle, func(n uint64, off int, v uint64) {
		binary.LittleEndian.PutUint64(buf[:], v)
		_ = g.Write(n, off, buf[:])
	})
}

// writeLoop is one of writers goroutines that write counters into random
// pages of a guest of pages pages, at rate pages/s in all (0: flat out),
// slowed by throttle (nil: none), until ctx ends.
func writeLoop(ctx context.Context, id, writers int, rate float64, pages uint64, throttle func() float64,
	write func(n uint64, off int, v uint64)) {
	x := uint64(id)*0x9E3779B97F4A7C15 + 1
	var counter uint64
	per := rate / float64(writers)
	start := time.Now()
	th := func() float64 {
		if throttle == nil {
			return 0
		}
		return throttle()
	}
	for done := 0; ctx.Err() == nil; {
		if per > 0 {
			// Write in 1 ms slices at the paced rate, slowed by the throttle.
			f := th()
			due := int(per * (1 - f) * time.Since(start).Seconds())
			if done >= due {
				time.Sleep(time.Millisecond)
				if f != th() {
					start, done = time.Now(), 0
				}
				continue
			}
		}
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		counter++
		off := int(x>>32) % (livemig.DefaultPageSize / 8) * 8
		write(x%pages, off, counter)
		done++
	}
}

// dialer returns the source's dial, which connects to -connect and
// handshakes once.
func dialer(o options, pages uint64) (dial func(context.Context) (transport.Conn, error), err error) {
	tc, err := tlsConfig(o, false)
	if err != nil {
		return nil, err
	}
	dial = func(ctx context.Context) (transport.Conn, error) {
		dc := transport.DialConfig{TLS: tc, PSK: o.psk}
		var conn transport.Conn
		var peer transport.Hello
		if o.streams > 1 {
			conn, peer, err = transport.DialMulti(ctx, o.connect, o.streams, dc, o.hello(pages), o.connConfig())
			if err != nil {
				return nil, err
			}
		} else {
			link, err := transport.Dial(ctx, o.connect, dc)
			if err != nil {
				return nil, err
			}
			if conn, peer, err = transport.Open(ctx, link, o.hello(pages), o.connConfig()); err != nil {
				link.Close()
				return nil, err
			}
		}
		if err := o.checkPeer(peer); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	return dial, nil
}

// redialOnce is dial, saying so when it reconnects: the pre-copy source's
// Redial, one attempt, which the engine retries with its backoff for at
// most its HandoverTimeout (-recover-wait).
func redialOnce(o options, dial func(context.Context) (transport.Conn, error)) func(context.Context) (transport.Conn, error) {
	return func(ctx context.Context) (transport.Conn, error) {
		conn, err := dial(ctx)
		if err == nil {
			fmt.Fprintf(os.Stderr, "source: reconnected to %s\n", o.connect)
		}
		return conn, err
	}
}

// outage bounds each outage of a post-copy source's link by -recover-wait.
// The engine redials (Config.Redial, RedialUrgent) with its own backoff,
// up to its MaxReconnects in a migration; the first redial after a cut
// starts the outage's clock, the Reconnected event stops it, and when it
// runs out giveUp ends the migration (its context). A redial that cannot
// succeed however often it is tried (authentication, version, mode) ends it
// at once.
type outage struct {
	wait   time.Duration
	giveUp context.CancelCauseFunc

	mu      sync.Mutex
	timer   *time.Timer // running while the link is down
	gen     int         // the outage the timer is for
	lastErr error       // the outage's last failed redial
}

// redial wraps dial, one attempt, in the outage's clock.
func (u *outage) redial(o options, dial func(context.Context) (transport.Conn, error)) func(context.Context) (transport.Conn, error) {
	return func(ctx context.Context) (transport.Conn, error) {
		u.begin()
		conn, err := dial(ctx)
		if err == nil {
			fmt.Fprintf(os.Stderr, "source: reconnected to %s\n", o.connect)
			return conn, nil
		}
		u.mu.Lock()
		u.lastErr = err
		u.mu.Unlock()
		if errors.Is(err, transport.ErrAuth) || errors.Is(err, livemig.ErrVersion) || errors.Is(err, autopick.ErrMode) {
			u.giveUp(err) // no retry makes it right
		}
		return nil, err
	}
}

// begin starts the clock, unless this outage's already runs.
func (u *outage) begin() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.timer != nil {
		return
	}
	gen := u.gen
	u.timer = time.AfterFunc(u.wait, func() {
		u.mu.Lock()
		if u.gen != gen { // reconnected meanwhile
			u.mu.Unlock()
			return
		}
		err := fmt.Errorf("no reconnection within -recover-wait %v", u.wait)
		if u.lastErr != nil {
			err = fmt.Errorf("%w (last attempt: %w)", err, u.lastErr)
		}
		u.mu.Unlock()
		u.giveUp(err)
	})
}

// end stops the clock: the link is back, or the migration over.
func (u *outage) end() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.timer != nil {
		u.timer.Stop()
		u.timer = nil
	}
	u.gen++
	u.lastErr = nil
}

func source(ctx context.Context, o options) error {
	pages, err := geometry(o)
	if err != nil {
		return err
	}
	pc, err := o.postCopy()
	if err != nil {
		return err
	}
	mem, err := region.New(livemig.DefaultPageSize, pages)
	if err != nil {
		return err
	}
	defer mem.Close()
	g := &guest{Region: mem}
	// Fill the guest with something other than zeros, as a booted guest is.
	b := mem.Bytes()
	for i := 0; i+8 <= len(b); i += 64 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i)*0x9E3779B97F4A7C15)
	}
	mem.SetState([]byte(fmt.Sprintf("memmigrate guest, %d MiB, %d writers", o.sizeMiB, o.writers)))

	wctx, stopWriters := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < o.writers; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); g.run(wctx, i, o.writers, o.rate) }(i)
	}
	// The process ends here: release writers a pause holds, whatever the
	// outcome says about the guest.
	defer func() { stopWriters(); _ = mem.Resume(context.Background()); wg.Wait() }()

	var advice *advisor.Advice
	var adaptive *advisor.Adaptive // -mode auto's adaptive engine
	codecs := codec.Config{XBZRLE: o.codecs.XBZRLE, LZ4: o.codecs.LZ4}
	if o.auto {
		pk, acfg, err := autoMode(ctx, &o, mem)
		if err != nil {
			return err
		}
		advice = &pk.Advice
		if pk.Adaptive() {
			adaptive, codecs = pk.Decider(acfg, true), pk.Codec()
		}
		pc, _ = o.postCopy()
	}
	pol, err := o.nonConvergence()
	if err != nil {
		return err
	}
	dial, err := dialer(o, pages)
	if err != nil {
		return err
	}
	conn, err := dial(ctx)
	if err != nil {
		return err
	}
	if pc {
		urgent, err := dial(ctx)
		if err != nil {
			conn.Close()
			return fmt.Errorf("urgent connection: %w", err)
		}
		return postCopySource(ctx, o, g, conn, urgent, dial, advice, adaptive, codecs)
	}
	// stopping: the stop-and-copy began, so the Commit may have gone out.
	stopping := false
	cfg := precopy.Config{
		DowntimeTarget: o.downtime, MaxRounds: o.maxRounds, OnNonConvergence: pol, Logger: logger(o),
		HandoverTimeout: o.waitToRecover(), Codec: codecs, Decider: autopick.AsDecider(adaptive),
		OnEvent: func(e precopy.Event) {
			if e.Kind == precopy.Stopping {
				stopping = true
			}
			preCopyEvent(e, adaptive)
		},
	}
	if !o.noRecover {
		cfg.Redial = redialOnce(o, dial)
	}
	fmt.Fprintf(os.Stderr, "source: migrating %d MiB to %s with %d writers at %.0f pages/s\n", o.sizeMiB, o.connect, o.writers, o.rate)
	rep, err := precopy.Migrate(ctx, conn, precopy.Source{Memory: g, Dirty: g, VM: g}, cfg)
	autoAlgorithm(rep, advice, adaptive)
	o.printReport(rep)
	if err := outcome.PreCopySource(err, mem.Paused(), stopping); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d rounds, verified %v; %d guest writes during the migration\n",
		rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
		len(rep.Rounds), rep.Verified, mem.Writes())
	return nil
}

// postCopySource migrates g by post-copy (or hybrid) over conn, with
// requested pages on urgent; unless -no-recover, dial reconnects after a
// cut, each outage bounded by -recover-wait.
func postCopySource(ctx context.Context, o options, g *guest, conn, urgent transport.Conn,
	dial func(context.Context) (transport.Conn, error), advice *advisor.Advice, adaptive *advisor.Adaptive, codecs codec.Config) error {
	mctx, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	u := &outage{wait: o.waitToRecover(), giveUp: giveUp}
	defer u.end()
	handed, stopping := false, false
	cfg := postcopy.Config{Urgent: urgent, LZ4: o.lz4, Logger: logger(o),
		OnEvent: func(e postcopy.Event) {
			switch e.Kind {
			case postcopy.HandedOver:
				handed = true
			case postcopy.Reconnected:
				u.end()
			case precopy.Stopping: // the adaptive engine's pre-copy end
				stopping = true
			}
			if o.mode == "adaptive" && !handed {
				preCopyEvent(e, adaptive)
				return
			}
			switch e.Kind {
			case postcopy.RoundEnded, postcopy.HandedOver, postcopy.PushDone, postcopy.LinkCut, postcopy.Reconnected:
				fmt.Fprintf(os.Stderr, "source: %-12s round %d  %8d pages  %d records sent  %v elapsed %v\n",
					e.Kind, e.Round, e.Pages, e.PagesSent, e.Elapsed.Round(time.Millisecond), errText(e.Err))
			}
		}}
	if !o.noRecover {
		redial := u.redial(o, dial)
		cfg.Redial, cfg.RedialUrgent = redial, redial
	}
	fmt.Fprintf(os.Stderr, "source: migrating %d MiB to %s by %s with %d writers at %.0f pages/s\n", o.sizeMiB, o.connect, o.mode, o.writers, o.rate)
	var rep *livemig.Report
	var err error
	switch o.mode {
	case "hybrid":
		rep, err = hybrid.Migrate(mctx, conn, livemig.Source{Memory: g, Dirty: g, VM: g}, hybrid.Config{Rounds: 1, Config: cfg})
	case "adaptive":
		rep, err = hybrid.Migrate(mctx, conn, livemig.Source{Memory: g, Dirty: g, VM: g}, hybrid.Config{Adaptive: true, Config: cfg,
			PreCopy: precopy.Config{DowntimeTarget: o.downtime, MaxRounds: o.maxRounds, HandoverTimeout: o.waitToRecover(),
				Decider: autopick.AsDecider(adaptive), Codec: codecs}})
	default:
		rep, err = postcopy.Migrate(mctx, conn, livemig.Source{Memory: g, Dirty: g, VM: g}, cfg)
	}
	autoAlgorithm(rep, advice, adaptive)
	o.printReport(rep)
	if cause := context.Cause(mctx); err != nil && ctx.Err() == nil && mctx.Err() != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w: %w", cause, err) // the outage's end: why the engine stopped
	}
	if o.mode == "adaptive" && !handed {
		// The adaptive engine ended (or failed) before any hand-over to
		// post-copy: pre-copy's outcomes.
		if err := outcome.PreCopySource(err, g.Paused(), stopping); err != nil {
			return err
		}
	} else if err := outcome.PostCopySource(err, handed, g.Paused()); err != nil {
		return err
	}
	pcs := rep.PostCopy
	if pcs == nil { // the adaptive engine converged: pre-copy's end
		fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d rounds, verified %v\n",
			rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
			len(rep.Rounds), rep.Verified)
		return nil
	}
	fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d pushed, %d pulled, %d demand faults at the destination, verified %v\n",
		rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
		pcs.PagesPushed, pcs.PagesPulled, pcs.DemandFaults, rep.Verified)
	return nil
}

// autoMode profiles the source's guest for -profile-window while its
// writers run, asks the advisor (package advisor, through
// examples/internal/autopick) for -link-bandwidth, -link-latency,
// -downtime and -objective, says what it chose and why, and sets o's mode,
// codecs and policy to the pick.
func autoMode(ctx context.Context, o *options, mem *region.Region) (autopick.Pick, autopick.Config, error) {
	obj, err := advisor.ParseObjective(o.objective)
	if err != nil {
		return autopick.Pick{}, autopick.Config{}, err
	}
	cfg := autopick.Config{
		Link:   advisor.Link{Bandwidth: o.linkBandwidth, Latency: o.linkLatency},
		Target: advisor.Target{Downtime: o.downtime, MaxRounds: o.maxRounds, StateBytes: 64}, Objective: obj,
		Window: o.profileWindow, Logger: logger(*o), Log: os.Stderr, Prefix: "source: "}
	pk, err := autopick.Choose(ctx, mem, cfg)
	if err != nil {
		return pk, cfg, err
	}
	applyPick(o, pk, obj)
	return pk, cfg, nil
}

// preCopyEvent prints a pre-copy round's progress and, with the adaptive
// engine, its decision after the round and why.
func preCopyEvent(e precopy.Event, adaptive *advisor.Adaptive) {
	switch e.Kind {
	case precopy.RoundEnded, precopy.Stopping, precopy.Throttled:
		fmt.Fprintf(os.Stderr, "source: %-12s round %2d  %8d pages left  %s sent  %v elapsed  expected downtime %v  throttle %.0f%%\n",
			e.Kind, e.Round, e.Pages, livemig.FormatBytes(e.BytesSent), e.Elapsed.Round(time.Millisecond),
			e.ExpectedDowntime.Round(time.Microsecond), 100*e.Throttle)
	}
	if line, ok := autopick.DecisionLine(adaptive, e); ok {
		fmt.Fprintln(os.Stderr, "source: "+line)
	}
}

// printReport prints the source's report, if any, as JSON on standard
// output, or hands it to o.report.
func (o options) printReport(rep *livemig.Report) {
	switch {
	case rep == nil:
	case o.report != nil:
		o.report(rep)
	default:
		out, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Println(string(out))
	}
}

// autoAlgorithm names, in -mode auto's report, the pick and how the
// adaptive engine ended.
func autoAlgorithm(rep *livemig.Report, advice *advisor.Advice, adaptive *advisor.Adaptive) {
	if rep != nil && advice != nil {
		rep.Algorithm = autopick.Name(advice.Algorithm, rep, adaptive != nil)
	}
}

// applyPick sets o to run pk by objective obj: a pre-copy pick as the
// adaptive engine, over post-copy's connections unless obj rules post-copy
// out.
func applyPick(o *options, pk autopick.Pick, obj advisor.Objective) {
	o.mode, o.codecs, o.lz4 = pk.Mode, pk.Codecs, pk.LZ4
	if pk.Adaptive() && obj != advisor.NoPostCopy {
		o.mode = "adaptive"
	}
	if pk.Throttle {
		o.policy = "throttle"
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/advisor"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/examples/internal/autopick"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// source runs the guest here and migrates it to -connect, writing the
// engine's report on out (as JSON with -json).
func source(ctx context.Context, o options, out io.Writer) error {
	g, err := newGeometry(o.memMiB)
	if err != nil {
		return err
	}
	m, err := newSourceMachine(o, g)
	if err != nil {
		return outcome.Failed(srcNoGuest, err)
	}
	// The process ends here: stop the vCPU, whatever the outcome says
	// about the guest.
	defer m.end(o, "source")
	if err := m.Resume(ctx); err != nil {
		return outcome.Failed(srcNoGuest, err)
	}
	// The guest is live before the migration starts: one batch done.
	if err := m.run.WaitBatches(ctx, 0); err != nil {
		return outcome.Failed(srcNoGuest, fmt.Errorf("the guest did not run: %w", err))
	}
	if o.auto {
		if err := pickMode(ctx, &o, m); err != nil {
			return outcome.Failed(outcome.SrcHere, err)
		}
	}
	dial := dialer(o, g.pages())
	conn, err := dial(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "source: migrating a %d MiB KVM guest (%d pages in %d slots, dirty log %s) to %s by %s\n",
		o.memMiB, g.pages(), len(g.slots), o.dirtyLog, o.connect, o.mode)
	var rep *livemig.Report
	if pc, _ := o.postCopy(); pc {
		urgent, err := dial(ctx)
		if err != nil {
			conn.Close()
			return fmt.Errorf("urgent connection: %w", err)
		}
		rep, err = postCopySource(ctx, o, m, conn, urgent, dial)
		printReport(out, o, autoNamed(o, rep))
		return err
	}
	rep, err = preCopySource(ctx, o, m, conn, dial)
	printReport(out, o, autoNamed(o, rep))
	return err
}

// pickMode profiles the running guest through its KVM dirty log for
// -profile-window, asks the advisor (examples/internal/autopick) and sets
// o to run its pick. Auto-converge needs a guest the VMM can slow down,
// which this one is not: a pick of precopy-throttle runs as plain
// pre-copy, and says so.
func pickMode(ctx context.Context, o *options, m *machine) error {
	obj, err := advisor.ParseObjective(o.objective)
	if err != nil {
		return err
	}
	acfg := autopick.Config{
		Link:   advisor.Link{Bandwidth: o.linkBandwidth, Latency: o.linkLatency},
		Target: advisor.Target{Downtime: o.downtime, StateBytes: 4 << 10}, Objective: obj,
		Window: o.profileWindow, Logger: o.logger(), Log: os.Stderr, Prefix: "source: "}
	pk, err := autopick.Choose(ctx, kvmGuest{m}, acfg)
	if err != nil {
		return err
	}
	if pk.Throttle {
		fmt.Fprintln(os.Stderr, "source: -mode auto: this guest cannot be throttled: pre-copy without auto-converge")
	}
	o.mode, o.codecs, o.lz4, o.picked = pk.Mode, pk.Codecs, pk.LZ4, pk.Advice.Algorithm
	if pk.Adaptive() {
		// The adaptive engine: advisor.Adaptive decides each round (no
		// throttle: this guest cannot be slowed), over post-copy's
		// connections unless the objective rules post-copy out.
		o.adaptive, o.adaptCodec = pk.Decider(acfg, false), pk.Codec()
		if obj != advisor.NoPostCopy {
			o.mode = "adaptive"
		}
	}
	return nil
}

// autoNamed names rep's algorithm "auto: " and the pick under -mode auto,
// and how the adaptive engine ended.
func autoNamed(o options, rep *livemig.Report) *livemig.Report {
	if rep != nil && o.auto {
		rep.Algorithm = autopick.Name(o.picked, rep, o.adaptive != nil)
	}
	return rep
}

// preCopyCodec is the pre-copy codecs o runs with.
func (o options) preCopyCodec() codec.Config {
	if o.adaptive != nil {
		return o.adaptCodec
	}
	return codec.Config{XBZRLE: o.codecs.XBZRLE, LZ4: o.codecs.LZ4}
}

// kvmGuest is the source guest as the advisor observes it: its memory
// over the slots and its KVM dirty log.
type kvmGuest struct{ m *machine }

func (g kvmGuest) PageSize() int                     { return g.m.layout.PageSize() }
func (g kvmGuest) PageCount() uint64                 { return g.m.layout.PageCount() }
func (g kvmGuest) ReadPage(n uint64, p []byte) error { return g.m.layout.ReadPage(n, p) }
func (g kvmGuest) SyncDirty(dst []uint64) error      { return g.m.dirty.SyncDirty(dst) }

// printReport writes rep, if any, as one JSON line with -json, or as a table.
func printReport(out io.Writer, o options, rep *livemig.Report) {
	if rep == nil {
		return
	}
	if !o.jsonOut {
		_ = rep.WriteTable(out)
		return
	}
	b, _ := json.Marshal(rep)
	fmt.Fprintln(out, string(b))
}

// dialer returns the source's dial: it connects to -connect and
// handshakes once.
func dialer(o options, pages uint64) func(context.Context) (transport.Conn, error) {
	return func(ctx context.Context) (transport.Conn, error) {
		link, err := transport.Dial(ctx, o.connect, transport.DialConfig{})
		if err != nil {
			return nil, err
		}
		conn, peer, err := transport.Open(ctx, link, o.hello(pages), o.connConfig())
		if err != nil {
			return nil, err
		}
		if err := o.checkPeer(peer); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

// preCopySource migrates m by pre-copy over conn and says where the guest
// is.
func preCopySource(ctx context.Context, o options, m *machine, conn transport.Conn,
	dial func(context.Context) (transport.Conn, error)) (*livemig.Report, error) {
	stopping := false // the stop-and-copy began: the Commit may have gone out
	cfg := precopy.Config{DowntimeTarget: o.downtime, Logger: o.logger(), HandoverTimeout: o.recoverWait,
		Codec: o.preCopyCodec(), Decider: autopick.AsDecider(o.adaptive),
		OnEvent: func(e precopy.Event) {
			if e.Kind == precopy.Stopping {
				stopping = true
			}
			preCopyLine(o, e)
		}}
	if !o.noRecover {
		cfg.Redial = dial
	}
	rep, err := precopy.Migrate(ctx, conn, precopy.Source{Memory: m.layout, Dirty: m.dirty, VM: m}, cfg)
	if err := outcome.PreCopySource(err, !m.run.Running(), stopping); err != nil {
		return rep, err
	}
	fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d rounds, %d guest batches here\n",
		rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
		len(rep.Rounds), m.run.Batches())
	return rep, nil
}

// preCopyLine prints a pre-copy round's progress, and the adaptive
// engine's decision after it.
func preCopyLine(o options, e precopy.Event) {
	if e.Kind == precopy.RoundEnded || e.Kind == precopy.Stopping {
		fmt.Fprintf(os.Stderr, "source: %-12s round %2d  %6d pages left  %s sent  %v elapsed\n",
			e.Kind, e.Round, e.Pages, livemig.FormatBytes(e.BytesSent), e.Elapsed.Round(time.Millisecond))
	}
	if line, ok := autopick.DecisionLine(o.adaptive, e); ok {
		fmt.Fprintln(os.Stderr, "source: "+line)
	}
}

// postCopySource migrates m by post-copy, hybrid or the adaptive engine
// over conn, requested pages on urgent, and says where the guest is.
func postCopySource(ctx context.Context, o options, m *machine, conn, urgent transport.Conn,
	dial func(context.Context) (transport.Conn, error)) (*livemig.Report, error) {
	mctx, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	handed, stopping := false, false
	cfg := postcopy.Config{Urgent: urgent, PushBandwidth: o.pushBandwidth, LZ4: o.lz4, Logger: o.logger(),
		OnEvent: func(e postcopy.Event) {
			switch e.Kind {
			case postcopy.HandedOver:
				handed = true
			case precopy.Stopping: // the adaptive engine's pre-copy end
				stopping = true
			}
			if o.mode == "adaptive" && !handed {
				preCopyLine(o, e)
				return
			}
			switch e.Kind {
			case postcopy.RoundEnded, postcopy.HandedOver, postcopy.PushDone, postcopy.LinkCut, postcopy.Reconnected:
				fmt.Fprintf(os.Stderr, "source: %-12s round %d  %6d pages  %d records sent  %v elapsed\n",
					e.Kind, e.Round, e.Pages, e.PagesSent, e.Elapsed.Round(time.Millisecond))
			}
		}}
	if !o.noRecover {
		cfg.Redial, cfg.RedialUrgent = boundedRedial(o, dial, giveUp), boundedRedial(o, dial, giveUp)
	}
	src := livemig.Source{Memory: m.layout, Dirty: m.dirty, VM: m}
	var rep *livemig.Report
	var err error
	switch o.mode {
	case "hybrid":
		rep, err = hybrid.Migrate(mctx, conn, src, hybrid.Config{Rounds: o.rounds, Config: cfg})
	case "adaptive":
		rep, err = hybrid.Migrate(mctx, conn, src, hybrid.Config{Adaptive: true, Config: cfg,
			PreCopy: precopy.Config{DowntimeTarget: o.downtime, HandoverTimeout: o.recoverWait, Decider: autopick.AsDecider(o.adaptive), Codec: o.preCopyCodec()}})
	default:
		rep, err = postcopy.Migrate(mctx, conn, src, cfg)
	}
	if cause := context.Cause(mctx); err != nil && ctx.Err() == nil && mctx.Err() != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	if o.mode == "adaptive" && !handed {
		// Ended (or failed) before any hand-over to post-copy: pre-copy's
		// outcomes.
		if err := outcome.PreCopySource(err, !m.run.Running(), stopping); err != nil {
			return rep, err
		}
	} else if err := outcome.PostCopySource(err, handed, !m.run.Running()); err != nil {
		return rep, err
	}
	if rep.PostCopy == nil { // the adaptive engine converged: pre-copy's end
		fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d rounds, %d guest batches here\n",
			rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
			len(rep.Rounds), m.run.Batches())
		return rep, nil
	}
	fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d pushed, %d pulled, %d demand faults at the destination\n",
		rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
		rep.PostCopy.PagesPushed, rep.PostCopy.PagesPulled, rep.PostCopy.DemandFaults)
	return rep, nil
}

// boundedRedial is dial for a post-copy source's Redial: each attempt is
// bounded by -recover-wait, and one that cannot succeed however often it
// is tried (another mode, another version) ends the migration.
func boundedRedial(o options, dial func(context.Context) (transport.Conn, error),
	giveUp context.CancelCauseFunc) func(context.Context) (transport.Conn, error) {
	return func(ctx context.Context) (transport.Conn, error) {
		rctx, cancel := context.WithTimeout(ctx, o.recoverWait)
		defer cancel()
		conn, err := dial(rctx)
		if err == nil {
			fmt.Fprintf(os.Stderr, "source: reconnected to %s\n", o.connect)
			return conn, nil
		}
		if errors.Is(err, livemig.ErrVersion) || errors.Is(err, autopick.ErrMode) {
			giveUp(err)
		}
		return nil, err
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/internal/kvm/guest"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
)

// destResult is the destination's JSON line.
type destResult struct {
	Mode           string  `json:"mode"`
	Resumed        bool    `json:"resumed"`
	Complete       bool    `json:"complete"` // every page here and verified
	ChecksumOK     bool    `json:"checksum_ok"`
	CounterAtPause uint64  `json:"counter_at_pause"`
	CounterAfter   uint64  `json:"counter_after"`
	DowntimeMS     float64 `json:"downtime_ms"` // the source's pause stamp to the resume here
	TotalMS        float64 `json:"total_ms"`    // the first connection to the migration's end
	BytesSent      uint64  `json:"bytes_sent"`  // bytes the source sent, on every connection
	PagesReceived  uint64  `json:"pages_received"`
	Rounds         int     `json:"rounds"`
	Verified       bool    `json:"verified"`
	Reconnects     int     `json:"reconnects"`
	DemandFaults   uint64  `json:"demand_faults,omitempty"`
	FaultP50MS     float64 `json:"fault_p50_ms,omitempty"`
	FaultP99MS     float64 `json:"fault_p99_ms,omitempty"`
	FaultMaxMS     float64 `json:"fault_max_ms,omitempty"`
	Error          string  `json:"error,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// countingLink counts the bytes read from a link into n.
type countingLink struct {
	transport.Link
	n *atomic.Uint64
}

func (c countingLink) Read(p []byte) (int, error) {
	k, err := c.Link.Read(p)
	c.n.Add(uint64(k))
	return k, err
}

// destination receives one migration on -listen and runs the guest here.
func destination(ctx context.Context, o options, out io.Writer) error {
	if err := probeHardware(); err != nil {
		return fmt.Errorf("no guest can run here: %w", err)
	}
	l, err := transport.Listen(ctx, o.listen, transport.ListenConfig{Logger: o.logger()})
	if err != nil {
		return err
	}
	defer l.Close()
	return serve(ctx, o, l, out)
}

// acceptor takes the source's connections on l, counting their bytes.
type acceptor struct {
	o     options
	l     *transport.Listener
	pages uint64
	bytes atomic.Uint64
	peer  transport.Hello // the last source's hello
}

func (a *acceptor) accept(ctx context.Context) (transport.Conn, error) {
	link, err := a.l.Accept(ctx)
	if err != nil {
		return nil, err
	}
	conn, peer, err := transport.Open(ctx, countingLink{link, &a.bytes}, a.o.hello(a.pages), a.o.connConfig())
	if err != nil {
		return nil, err
	}
	if err := a.o.checkPeer(peer); err != nil {
		conn.Close()
		return nil, err
	}
	a.peer = peer
	return conn, nil
}

// reaccept waits at most -recover-wait for the source to come back.
func (a *acceptor) reaccept(ctx context.Context) (transport.Conn, error) {
	fmt.Fprintf(os.Stderr, "destination: link lost; waiting up to %v for the source to come back\n", a.o.recoverWait)
	rctx, cancel := context.WithTimeout(ctx, a.o.recoverWait)
	defer cancel()
	conn, err := a.accept(rctx)
	if err != nil && ctx.Err() == nil && rctx.Err() != nil {
		err = fmt.Errorf("the source did not come back within -recover-wait %v: %w", a.o.recoverWait, err)
	}
	return conn, err
}

// serve receives one migration on l (open for the whole migration, so that
// a source that comes back after a cut finds it) and writes the result on
// out.
func serve(ctx context.Context, o options, l *transport.Listener, out io.Writer) error {
	g, err := newGeometry(o.memMiB)
	if err != nil {
		return err
	}
	pc, err := o.postCopy()
	if err != nil {
		return err
	}
	a := &acceptor{o: o, l: l, pages: g.pages()}
	fmt.Fprintf(os.Stderr, "destination: listening on %s for a %d MiB KVM guest (%s)\n", l.Addr(), o.memMiB, o.mode)
	conn, err := a.accept(ctx)
	if err != nil {
		return outcome.Failed(outcome.DstNotHere, err)
	}
	start := time.Now()
	res := &destResult{Mode: o.mode}
	if o.auto {
		// The source chose: its hello says pre-copy or post-copy (or
		// hybrid, which the post-copy side takes as it comes).
		pc = a.peer.Features&transport.FeatPostCopy != 0
		res.Mode = "auto: " + map[bool]string{false: "precopy", true: "postcopy or hybrid"}[pc]
		fmt.Fprintf(os.Stderr, "destination: -mode auto: the source runs %s\n", map[bool]string{false: "pre-copy", true: "post-copy or hybrid"}[pc])
	}
	if pc {
		err = postCopyDestination(ctx, o, g, a, conn, res)
	} else {
		err = preCopyDestination(ctx, o, g, a, conn, res)
	}
	res.TotalMS, res.BytesSent = ms(time.Since(start)), a.bytes.Load()
	if err != nil {
		res.Error = err.Error()
	}
	if o.jsonOut {
		b, _ := json.Marshal(res)
		fmt.Fprintln(out, string(b))
	} else {
		fmt.Fprintf(out, "%+v\n", *res)
	}
	return err
}

// preCopyDestination receives a pre-copy migration into plain slot memory.
func preCopyDestination(ctx context.Context, o options, g geometry, a *acceptor, conn transport.Conn, res *destResult) error {
	m, err := newDestMachine(o, g, nil)
	if err != nil {
		conn.Close()
		return outcome.Failed(outcome.DstNotHere, err)
	}
	defer m.end(o, "destination")
	cfg := precopy.Config{Logger: o.logger()}
	if !o.noRecover {
		cfg.Reaccept = a.reaccept
	}
	rep, err := precopy.Receive(ctx, conn, precopy.Destination{Sink: m.sink, VM: m, Pages: g.pages(), PageSize: livemig.DefaultPageSize}, cfg)
	if rep != nil {
		res.Resumed, res.Complete, res.Verified = rep.Resumed, rep.Resumed, rep.Verified
		res.PagesReceived, res.Rounds, res.Reconnects = rep.PagesReceived, rep.Rounds, rep.Reconnects
	}
	m.fillPause(res)
	if rep == nil || !rep.Resumed {
		if err == nil {
			err = errors.New("the engine returned without resuming the guest")
		}
		return outcome.Failed(outcome.DstNotHere, err)
	}
	if cerr := m.checkRunOn(ctx, res); cerr != nil {
		return outcome.Broken(cerr)
	}
	if err != nil {
		// Resumed with every page here: a success the source may not know.
		return outcome.Warned(err)
	}
	return nil
}

// postCopyDestination receives a post-copy or hybrid migration into a
// userfaultfd region that backs the slots, so that the vCPU's faults
// inside KVM_RUN become the engine's page requests.
func postCopyDestination(ctx context.Context, o options, g geometry, a *acceptor, conn transport.Conn, res *destResult) error {
	uctx, cancel := context.WithTimeout(ctx, o.recoverWait)
	urgent, err := a.accept(uctx)
	cancel()
	if err != nil {
		conn.Close()
		return outcome.Failed(outcome.DstNotHere, fmt.Errorf("urgent connection: %w", err))
	}
	faults := postcopy.NewFaultQueue(g.pages(), nil)
	m, err := newDestMachine(o, g, faults.Fault)
	if err != nil {
		conn.Close()
		urgent.Close()
		return outcome.Failed(outcome.DstNotHere, err)
	}
	defer m.end(o, "destination")
	cfg := postcopy.Config{Urgent: urgent, Logger: o.logger()}
	if !o.noRecover {
		cfg.Reaccept, cfg.ReacceptUrgent = a.reaccept, a.reaccept
	}
	dst := postcopy.Destination{Memory: m.region, VM: m, Faults: faults, Pages: g.pages(), PageSize: livemig.DefaultPageSize}
	var rep *postcopy.ReceiveReport
	if o.mode == "hybrid" || o.mode == "adaptive" || o.auto { // hybrid's Receive takes post-copy's and pre-copy's ends too
		rep, err = hybrid.Receive(ctx, conn, dst, hybrid.Config{Config: cfg})
	} else {
		rep, err = postcopy.Receive(ctx, conn, dst, cfg)
	}
	if rep != nil {
		res.Resumed, res.Complete, res.Verified = rep.Resumed, rep.Complete, rep.Verified
		res.PagesReceived, res.Rounds, res.Reconnects = rep.PagesReceived, rep.Rounds, rep.Reconnects
		if rep.StopAndCopy && o.auto {
			res.Mode = "auto: adaptive, ended by pre-copy's stop-and-copy"
		}
		pcs := rep.PostCopy
		res.DemandFaults, res.FaultP50MS, res.FaultP99MS, res.FaultMaxMS = pcs.DemandFaults, ms(pcs.FaultP50), ms(pcs.FaultP99), ms(pcs.FaultMax)
	}
	m.fillPause(res)
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
		// The guest runs here, waiting on pages that will not come: the
		// counter, if its page is here, shows whether it ran on; the
		// checksum cannot be checked.
		if n, perr := m.layout.PageOfGPA(guest.ParamsGPA); perr == nil && m.region.Present(n) {
			res.CounterAfter, _ = m.counter()
		}
		return outcome.Split(outcome.DstSplit, err)
	}
	if cerr := m.checkRunOn(ctx, res); cerr != nil {
		return outcome.Broken(cerr)
	}
	return nil
}

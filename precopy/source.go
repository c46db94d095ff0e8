package precopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/internal/handover"
	"github.com/livemig/livemig/reorder"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

// Source is the guest being migrated away: livemig.Source.
type Source = livemig.Source

// Migrate migrates src to the destination at the other end of conn with the
// iterative pre-copy algorithm, and returns its report.
//
// conn must have completed its handshake (transport.Open) with a peer of the
// same page geometry. Migrate owns conn from then on and closes it before it
// returns. The destination runs Receive.
//
// Round 1 sends every page; each later round syncs the dirty log and sends
// the pages written meanwhile, until the policy (see Policy.Decide) says to
// stop. Then the source pauses, sends the rest and the CPU/device state, and
// hands the guest over once the destination has verified everything.
//
// On failure before the hand-over (a cut or stalled link, a peer error, a
// cancelled ctx, non-convergence under the Abort policy, a Pause that let
// the guest write on) the source guest is left running, the destination is
// told (when the link still works) and does not resume, and the error says
// what happened; the report returned with it holds the figures up to the
// failure. A destination's error stops the source at once, even in the
// middle of a blocked send. If the link fails after the Commit was sent,
// before the destination said whether it resumed, the source asks it again
// through cfg.Redial (see Config.Redial and Resolve) and resumes its guest
// only if the destination promised not to; when it cannot learn the
// outcome the guest stays paused and the error is an *InDoubtError
// (livemig.ErrInDoubt). See handover.go's states.
//
// src.VM.Pause must return only once the guest writes no more and its every
// earlier write is in the dirty log: Migrate checks that a sync after the
// last round finds nothing, and fails (resuming the guest) if it does.
func Migrate(ctx context.Context, conn transport.Conn, src Source, cfg Config) (*livemig.Report, error) {
	if cfg.OnNonConvergence == PostCopy || cfg.AlwaysPostCopy {
		conn.Close()
		return nil, fmt.Errorf("precopy: Migrate cannot go on by post-copy (OnNonConvergence PostCopy, AlwaysPostCopy): use package hybrid: %w", livemig.ErrNotSupported)
	}
	rep, _, err := migrate(ctx, conn, src, cfg, false)
	return rep, err
}

// migrate is Migrate, and with handOff HandOff.
func migrate(ctx context.Context, conn transport.Conn, src Source, cfg Config, handOff bool) (*livemig.Report, *Handoff, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if src.Memory == nil || src.Dirty == nil || src.VM == nil {
		conn.Close()
		return nil, nil, errors.New("precopy: Source needs Memory, Dirty and VM")
	}
	if _, ok := src.VM.(livemig.Throttler); !ok && cfg.OnNonConvergence == Throttle {
		conn.Close()
		return nil, nil, fmt.Errorf("precopy: the Throttle policy needs a VM that implements livemig.Throttler: %w", livemig.ErrNotSupported)
	}
	m := &migration{
		cfg:     cfg,
		src:     src,
		conn:    conn,
		policy:  cfg.Decider,
		pages:   src.Memory.PageCount(),
		ps:      src.Memory.PageSize(),
		ret:     make(chan retMsg, 4),
		stop:    make(chan struct{}),
		session: rand.Uint64() | 1,
	}
	if m.policy == nil {
		m.policy = NewPolicy(cfg)
	}
	m.report = &livemig.Report{Algorithm: "pre-copy", GuestPages: m.pages, PageSize: m.ps}
	if !cfg.NoVerify {
		m.digest = verify.New(m.pages, m.ps)
	}
	ccfg := cfg.Codec
	if ccfg.PageSize == 0 {
		ccfg.PageSize = m.ps
	}
	if ccfg.Logger == nil {
		ccfg.Logger = cfg.Logger
	}
	if vc, virtual := cfg.Clock.(*livemig.VirtualClock); virtual {
		// A simulation: encoding costs the virtual time of the codec's
		// cost model (ccfg.Cost), and one worker keeps the results
		// independent of goroutine scheduling.
		ccfg.VirtualTime, ccfg.Clock = true, vc
		if ccfg.Workers == 0 {
			ccfg.Workers = 1
		}
	}
	m.codecs = ccfg.XBZRLE || ccfg.LZ4
	pipe, err := codec.NewPipeline(ccfg, src.Memory, m.digest, m.send)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("precopy: %w", err)
	}
	m.pipe = pipe
	defer pipe.Close()
	m.dirty = make([]uint64, livemig.WordsFor(m.pages))
	if cfg.Defer {
		p, ok := src.Dirty.(livemig.DirtyPeeker)
		if !ok {
			conn.Close()
			return nil, nil, fmt.Errorf("precopy: Defer needs a DirtySource that implements livemig.DirtyPeeker: %w", livemig.ErrNotSupported)
		}
		d, err := reorder.NewDeferrer(m.pages, reorder.DeferConfig{PeekEvery: peekInterval(m.pages)})
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("precopy: %w", err)
		}
		m.peeker, m.deferrer = p, d
	}

	m.sendCtx = ctx
	m.conn = transport.Metered(conn)
	m.meter = m.conn.(transport.Meter)
	m.w0 = m.meter.Written()
	if bs, ok := m.conn.(transport.BatchSender); ok && pipe.SendBatches(bs, m.sendBatch) {
		m.batches = bs // the workers build the frames: no record goes through send
	}
	m.handOff = handOff
	go m.readReturnPath(ctx)
	err = m.run(ctx)
	m.report.BytesSent = m.wireBytes()
	if err == nil && m.handoff != nil {
		// The reader ended at the barrier: the connection is the caller's.
		m.handoff.Report = m.report
		return m.report, m.handoff, nil
	}
	conn.Close()
	close(m.stop)
	for range m.ret { // wait for the reader to end
	}
	return m.report, nil, err
}

type retMsg struct {
	m   transport.Msg
	err error
}

type migration struct {
	cfg      Config
	src      Source
	conn     transport.Conn
	policy   Decider
	throttle float64 // in force
	report   *livemig.Report
	digest   *verify.Digest
	pipe     *codec.Pipeline
	codecs   bool // XBZRLE or LZ4 configured

	sendCtx context.Context       // for send and sendBatch, which the pipeline calls
	batches transport.BatchSender // the conn, when the pipeline builds its frames
	// The link's capacity for the codecs' adaptation: the time spent inside
	// conn.Send, on cfg.Clock, and the wire bytes sent, since the last
	// look (written by the goroutine that calls send, read by the engine's
	// mid-round), and the page bytes submitted since.
	sendTime  atomic.Int64
	sendBytes atomic.Uint64
	observeIn int

	pages uint64
	ps    int
	dirty []uint64
	sent  []uint64 // pages sent at least once, for PagesResent
	plan  []uint64 // the order of the current round, from cfg.Order

	peeker   livemig.DirtyPeeker // set when cfg.Defer
	deferrer *reorder.Deferrer   // set when cfg.Defer

	session  uint64
	handOff  bool                           // HandOff: the policy may end the rounds by a Handoff
	barrier  atomic.Bool                    // the reader ends at the next Ack(AckRound)
	handoff  *Handoff                       // set once the rounds ended by a hand-off
	peerFail atomic.Pointer[wire.PeerError] // the destination's KindError, once it came
	doneSent bool                           // the destination may be in Ready
	start    time.Time
	paused   bool
	handed   bool // the Commit is (being) sent: the outcome may be in doubt
	ret      chan retMsg
	stop     chan struct{}
	retErr   error
	pending  int    // pages since the last look at the return path
	resent   uint64 // records for pages sent before

	meter transport.Meter // conn's count of the bytes it wrote
	w0    uint64          // its count at the start
}

// wireBytes returns the bytes the migration has sent so far: what the
// Conn wrote to its link since the start, framing, control frames and
// heartbeats included (see transport.Metered for a Conn that counts
// nothing).
func (m *migration) wireBytes() uint64 { return m.meter.Written() - m.w0 }

// readReturnPath forwards what the destination says, so that a peer error
// stops the source at once rather than at the end.
func (m *migration) readReturnPath(ctx context.Context) {
	defer close(m.ret)
	for {
		var msg transport.Msg
		err := m.conn.Recv(ctx, &msg)
		if err == nil {
			msg.Data = bytes.Clone(msg.Data)
			if msg.Kind == wire.KindError {
				// Stop the source at once, even inside a blocked send:
				// the destination has given up, the link is of no more use.
				// (Closing it, not a ctx, keeps a ctx without Done free of
				// a per-frame AfterFunc.)
				m.peerFail.Store(wire.PeerErrorOf(msg, m.session))
				m.conn.Close()
			}
		}
		select {
		case m.ret <- retMsg{msg, err}:
		case <-m.stop:
			return
		}
		if err != nil || (m.barrier.Load() && msg.Kind == wire.KindAck && msg.Arg == wire.AckRound) {
			return // failed, or at the hand-off's barrier: read no further
		}
	}
}

func (m *migration) event(k EventKind, round int, dirty uint64, reason string, expected time.Duration) {
	if m.cfg.OnEvent == nil {
		return
	}
	m.cfg.OnEvent(Event{
		Kind: k, Round: round, Pages: dirty, PagesSent: m.report.PagesSent,
		BytesSent: m.report.BytesSent, Elapsed: m.cfg.Clock.Now().Sub(m.start),
		ExpectedDowntime: expected, Throttle: m.throttle, Reason: reason,
	})
}

func (m *migration) run(ctx context.Context) (err error) {
	log := m.cfg.Logger
	m.start = m.cfg.Clock.Now()
	m.sent = make([]uint64, livemig.WordsFor(m.pages))
	defer func() {
		m.report.TotalTime = m.cfg.Clock.Now().Sub(m.start)
		if err == nil {
			return
		}
		if m.handed {
			return // in doubt: stopAndCopy made err an *InDoubtError
		}
		// Clean failure: stop the pipeline (nothing else may send while
		// it does), resume the source first (the destination cannot resume
		// without the Commit), then tell the destination, best effort.
		m.pipe.Close()
		bg := context.WithoutCancel(ctx)
		if m.paused {
			if rerr := m.src.VM.Resume(bg); rerr != nil {
				err = errors.Join(err, fmt.Errorf("precopy: resume source after failure: %w", rerr))
			}
			m.paused = false
		}
		if th, ok := m.src.VM.(livemig.Throttler); ok && m.throttle > 0 {
			th.SetThrottle(0)
		}
		tell, cancel := context.WithTimeout(bg, 2*time.Second) // the link may be gone
		_ = m.conn.Send(tell, transport.Msg{Kind: wire.KindError, Data: []byte(err.Error())})
		cancel()
		if m.doneSent && m.cfg.Redial != nil && !wire.NotResumed(err) {
			// The destination may be in Ready, waiting for us to come
			// back: tell it we resumed.
			handover.Abandon(ctx, m.cfg.Redial, m.session, err)
		}
		log.Info("pre-copy failed; source resumed", "err", err)
	}()

	// Start from a clean log: pages written before now are sent in round 1.
	if err := m.src.Dirty.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("precopy: start dirty log: %w", err)
	}
	clear(m.dirty)

	round := 1
	var left uint64
	for {
		r := livemig.Round{Index: round, Start: m.cfg.Clock.Now().Sub(m.start)}
		b0 := m.wireBytes()
		if round == 1 {
			r.DirtyPages = m.pages
		} else {
			r.DirtyPages = left
		}
		m.event(RoundStarted, round, r.DirtyPages, "", 0)
		t0 := m.cfg.Clock.Now()
		m.startRound(&r)
		if err := m.sendRound(ctx, &r, round == 1); err != nil {
			return err
		}
		if err := m.endRound(ctx, &r); err != nil {
			return err
		}
		if err := m.conn.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: uint64(round)}); err != nil {
			return m.linkErr(fmt.Sprintf("end of round %d", round), err)
		}
		r.Bytes = m.wireBytes() - b0 // the EndRound wrote the round's last batch
		m.report.BytesSent = m.wireBytes()
		r.Duration = m.cfg.Clock.Now().Sub(t0)
		m.report.Rounds = append(m.report.Rounds, r)

		if err := m.src.Dirty.SyncDirty(m.dirty); err != nil {
			return fmt.Errorf("precopy: sync dirty log after round %d: %w", round, err)
		}
		left = bitmap.CountWords(m.dirty)
		if m.cfg.Order != nil {
			m.cfg.Order.Observe(m.dirty)
		}
		d := m.policy.Decide(RoundFacts{
			Round: round, SentBytes: r.Bytes, SentPages: r.PagesSent, Planned: r.DirtyPages, Duration: r.Duration,
			DirtyPages: left, PageSize: m.ps, Codecs: m.pipe.Codecs(), Throttle: m.throttle,
		})
		m.event(RoundEnded, round, left, d.Reason, d.ExpectedDowntime)
		log.Debug("round ended", "round", round, "sent", r.PagesSent, "left", left,
			"bandwidth", d.Bandwidth, "expected_downtime", d.ExpectedDowntime, "decision", d.Action, "reason", d.Reason)
		if d.Throttle > 0 {
			th, ok := m.src.VM.(livemig.Throttler)
			if !ok {
				return fmt.Errorf("precopy: throttle policy but the VM does not implement livemig.Throttler: %w", livemig.ErrNotSupported)
			}
			th.SetThrottle(d.Throttle)
			m.throttle = d.Throttle
			m.report.Throttle = max(m.report.Throttle, d.Throttle)
			m.event(Throttled, round, left, d.Reason, d.ExpectedDowntime)
			log.Info("throttling guest", "throttle", d.Throttle, "round", round)
		}
		if d.Codecs != nil {
			if err := m.pipe.SetCodecs(*d.Codecs); err != nil {
				return fmt.Errorf("precopy: after round %d: %w", round, err)
			}
			m.codecs = m.codecs || d.Codecs.XBZRLE || d.Codecs.LZ4
			log.Info("codecs switched", "round", round, "codecs", d.Codecs.String(), "reason", d.Reason)
		}
		switch d.Action {
		case Fail:
			log.Info("pre-copy did not converge; aborting", "reason", d.Reason)
			return fmt.Errorf("precopy: %s after round %d: %w", d.Reason, round, livemig.ErrNotConverged)
		case SwitchToPostCopy:
			if !m.handOff {
				return fmt.Errorf("precopy: the decider asked for post-copy after round %d (%s), but Migrate cannot go on by post-copy: use package hybrid: %w",
					round, d.Reason, livemig.ErrNotSupported)
			}
			log.Info("handing off to post-copy", "round", round, "left", left, "reason", d.Reason)
			return m.barrierAndHandOff(ctx, round)
		case Stop:
			m.report.Converged = d.Converged
			log.Info("stop-and-copy", "round", round+1, "left", left, "expected_downtime", d.ExpectedDowntime, "reason", d.Reason)
			m.event(Stopping, round+1, left, d.Reason, d.ExpectedDowntime)
			return m.stopAndCopy(ctx, round+1)
		}
		round++
	}
}

// stopAndCopy pauses the source, sends what is left and the state, and
// hands the guest over.
func (m *migration) stopAndCopy(ctx context.Context, round int) error {
	pauseAt := m.cfg.Clock.Now()
	if err := m.src.VM.Pause(ctx); err != nil {
		return fmt.Errorf("precopy: pause source: %w", err)
	}
	m.paused = true
	if err := m.conn.Send(ctx, transport.Msg{Kind: wire.KindSwitchover, Page: m.session, Arg: uint64(round)}); err != nil {
		return m.linkErr("switchover", err)
	}
	if err := m.src.Dirty.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("precopy: final sync of the dirty log: %w", err)
	}
	if m.cfg.Order != nil {
		m.cfg.Order.Observe(m.dirty)
	}
	r := livemig.Round{Index: round, Final: true, Start: pauseAt.Sub(m.start), DirtyPages: bitmap.CountWords(m.dirty)}
	b0 := m.wireBytes()
	m.startRound(&r)
	if err := m.sendRound(ctx, &r, false); err != nil {
		return err
	}
	if err := m.endRound(ctx, &r); err != nil {
		return err
	}
	state, err := m.src.VM.SaveState(ctx, nil)
	if err != nil {
		return fmt.Errorf("precopy: save source state: %w", err)
	}
	m.report.StateBytes = uint64(len(state))
	if err := m.conn.Send(ctx, transport.Msg{Kind: wire.KindState, Data: state}); err != nil {
		return m.linkErr("state", err)
	}
	var sum uint64
	if m.digest != nil {
		sum = m.digest.Sum()
	}
	m.doneSent = true
	if err := m.conn.Send(ctx, transport.Msg{Kind: wire.KindDone, Arg: sum}); err != nil {
		return m.linkErr("done", err)
	}
	r.Bytes = m.wireBytes() - b0 // the state wrote the last batch, the Done is written
	m.report.BytesSent = m.wireBytes()
	// The guest is paused: the log must be empty now, or Pause lied and
	// the pages sent may be stale. Checked while the destination verifies
	// (before the Commit, outside the time it needs).
	if err := m.src.Dirty.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("precopy: sync of the dirty log after stop-and-copy: %w", err)
	}
	if n := bitmap.CountWords(m.dirty); n > 0 {
		var first uint
		if b, err := bitmap.FromWords(m.dirty, m.pages); err == nil {
			first, _ = b.BitSet().NextSet(0)
		}
		clear(m.dirty)
		return fmt.Errorf("precopy: VM.Pause returned but the guest went on writing: %d pages (the first %d) dirtied after the pause; Pause must return only once the guest writes no more: %w",
			n, first, livemig.ErrNotSupported)
	}
	ack, err := m.await(ctx, wire.AckReady)
	if err != nil {
		return err
	}
	if m.digest != nil {
		if ack.Page != sum {
			return fmt.Errorf("precopy: destination digest %016x, source %016x: %w", ack.Page, sum, livemig.ErrVerify)
		}
		m.report.Verified = true
	}
	if err := m.commit(ctx); err != nil {
		return err
	}
	now := m.cfg.Clock.Now()
	r.Duration = now.Sub(pauseAt)
	m.report.Rounds = append(m.report.Rounds, r)
	m.report.Downtime = now.Sub(pauseAt)
	m.event(Finished, round, 0, "", 0)
	return nil
}

// commit hands the guest over: it sends the Commit and learns whether the
// destination resumed. It returns nil when it did; an error with m.handed
// cleared when it certainly did not (the caller resumes the source); an
// *InDoubtError, m.handed set, when the outcome is unknown.
func (m *migration) commit(ctx context.Context) error {
	m.handed = true
	err := m.conn.Send(ctx, transport.Msg{Kind: wire.KindCommit})
	if err != nil {
		err = m.linkErr("commit", err)
	} else {
		_, err = m.await(ctx, wire.AckResumed)
	}
	if err == nil {
		// Best effort: a destination that misses it waits for a
		// reconnection that never comes, and then reports success.
		_ = m.conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReleased})
		_ = m.conn.Flush(ctx)
		return nil
	}
	if !wire.NotResumed(err) {
		// The connection failed us: close it, so that the destination,
		// which may see it alive (heartbeats), turns to Reaccept.
		m.conn.Close()
		err = m.resolve(ctx, err)
		if err == nil {
			return nil
		}
	}
	if wire.NotResumed(err) {
		m.handed = false // certain: the destination will not resume
		return fmt.Errorf("precopy: hand-over refused: %w", err)
	}
	m.cfg.Logger.Error("hand-over outcome unknown; the guest stays paused here", "err", err)
	return err
}

// await waits on the return path for an Ack with code want.
func (m *migration) await(ctx context.Context, want uint64) (transport.Msg, error) {
	for {
		var rm retMsg
		var ok bool
		select {
		case rm, ok = <-m.ret:
		case <-ctx.Done():
			return transport.Msg{}, fmt.Errorf("precopy: waiting for the destination: %w", ctx.Err())
		}
		if !ok {
			return transport.Msg{}, m.linkErr("waiting for the destination", m.retErr)
		}
		if err := m.handleReturn(rm); err != nil {
			return transport.Msg{}, err
		}
		if rm.m.Kind == wire.KindAck && rm.m.Arg == want {
			return rm.m, nil
		}
	}
}

// handleReturn turns a return-path message into an error when it is one.
func (m *migration) handleReturn(rm retMsg) error {
	if rm.err != nil {
		m.retErr = rm.err
		return m.linkErr("return path", rm.err)
	}
	switch rm.m.Kind {
	case wire.KindError:
		return wire.PeerErrorOf(rm.m, m.session)
	case wire.KindAck, wire.KindRequest:
		return nil
	}
	return fmt.Errorf("precopy: unexpected %d message on the return path: %w", rm.m.Kind, livemig.ErrCorrupt)
}

// pollReturn looks at the return path without blocking.
func (m *migration) pollReturn() error {
	select {
	case rm, ok := <-m.ret:
		if !ok {
			return m.linkErr("return path", m.retErr)
		}
		return m.handleReturn(rm)
	default:
		return nil
	}
}

func (m *migration) linkErr(what string, err error) error {
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	// A peer's error message explains a broken link better than the break.
	if pe := m.peerFail.Load(); pe != nil {
		return errors.Join(pe, fmt.Errorf("precopy: %s: %w", what, err))
	}
	return fmt.Errorf("precopy: %s: %w", what, err)
}

// sendRound sends every page (all) or the pages set in m.dirty, clearing
// it, in the order cfg.Order gives (ascending page numbers without one).
// Unless the round is final, pages dirtied again before their turn are
// deferred when cfg.Defer is set: they stay dirty in the log and go in a
// later round, so they are not sent twice.
func (m *migration) sendRound(ctx context.Context, r *livemig.Round, all bool) error {
	if m.deferrer != nil {
		m.deferrer.Start(r.Final)
	}
	if all {
		for n := uint64(0); n < m.pages; n++ {
			if err := m.maybeSend(ctx, r, n); err != nil {
				return err
			}
		}
		return nil
	}
	// The bitmap has exactly the guest's words: only the last can hold
	// bits past the last page, which a broken dirty log might set.
	if n, ok := bitmap.Words(m.dirty).NextSet(m.pages); ok {
		return fmt.Errorf("precopy: dirty log reports page %d of %d: %w", n, m.pages, livemig.ErrPageRange)
	}
	if m.cfg.Order != nil {
		m.plan = m.cfg.Order.Plan(m.plan[:0], m.dirty)
		clear(m.dirty)
		for _, n := range m.plan {
			if err := m.maybeSend(ctx, r, n); err != nil {
				return err
			}
		}
		return nil
	}
	for i, w := range m.dirty {
		if w == 0 {
			continue
		}
		m.dirty[i] = 0
		for w != 0 {
			b := bits.TrailingZeros64(w)
			w &= w - 1
			if err := m.maybeSend(ctx, r, uint64(i)*64+uint64(b)); err != nil {
				return err
			}
		}
	}
	return nil
}

// peekInterval is how many planned pages go between two looks at the dirty
// log for deferral. A look is a pass over the bitmap (8 bytes per 64 pages),
// so the interval grows with the guest to keep that pass near 1/32 of the
// page data sent meanwhile; a small guest looks every 64 pages.
func peekInterval(pages uint64) int {
	return int(min(max(uint64(livemig.WordsFor(pages))/16, 64), 4096))
}

// maybeSend sends page n unless it is to be deferred.
func (m *migration) maybeSend(ctx context.Context, r *livemig.Round, n uint64) error {
	if m.deferrer != nil {
		if buf := m.deferrer.Due(); buf != nil {
			if err := m.peeker.PeekDirty(buf); err != nil {
				return fmt.Errorf("precopy: peek at the dirty log: %w", err)
			}
		}
		if m.deferrer.Skip(n) {
			r.Deferred++
			return nil
		}
	}
	return m.sendPage(ctx, r, n)
}

func (m *migration) sendPage(ctx context.Context, r *livemig.Round, n uint64) error {
	if m.pending++; m.pending >= 256 {
		m.pending = 0
		if err := m.pollReturn(); err != nil {
			return err
		}
	}
	if err := m.pipe.Submit(ctx, n); err != nil {
		return m.sendErr(fmt.Sprintf("round %d, page %d", r.Index, n), err)
	}
	if m.codecs {
		if m.observeIn += m.ps; m.observeIn >= observeBytes {
			m.observeLink()
		}
	}
	return nil
}

// observeBytes is how many bytes of pages the engine submits between two
// looks at the link for the codecs' adaptation, besides the one at each
// round's end: a bulk round of a large guest would otherwise run its whole
// length on a codec slower than the link (16 GiB at 10 Gbit/s: 14 s).
const observeBytes = 32 << 20

// observeLink tells the pipeline the link's capacity as measured since the
// last look, and starts a new measure.
func (m *migration) observeLink() {
	t, b := time.Duration(m.sendTime.Swap(0)), m.sendBytes.Swap(0)
	m.observeIn = 0
	if t > 0 && b > 0 {
		m.pipe.ObserveLink(float64(b) / t.Seconds())
	}
}

// send puts one record from the pipeline on the link (from one goroutine at
// a time) and counts re-sent pages.
func (m *migration) send(msg transport.Msg) error {
	var err error
	if m.codecs { // the link's capacity feeds the codecs' adaptation
		t0 := m.cfg.Clock.Now()
		err = m.conn.Send(m.sendCtx, msg)
		m.sendTime.Add(int64(m.cfg.Clock.Now().Sub(t0)))
		m.sendBytes.Add(transport.RecordOverhead + uint64(len(msg.Data)))
	} else {
		err = m.conn.Send(m.sendCtx, msg)
	}
	if err != nil {
		return err
	}
	if !bitmap.Words(m.sent).Set(msg.Page) {
		m.resent++
	}
	return nil
}

// sendBatch puts a batch frame the pipeline's workers built on the link
// (from one goroutine at a time), as send does one record: it counts the
// re-sent pages first, while the batch still holds its records.
func (m *migration) sendBatch(b *transport.Batch) error {
	for r := range b.Records() {
		if !bitmap.Words(m.sent).Set(r.Page) {
			m.resent++
		}
	}
	if !m.codecs {
		return m.batches.SendBatch(m.sendCtx, b)
	}
	n := b.Len() // the records' bytes, as send counts them
	t0 := m.cfg.Clock.Now()
	err := m.batches.SendBatch(m.sendCtx, b)
	m.sendTime.Add(int64(m.cfg.Clock.Now().Sub(t0)))
	m.sendBytes.Add(uint64(n))
	return err
}

// sendErr explains a pipeline error: a page that could not be read, or the
// link.
func (m *migration) sendErr(what string, err error) error {
	var pe *livemig.PageError
	if errors.As(err, &pe) {
		return fmt.Errorf("precopy: %s: %w", what, err)
	}
	return m.linkErr(what, err)
}

// startRound readies the pipeline for a round.
func (m *migration) startRound(r *livemig.Round) {
	m.pipe.StartRound(r.Index, r.Final)
}

// endRound waits until the round's pages are on the link and adds the
// round's figures to r and the report.
func (m *migration) endRound(ctx context.Context, r *livemig.Round) error {
	if err := m.pipe.Barrier(ctx); err != nil {
		return m.sendErr(fmt.Sprintf("end of round %d", r.Index), err)
	}
	pages, zero, _ := m.pipe.RoundStats()
	r.PagesSent, r.ZeroPages = pages, zero
	m.report.PagesSent += pages
	m.report.ZeroPages += zero
	m.report.PagesResent = m.resent
	if m.codecs {
		st := m.pipe.Stats()
		m.report.Codec = &st
		m.observeLink()
	}
	return nil
}

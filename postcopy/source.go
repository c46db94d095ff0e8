package postcopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/internal/handover"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

// recordOverhead is the wire cost of a page record besides its data.
const recordOverhead = transport.RecordOverhead

// Migrate migrates src to the destination at the other end of conn with
// post-copy, and returns its report. (A hybrid migration's pre-copy rounds
// are pre-copy's: precopy.HandOff, then Continue.)
//
// conn must have completed its handshake (transport.Open) with a peer of the
// same page geometry; Migrate owns it (and cfg.Urgent) from then on and
// closes it before it returns. The destination runs Receive. src.Dirty is
// not needed.
//
// The source pauses the guest, sends (after pre-copy rounds) the list of pages whose copy
// at the destination went stale, the switchover and the CPU/device state;
// once the destination has loaded the state (Ack(AckReady)) the source hands
// the guest over (Commit) and the destination resumes it at once. Then the
// source pushes every page the destination does not hold, in cfg.Order,
// serving the destination's requests first (with cfg.Prepage neighbours),
// sends Done with the digest of every page as at pause time, and returns
// when the destination confirms it holds and verified them all
// (Ack(AckComplete)).
//
// Failure before the hand-over is clean, as in pre-copy: the source guest is
// resumed, the destination is told and never resumes (with Redial, a
// destination that may wait for the source to come back is told on a new
// connection). After the Commit the source resumes only when the
// destination promised, for this session, that it did not resume
// (wire.ErrorNotResumed); otherwise the guest runs at the destination,
// and the source finishes after the destination's AckComplete (a
// destination that completed answers a source that missed it). A cut link
// is then recovered with cfg.Redial (the destination says which pages it
// holds and the push goes on); without Redial, or when recovery fails, the
// error wraps livemig.ErrIncomplete and the source must be kept, paused, with
// its memory: the guest's memory is split between the two hosts. The report
// returned with an error holds the figures up to the failure.
func Migrate(ctx context.Context, conn transport.Conn, src livemig.Source, cfg Config) (*livemig.Report, error) {
	return migrate(ctx, conn, src, cfg, nil)
}

// Continue goes on by post-copy where pre-copy's rounds left a migration
// (precopy.HandOff), as Migrate does from its start: it has the copies the
// rounds left stale discarded at the destination while the guest still
// runs, pauses it, names the pages it wrote since, and hands it over; the
// push sends every page not current at the destination. src must be the
// one the rounds migrated, with its Dirty log; the report goes on from
// h.Report's rounds and figures. Continue owns h.Conn (and cfg.Urgent, which
// must have been opened with it) and closes them. The failure rules are
// Migrate's.
func Continue(ctx context.Context, h *precopy.Handoff, src livemig.Source, cfg Config) (*livemig.Report, error) {
	if h == nil || h.Conn == nil || h.Report == nil {
		if h != nil && h.Conn != nil {
			h.Conn.Close()
		}
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
		return nil, errors.New("postcopy: Continue needs a Handoff with its Conn and Report")
	}
	return migrate(ctx, h.Conn, src, cfg, h)
}

// migrate is Migrate, or with h Continue.
func migrate(ctx context.Context, conn transport.Conn, src livemig.Source, cfg Config, h *precopy.Handoff) (*livemig.Report, error) {
	cfg.setDefaults()
	closeAll := func() {
		conn.Close()
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
	}
	if err := cfg.validate(); err != nil {
		closeAll()
		return nil, err
	}
	if src.Memory == nil || src.VM == nil || (h != nil && src.Dirty == nil) {
		closeAll()
		return nil, errors.New("postcopy: Source needs Memory and VM, and Dirty after pre-copy rounds")
	}
	m := &migration{cfg: cfg, src: src, log: cfg.Logger, pages: src.Memory.PageCount(), ps: src.Memory.PageSize()}
	if h == nil {
		m.report = &livemig.Report{Algorithm: "post-copy", GuestPages: m.pages, PageSize: m.ps}
		if !cfg.NoVerify {
			m.digest = verify.New(m.pages, m.ps)
		}
		m.session = rand.Uint64() | 1
		m.start = cfg.Clock.Now()
	} else {
		m.report, m.digest, m.session, m.start = h.Report, h.Digest, h.Session, h.Start
		m.report.Algorithm = "hybrid"
		m.wirePast, m.precopied = h.Report.BytesSent, true
	}
	m.view, _ = src.Memory.(livemig.PageView)
	m.mainSend, m.urgSend = m.newSender(), m.newSender()
	m.wake, m.uwake = make(chan struct{}, 1), make(chan struct{}, 1)
	core, err := NewCore(CoreConfig{Pages: m.pages, PageSize: m.ps,
		PushBandwidth: cfg.PushBandwidth, LZ4: cfg.LZ4, Order: cfg.Order, Prepage: cfg.Prepage, Urgent: cfg.Urgent != nil}, m.start)
	if err == nil && h != nil {
		err = core.AfterPreCopy(h.Sent, h.Dirty, h.Report)
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	m.core = core
	m.s = m.newSession(ctx, conn, cfg.Urgent)
	err = m.run(ctx)
	m.s.close()
	m.fillReport()
	return m.report, err
}

type retMsg struct {
	m   transport.Msg
	err error
}

// session is one connection (and its urgent twin) with the goroutines that
// serve it: the return-path reader and, with an urgent connection, the
// urgent sender.
type session struct {
	conn, urgent transport.Conn
	ret          chan retMsg   // the return path, but requests
	readerDone   chan struct{} // closed when the reader has ended
	stop         chan struct{}
	wg           sync.WaitGroup
	failOnce     sync.Once
	failed       chan struct{}
	failErr      error
	closeOnce    sync.Once
	base         uint64 // counted() when the session began
}

// counted returns the bytes the session's connections have written to
// their links (both are transport.Meters: see newSession).
func (s *session) counted() uint64 {
	n, _ := transport.Written(s.conn)
	if s.urgent != nil {
		u, _ := transport.Written(s.urgent)
		n += u
	}
	return n
}

// written returns the bytes written on the session's connections.
func (s *session) written() uint64 { return s.counted() - s.base }

func (s *session) fail(err error) {
	s.failOnce.Do(func() {
		s.failErr = err
		close(s.failed)
	})
}

// close closes the connections and waits for the session's goroutines.
func (s *session) close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.conn.Close()
		if s.urgent != nil {
			s.urgent.Close()
		}
		s.wg.Wait()
	})
}

// migration is Migrate's driver around a Core: the goroutines, the
// connections, the guest and the protocol's exchanges. Every decision of
// what to send when is the Core's.
type migration struct {
	cfg    Config
	src    livemig.Source
	log    *slog.Logger
	pages  uint64
	ps     int
	report *livemig.Report
	digest *verify.Digest
	view   livemig.PageView

	mu   sync.Mutex // guards core
	core *Core
	// wake and uwake tell the main and the urgent sender that the Core may
	// have something new for them (a request came, the marker went out).
	wake, uwake chan struct{}

	start, endAt   time.Time
	resumedAt      time.Time
	paused, handed bool
	precopied      bool // pre-copy's rounds came first (Continue)
	session        uint64
	reconnects     int
	dstStats       destStats
	haveStats      bool
	pushDoneEvent  bool
	timer          *time.Timer // sleep's, on the wall clock
	unflushed      bool        // pages written on the main connection since its last flush

	// mainSend sends from the goroutine that runs the migration; urgSend
	// from the urgent sender.
	mainSend, urgSend *pageSender

	s        *session
	wirePast uint64 // bytes written on the sessions before s

	peerFail  atomic.Pointer[wire.PeerError] // the destination's KindError, once it came
	stateSent bool                           // the destination may wait for us in doubt
}

// cutError marks a failure of the link (as opposed to the peer's or the
// guest's), which a reconnection may repair.
type cutError struct{ err error }

func (e *cutError) Error() string { return e.err.Error() }
func (e *cutError) Unwrap() error { return e.err }

// next asks the Core for the next step on a connection.
func (m *migration) next(urgent bool) Out {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.core.Next(m.cfg.Clock.Now(), urgent)
}

// kick wakes both senders.
func (m *migration) kick() {
	for _, c := range [...]chan struct{}{m.wake, m.uwake} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (m *migration) event(k EventKind, round int, pages uint64, err error) {
	if m.cfg.OnEvent == nil {
		return
	}
	m.mu.Lock()
	sent := m.core.PagesSent()
	m.mu.Unlock()
	m.cfg.OnEvent(Event{Kind: k, Round: round, Pages: pages, PagesSent: sent,
		Elapsed: m.cfg.Clock.Now().Sub(m.start), Err: err})
}

func (m *migration) newSession(ctx context.Context, conn, urgent transport.Conn) *session {
	conn = transport.Metered(conn)
	if urgent != nil {
		urgent = transport.Metered(urgent)
	}
	s := &session{
		conn: conn, urgent: urgent,
		ret:        make(chan retMsg, 256),
		stop:       make(chan struct{}),
		readerDone: make(chan struct{}),
		failed:     make(chan struct{}),
	}
	s.base = s.counted()
	s.wg.Add(1)
	go m.reader(ctx, s)
	return s
}

// reader gives the destination's requests to the Core and forwards
// everything else to s.ret.
func (m *migration) reader(ctx context.Context, s *session) {
	defer s.wg.Done()
	defer close(s.readerDone)
	var msg transport.Msg // one for the loop: Recv's argument escapes
	for {
		err := s.conn.Recv(ctx, &msg)
		if err == nil && msg.Kind == wire.KindRequest {
			m.mu.Lock()
			err := m.core.Request(msg.Page, msg.Arg)
			m.mu.Unlock()
			if err != nil {
				s.fail(err)
				m.kick()
				return
			}
			m.kick()
			continue
		}
		if err == nil {
			msg.Data = bytes.Clone(msg.Data)
			if msg.Kind == wire.KindError {
				// Stop the migration at once, even inside a blocked send:
				// the destination has given up (no recovery follows).
				m.peerFail.Store(wire.PeerErrorOf(msg, m.session))
				s.conn.Close()
				if s.urgent != nil {
					s.urgent.Close()
				}
			}
		}
		select {
		case s.ret <- retMsg{msg, err}:
		case <-s.stop:
			return
		}
		m.kick()
		if err != nil {
			return
		}
	}
}

func (m *migration) run(ctx context.Context) (err error) {
	defer func() {
		m.endAt = m.cfg.Clock.Now()
		if err == nil {
			return
		}
		err = m.explain(m.s, err)
		if pe := m.peerFail.Load(); pe != nil && !errors.Is(err, livemig.ErrPeer) {
			err = errors.Join(pe, err)
		}
		if m.handed && m.resumedAt.IsZero() && wire.NotResumed(err) {
			// The Commit went out but the destination promised it never
			// resumed: the guest may run here again.
			m.handed = false
		}
		if m.handed {
			if !errors.Is(err, livemig.ErrIncomplete) {
				err = fmt.Errorf("postcopy: guest handed over, memory not all at the destination: %w (%w)", livemig.ErrIncomplete, err)
			}
			m.log.Error("post-copy failed after the hand-over; keep the source's memory", "err", err)
			return
		}
		// Clean failure: resume the source first (the destination cannot
		// resume without the Commit), then tell the destination.
		bg := context.WithoutCancel(ctx)
		if m.paused {
			if rerr := m.src.VM.Resume(bg); rerr != nil {
				err = errors.Join(err, fmt.Errorf("postcopy: resume source after failure: %w", rerr))
			}
			m.paused = false
		}
		tell, cancel := context.WithTimeout(bg, 2*time.Second)
		_ = m.s.conn.Send(tell, transport.Msg{Kind: wire.KindError, Data: []byte(err.Error())})
		cancel()
		if m.stateSent && m.cfg.Redial != nil && !errors.Is(err, livemig.ErrPeer) {
			handover.Abandon(bg, m.cfg.Redial, m.session, err)
		}
		m.log.Info("post-copy failed before the hand-over; source resumed", "err", err)
	}()
	if err := m.beforePause(ctx); err != nil {
		return err
	}
	if err := m.switchover(ctx); err != nil && !m.handed {
		return err
	} else if err != nil {
		// The Commit may have arrived: recover as after any cut.
		return m.postCopy(ctx, err)
	}
	return m.postCopy(ctx, nil)
}

// beforePause carries out the Core's steps up to the pause: after pre-copy's
// rounds, the discard of the copies they left stale.
func (m *migration) beforePause(ctx context.Context) error {
	for {
		o := m.next(false)
		switch o.Op {
		case OpDiscard:
			if err := m.discardEarly(ctx, o.Stale); err != nil {
				return err
			}
			m.mu.Lock()
			m.core.Discarded()
			m.mu.Unlock()
		case OpPause:
			return nil
		default:
			return fmt.Errorf("postcopy: core asked for %v before the pause (a bug)", o.Op)
		}
	}
}

// discardEarly names to the destination, while the guest still runs here,
// the copies the last pre-copy round left stale, and waits until it has
// made them missing. With userfaultfd memory that is a madvise per page
// (about 3 µs: BenchmarkDiscard in package faultmem), which would
// otherwise fall inside the downtime; the switchover then discards only
// what the guest dirtied since. It waits for the Ack(AckRound) that an
// EndRound flagged wire.FlagAck asks for (an EndRound that ends no round).
func (m *migration) discardEarly(ctx context.Context, stale []uint64) error {
	if err := m.sendDiscard(ctx, stale); err != nil {
		return err
	}
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: uint64(m.core.Round()-1) | wire.FlagAck}); err != nil {
		return linkErr("discard", err)
	}
	if err := m.s.conn.Flush(ctx); err != nil {
		return linkErr("discard", err)
	}
	if _, err := m.await(ctx, m.s, wire.AckRound); err != nil {
		return err
	}
	m.log.Debug("stale copies discarded before the pause", "pages", bitmap.CountWords(stale))
	return nil
}

// sendDiscard sends the pages set in stale as Discard chunks.
func (m *migration) sendDiscard(ctx context.Context, stale []uint64) error {
	if _, err := bitmapChunks(stale, nil, func(first uint64, data []byte) error {
		return m.s.conn.Send(ctx, transport.Msg{Kind: wire.KindDiscard, Page: first, Data: data})
	}); err != nil {
		return linkErr("discard", err)
	}
	return nil
}

// switchover pauses the source, discards stale copies at the destination,
// sends the state and hands the guest over.
func (m *migration) switchover(ctx context.Context) error {
	round := m.core.Round()
	m.event(Pausing, round, 0, nil)
	if err := m.src.VM.Pause(ctx); err != nil {
		return fmt.Errorf("postcopy: pause source: %w", err)
	}
	m.paused = true
	if m.precopied {
		if err := m.src.Dirty.SyncDirty(m.core.DirtyLog()); err != nil {
			return fmt.Errorf("postcopy: sync dirty log: %w", err)
		}
	}
	m.mu.Lock()
	m.core.Written(m.wireBytes())
	stale, err := m.core.Paused(m.cfg.Clock.Now())
	toPush := m.core.ToPush()
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if err := m.sendDiscard(ctx, stale.Stale); err != nil {
		return err
	}
	arg := uint64(round) | wire.FlagPostCopy
	if m.s.urgent != nil {
		arg |= wire.FlagUrgent
	}
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: wire.KindSwitchover, Page: m.session, Arg: arg}); err != nil {
		return linkErr("switchover", err)
	}
	state, err := m.src.VM.SaveState(ctx, nil)
	if err != nil {
		return fmt.Errorf("postcopy: save source state: %w", err)
	}
	m.report.StateBytes = uint64(len(state))
	m.stateSent = true
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: wire.KindState, Data: state}); err != nil {
		return linkErr("state", err)
	}
	if _, err := m.await(ctx, m.s, wire.AckReady); err != nil {
		return err
	}
	// From here on the guest may run at the destination: never resume it
	// here. The push is planned once the Commit is out, outside the
	// downtime (the Core takes in requests that come first).
	m.handed = true
	m.event(HandedOver, round, toPush, nil)
	m.log.Info("guest handed over", "pages_to_push", toPush, "session", m.session)
	serr := m.s.conn.Send(ctx, transport.Msg{Kind: wire.KindCommit})
	m.mu.Lock()
	err = m.core.Committed(m.cfg.Clock.Now())
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if serr != nil {
		return linkErr("commit", serr)
	}
	return nil
}

// postCopy pushes the pages and finishes, reconnecting after cuts; err is
// a failure of the hand-over's Commit, to recover from first.
func (m *migration) postCopy(ctx context.Context, err error) error {
	if m.s.urgent != nil && err == nil {
		m.s.wg.Add(1)
		go m.urgentSender(ctx, m.s)
	}
	for {
		if err == nil {
			err = m.pushAndFinish(ctx, m.s)
		}
		if err == nil {
			return nil
		}
		err = m.explain(m.s, err)
		var ce *cutError
		if !errors.As(err, &ce) || ctx.Err() != nil {
			return err
		}
		if pe := m.peerFail.Load(); pe != nil {
			return errors.Join(pe, err) // the destination gave up: nothing to recover
		}
		m.event(LinkCut, m.core.Round(), 0, err)
		m.log.Info("link cut after the hand-over", "err", err)
		m.s.close()
		if m.cfg.Redial == nil {
			return fmt.Errorf("postcopy: link cut after the hand-over and no Redial: %w (%w)", livemig.ErrIncomplete, err)
		}
		if m.reconnects >= m.cfg.MaxReconnects {
			return fmt.Errorf("postcopy: link cut %d times: %w (%w)", m.reconnects+1, livemig.ErrIncomplete, err)
		}
		m.reconnects++
		err = m.reconnect(ctx)
		var done *completedError
		if errors.As(err, &done) {
			return m.complete(done.ack)
		}
	}
}

// completedError is reconnect's answer when the destination says, on the
// new connection, that it had completed (Ack(AckComplete) in ack).
type completedError struct{ ack transport.Msg }

func (e *completedError) Error() string { return "postcopy: the destination had completed" }

// reconnect opens a new connection, learns which pages the destination
// holds and starts a session on it.
func (m *migration) reconnect(ctx context.Context) error {
	if err := handover.Sleep(ctx, handover.Backoff(m.reconnects)); err != nil {
		return fmt.Errorf("postcopy: redial: %w (%w)", livemig.ErrIncomplete, err)
	}
	conn, err := m.cfg.Redial(ctx)
	if err != nil {
		// Maybe the destination has not noticed the cut yet: try again
		// (up to MaxReconnects).
		return &cutError{fmt.Errorf("postcopy: redial: %w (%w)", livemig.ErrIncomplete, err)}
	}
	var urgent transport.Conn
	fail := func(err error) error {
		conn.Close()
		if urgent != nil {
			urgent.Close()
		}
		return err
	}
	var arg uint64
	if m.cfg.RedialUrgent != nil {
		arg |= wire.FlagUrgent
	}
	if err := conn.Send(ctx, transport.Msg{Kind: wire.KindResume, Page: m.session, Arg: arg}); err != nil {
		return fail(&cutError{fmt.Errorf("postcopy: resume: %w", err)})
	}
	if err := conn.Flush(ctx); err != nil {
		return fail(&cutError{fmt.Errorf("postcopy: resume: %w", err)})
	}
	if m.cfg.RedialUrgent != nil {
		u, err := m.cfg.RedialUrgent(ctx)
		if err != nil {
			return fail(&cutError{fmt.Errorf("postcopy: redial the urgent connection: %w", err)})
		}
		urgent = u
	}
	held := bitmap.New(m.pages)
	if err := m.awaitHeld(ctx, conn, held); err != nil {
		return fail(err)
	}
	m.mu.Lock()
	err = m.core.Reconnected(m.cfg.Clock.Now(), held.Words(), urgent != nil)
	m.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	m.wirePast += m.s.written() // the old session's, closed
	m.s = m.newSession(ctx, conn, urgent)
	if urgent != nil {
		m.s.wg.Add(1)
		go m.urgentSender(ctx, m.s)
	}
	n := held.Count()
	m.event(Reconnected, m.core.Round(), m.pages-n, nil)
	m.log.Info("reconnected", "held", n, "left", m.pages-n, "urgent", urgent != nil)
	return nil
}

// awaitHeld reads the destination's answer to KindResume on conn: the
// pages it holds, into held, and Ack(AckHeld); or that it had completed
// (*completedError).
func (m *migration) awaitHeld(ctx context.Context, conn transport.Conn, held *bitmap.Bitmap) error {
	for {
		var msg transport.Msg
		if err := conn.Recv(ctx, &msg); err != nil {
			return &cutError{fmt.Errorf("postcopy: receive the destination's bitmap: %w", err)}
		}
		switch {
		case msg.Kind == wire.KindRecvBitmap:
			if err := applyBitmap(msg, m.pages, held.Set); err != nil {
				return fmt.Errorf("postcopy: destination's bitmap: %w", err)
			}
		case msg.Kind == wire.KindAck && msg.Arg == wire.AckResumed:
			m.noteResumed()
		case msg.Kind == wire.KindAck && msg.Arg == wire.AckComplete:
			// The destination finished before the cut: only its answer
			// was lost.
			msg.Data = bytes.Clone(msg.Data)
			_ = conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReleased})
			_ = conn.Flush(ctx)
			return &completedError{msg}
		case msg.Kind == wire.KindAck && msg.Arg == wire.AckHeld:
			if got := held.Count(); got != msg.Page {
				return fmt.Errorf("postcopy: destination holds %d pages, its bitmap names %d: %w", msg.Page, got, livemig.ErrCorrupt)
			}
			return nil
		case msg.Kind == wire.KindError:
			return wire.PeerErrorOf(msg, m.session)
		default:
			return fmt.Errorf("postcopy: %v message while reconnecting: %w", msg.Kind, livemig.ErrCorrupt)
		}
	}
}

// pushSlack is how far the push may fall behind its Config.PushBandwidth
// schedule and still catch up by sending at once. A sleep overshoots (a
// wall-clock sleep shorter than a millisecond takes about one on Linux, the
// runtime's poller waits in whole milliseconds): without the catch-up the
// time lost was never made up, and a push capped at 64 MiB/s, one sleep a
// page, ran at 4 MiB/s. It bounds the burst after the push was held back
// (by requests, a slow link) to 5 ms of its bandwidth.
const pushSlack = 5 * time.Millisecond

// pushAndFinish carries out the Core's post-copy steps on the main
// connection: requested pages without an urgent connection, the push, and
// Done, then waits for the destination's confirmation.
func (m *migration) pushAndFinish(ctx context.Context, s *session) error {
	for pushed := uint64(0); ; {
		if err := m.poll(ctx, s); err != nil {
			return err
		}
		o := m.next(false)
		switch o.Op {
		case OpPage:
			if err := m.sendPage(ctx, s.conn, m.mainSend, o); err != nil {
				return err
			}
			m.unflushed = true
			if o.Flush {
				if err := s.conn.Flush(ctx); err != nil {
					return linkErr("flush requested pages", err)
				}
				m.unflushed = false
			}
			if !o.Pulled {
				if pushed++; pushed%PushEventEvery == 0 {
					m.event(Pushing, m.core.Round(), m.sentSincePause(), nil)
				}
			}
			continue
		case OpWait, OpIdle:
			if m.unflushed && o.Flush {
				if err := s.conn.Flush(ctx); err != nil {
					return linkErr("push", err)
				}
				m.unflushed = false
			}
			m.pushDone()
			select { // the urgent sender may have its end marker to send
			case m.uwake <- struct{}{}:
			default:
			}
			if err := m.sleep(ctx, s, o.At); err != nil {
				return err
			}
			continue
		case OpDone:
		default:
			return fmt.Errorf("postcopy: core asked for %v in the push (a bug)", o.Op)
		}
		m.pushDone()
		var sum uint64
		if m.digest != nil {
			sum = m.digest.Sum()
		}
		if err := s.conn.Send(ctx, transport.Msg{Kind: wire.KindDone, Arg: sum}); err != nil {
			return linkErr("done", err)
		}
		ack, err := m.await(ctx, s, wire.AckComplete)
		if err != nil {
			return err
		}
		_ = s.conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReleased})
		_ = s.conn.Flush(ctx)
		return m.complete(ack)
	}
}

// pushDone reports the PushDone event once the Core has sent every page.
func (m *migration) pushDone() {
	m.mu.Lock()
	done := m.core.PushDone()
	m.mu.Unlock()
	if done && !m.pushDoneEvent {
		m.pushDoneEvent = true
		m.event(PushDone, m.core.Round(), m.sentSincePause(), nil)
	}
}

func (m *migration) sentSincePause() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.core.SentSincePause()
}

// complete takes the destination's Ack(AckComplete): it checks the digest
// and keeps the destination's figures.
func (m *migration) complete(ack transport.Msg) error {
	if m.digest != nil {
		if sum := m.digest.Sum(); ack.Page != sum {
			return fmt.Errorf("postcopy: destination digest %016x, source %016x: %w", ack.Page, sum, livemig.ErrVerify)
		}
		m.report.Verified = true
	}
	st, err := parseStats(ack.Data)
	if err != nil {
		m.log.Warn("destination figures unreadable", "err", err)
	} else {
		m.dstStats, m.haveStats = st, true
	}
	m.event(Finished, m.core.Round(), 0, nil)
	return nil
}

// sleep waits until at on the clock (zero: no deadline), or until the Core
// may have something new (a request, the urgent marker), the return path
// has something, the session fails or ctx ends.
func (m *migration) sleep(ctx context.Context, s *session, at time.Time) error {
	var timer <-chan struct{}
	var wall <-chan time.Time
	if _, ok := m.cfg.Clock.(livemig.WallClock); ok && !at.IsZero() {
		if m.timer == nil {
			m.timer = time.NewTimer(time.Until(at))
		} else {
			m.timer.Reset(time.Until(at))
		}
		defer m.timer.Stop()
		wall = m.timer.C
	} else if !at.IsZero() {
		// Another clock (a virtual one) is waited on in the background.
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		t := make(chan struct{})
		go func() {
			_ = m.cfg.Clock.WaitUntil(wctx, at)
			close(t)
		}()
		timer = t
	}
	select {
	case <-m.wake:
	case <-timer:
	case <-wall:
	case rm := <-s.ret:
		if _, err := m.handleReturn(rm); err != nil {
			return err
		}
	case <-s.failed:
		return s.failErr
	case <-ctx.Done():
		return fmt.Errorf("postcopy: push: %w", ctx.Err())
	}
	return nil
}

// poll handles what the return path holds, without blocking.
func (m *migration) poll(ctx context.Context, s *session) error {
	for {
		select {
		case rm := <-s.ret:
			if _, err := m.handleReturn(rm); err != nil {
				return err
			}
			continue
		case <-s.failed:
			return s.failErr
		default:
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("postcopy: %w", err)
		}
		return nil
	}
}

// await waits on the return path for an Ack with code want, handling what
// comes before it.
func (m *migration) await(ctx context.Context, s *session, want uint64) (transport.Msg, error) {
	for {
		select {
		case rm := <-s.ret:
			ack, err := m.handleReturn(rm)
			if err != nil {
				return transport.Msg{}, err
			}
			if ack && rm.m.Arg == want {
				return rm.m, nil
			}
		case <-s.failed:
			return transport.Msg{}, s.failErr
		case <-ctx.Done():
			return transport.Msg{}, fmt.Errorf("postcopy: waiting for the destination: %w", ctx.Err())
		}
	}
}

// handleReturn acts on a return-path message; ack says it is an Ack the
// caller may be waiting for.
func (m *migration) handleReturn(rm retMsg) (ack bool, err error) {
	if rm.err != nil {
		if errors.Is(rm.err, io.EOF) {
			rm.err = io.ErrUnexpectedEOF
		}
		return false, &cutError{fmt.Errorf("postcopy: return path: %w", rm.err)}
	}
	switch rm.m.Kind {
	case wire.KindError:
		return false, wire.PeerErrorOf(rm.m, m.session)
	case wire.KindAck:
		if rm.m.Arg == wire.AckResumed {
			m.noteResumed()
		}
		return true, nil
	}
	return false, fmt.Errorf("postcopy: unexpected %v message on the return path: %w", rm.m.Kind, livemig.ErrCorrupt)
}

func (m *migration) noteResumed() {
	if m.resumedAt.IsZero() {
		m.resumedAt = m.cfg.Clock.Now()
	}
}

// urgentSender carries out the Core's steps on the urgent connection:
// requested pages as they come, then the end marker once the push is done.
func (m *migration) urgentSender(ctx context.Context, s *session) {
	defer s.wg.Done()
	fail := func(err error) {
		s.fail(err)
		m.kick()
	}
	for {
		o := m.next(true)
		switch o.Op {
		case OpPage:
			if err := m.sendPage(ctx, s.urgent, m.urgSend, o); err != nil {
				fail(err)
				return
			}
			if o.Flush {
				if err := s.urgent.Flush(ctx); err != nil {
					fail(linkErr("flush requested pages", err))
					return
				}
				m.kick() // the push may be waiting on a page just sent
			}
			continue
		case OpMarker:
			if err := s.urgent.Send(ctx, transport.Msg{Kind: wire.KindEndRound, Arg: uint64(o.Round)}); err != nil {
				fail(linkErr("urgent end marker", err))
				return
			}
			if err := s.urgent.Flush(ctx); err != nil {
				fail(linkErr("urgent end marker", err))
				return
			}
			m.mu.Lock()
			m.core.Wrote(o, 0, 0)
			m.mu.Unlock()
			m.kick()
			continue
		}
		select {
		case <-m.uwake:
		case <-s.stop:
			return
		case <-ctx.Done():
			return
		}
	}
}

// pageSender is what one goroutine needs to send pages: a page buffer
// (unused when the memory has views), an encoder and its output buffer.
type pageSender struct {
	buf, out []byte
	enc      *codec.PageEncoder
}

func (m *migration) newSender() *pageSender {
	return &pageSender{buf: make([]byte, m.ps), out: make([]byte, 0, m.ps), enc: &codec.PageEncoder{LZ4: m.cfg.LZ4}}
}

// sendPage reads the page of step o, sends it on conn, encoded by ps.enc,
// and tells the Core.
func (m *migration) sendPage(ctx context.Context, conn transport.Conn, ps *pageSender, o Out) error {
	n := o.Page
	var page []byte
	if m.view != nil {
		v, err := m.view.View(n)
		if err != nil {
			return &livemig.PageError{Op: "read", Page: n, Err: err}
		}
		page = v
	} else {
		if err := m.src.Memory.ReadPage(n, ps.buf); err != nil {
			return &livemig.PageError{Op: "read", Page: n, Err: err}
		}
		page = ps.buf
	}
	msg := transport.Msg{Kind: wire.KindPage, Page: n}
	msg.Enc, msg.Data = ps.enc.Encode(ps.out[:0], page)
	if m.digest != nil {
		switch {
		case msg.Enc == transport.EncZero:
			m.digest.Zero(n)
		case msg.Enc == transport.EncRaw && m.view == nil:
			// page is ps.buf, which holds still: the transport takes its
			// CRC for the frame's instead of reading it again (not a
			// PageView, which the guest may change before the copy).
			msg.DataCRC, msg.HaveCRC = verify.CRC(page), true
			m.digest.UpdateCRC(n, msg.DataCRC)
		default:
			m.digest.Update(n, page)
		}
	}
	if err := conn.Send(ctx, msg); err != nil {
		return linkErr(fmt.Sprintf("page %d", n), err)
	}
	m.mu.Lock()
	m.core.Wrote(o, msg.Enc, len(msg.Data))
	m.mu.Unlock()
	return nil
}

// linkErr wraps a failed send or flush as a cut of the link.
func linkErr(what string, err error) error {
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return &cutError{fmt.Errorf("postcopy: %s: %w", what, err)}
}

// explain replaces a cut by the destination's error message when one is
// already on the return path: a peer that gives up closes the link, and its
// message says why. Only the migrating goroutine calls it.
//
// A peer that gives up sends its message and closes: a write of ours can
// fail on the close before the return-path reader has read the message
// ahead of it. So explain waits for the reader up to explainWait: it
// gets the message, or the link's end, at once when the peer closed, and
// a link that merely stalls costs that much before a reconnection.
func (m *migration) explain(s *session, err error) error {
	var ce *cutError
	if !errors.As(err, &ce) {
		return err
	}
	wait := time.NewTimer(explainWait)
	defer wait.Stop()
	for {
		select {
		case rm := <-s.ret:
			if rm.err == nil && rm.m.Kind == wire.KindError {
				return errors.Join(wire.PeerErrorOf(rm.m, m.session), err)
			}
			if rm.err != nil {
				return err
			}
		case <-s.readerDone:
			return err
		case <-wait.C:
			return err
		}
	}
}

// explainWait bounds how long explain waits for the peer's last words.
const explainWait = 50 * time.Millisecond

// wireBytes returns the bytes written on every connection of the
// migration so far.
func (m *migration) wireBytes() uint64 { return m.wirePast + m.s.written() }

// fillReport completes the report from the Core's figures.
func (m *migration) fillReport() {
	m.mu.Lock()
	m.core.Written(m.wireBytes())
	m.core.Fill(m.report, m.endAt, m.resumedAt, m.handed)
	m.mu.Unlock()
	if m.handed && m.haveStats {
		pc, d := m.report.PostCopy, m.dstStats
		pc.DemandFaults, pc.FaultP50, pc.FaultP99, pc.FaultMax, pc.WaitTotal, pc.LastPage =
			d.Faults, d.P50, d.P99, d.Max, d.WaitTotal, d.LastPage
	}
}

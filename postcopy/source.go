package postcopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
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
)

// recordOverhead is the wire cost of a page record besides its data.
const recordOverhead = transport.RecordOverhead

// urgentFlag, in KindSwitchover's Arg, says the source sends requested pages
// on the urgent connection; the low 32 bits are the round number.
const urgentFlag = 1 << 32

// ackFlag, in KindEndRound's Arg, asks the destination for Ack(AckRound)
// once it has applied everything sent before: the source waits so on the
// discards it sends before the pause (see discardEarly). Such an EndRound
// ends no round.
const ackFlag = 1 << 33

// Migrate migrates src to the destination at the other end of conn with
// post-copy, after cfg.PreCopyRounds pre-copy rounds (hybrid), and returns
// its report.
//
// conn must have completed its handshake (transport.Open) with a peer of the
// same page geometry; Migrate owns it (and cfg.Urgent) from then on and
// closes it before it returns. The destination runs Receive. src.Dirty is
// needed only with pre-copy rounds.
//
// The source pauses the guest, sends (hybrid) the list of pages whose copy
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
// (transport.ErrorNotResumed); otherwise the guest runs at the destination,
// and the source finishes after the destination's AckComplete (a
// destination that completed answers a source that missed it). A cut link
// is then recovered with cfg.Redial (the destination says which pages it
// holds and the push goes on); without Redial, or when recovery fails, the
// error wraps livemig.ErrIncomplete and the source must be kept, paused, with
// its memory: the guest's memory is split between the two hosts. The report
// returned with an error holds the figures up to the failure.
func Migrate(ctx context.Context, conn transport.Conn, src precopy.Source, cfg Config) (*livemig.Report, error) {
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
	if src.Memory == nil || src.VM == nil || (cfg.PreCopyRounds > 0 && src.Dirty == nil) {
		closeAll()
		return nil, errors.New("postcopy: Source needs Memory and VM, and Dirty for pre-copy rounds")
	}
	m := &migration{cfg: cfg, src: src, log: cfg.Logger, pages: src.Memory.PageCount(), ps: src.Memory.PageSize()}
	m.report = &livemig.Report{Algorithm: "post-copy", GuestPages: m.pages, PageSize: m.ps}
	if cfg.PreCopyRounds > 0 {
		m.report.Algorithm = "hybrid"
	}
	if !cfg.NoVerify {
		m.digest = verify.New(m.pages, m.ps)
	}
	m.view, _ = src.Memory.(livemig.PageView)
	words := livemig.WordsFor(m.pages)
	m.sent = make([]uint64, words)
	m.usent = make([]uint64, words)
	m.ever = make([]uint64, words)
	m.dirty = make([]uint64, words)
	m.session = rand.Uint64() | 1
	m.prepage = NewPrepager(cfg.Prepage)
	m.mainSend, m.urgSend = m.newSender(), m.newSender()
	m.s = m.newSession(ctx, conn, cfg.Urgent)
	err := m.run(ctx)
	m.s.close()
	m.fillReport()
	return m.report, err
}

type retMsg struct {
	m   transport.Msg
	err error
}

type reqRange struct{ page, count uint64 }

// session is one connection (and its urgent twin) with the goroutines that
// serve it: the return-path reader and, with an urgent connection, the
// urgent server.
type session struct {
	conn, urgent transport.Conn
	ret          chan retMsg   // return path, requests too without urgent
	reqs         chan reqRange // requests, with urgent
	stop         chan struct{}
	wg           sync.WaitGroup
	failOnce     sync.Once
	failed       chan struct{}
	failErr      error
	finish       chan struct{} // push done: the urgent server sends its marker
	marked       chan struct{} // the marker is sent
	closeOnce    sync.Once
}

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

type migration struct {
	cfg    Config
	src    precopy.Source
	log    *slog.Logger
	pages  uint64
	ps     int
	report *livemig.Report
	digest *verify.Digest
	view   livemig.PageView

	sent  []uint64 // pages whose current copy is sent or held (atomic)
	usent []uint64 // pages sent on the urgent connection (atomic)
	ever  []uint64 // pages sent at least once (atomic)
	dirty []uint64
	plan  []uint64

	start, pauseAt, endAt time.Time
	resumedAt             time.Time
	paused, handed        bool
	session               uint64
	rounds                []livemig.Round
	toPush                uint64 // pages to push at the switchover
	preSent, preBytes     uint64 // counters at the switchover
	preZero               uint64
	reconnects            int
	nextPush              time.Time
	dstStats              destStats
	haveStats             bool

	nSent, nBytes, nZero, nResent, nPushed, nPulled atomic.Uint64
	nRaw, nEncoded, nLZ4                            atomic.Uint64 // with LZ4: page bytes before and after, LZ4 pages

	// mainSend sends from the goroutine that runs the migration (rounds,
	// push, requests without an urgent connection); urgSend from the
	// urgent server.
	mainSend, urgSend *pageSender

	// Pre-paging policy, owned by the goroutine serving requests.
	prepage *Prepager

	s     *session
	waker atomic.Pointer[context.CancelFunc]

	peerFail  atomic.Pointer[transport.PeerError] // the destination's KindError, once it came
	stateSent bool                                // the destination may wait for us in doubt
}

// cutError marks a failure of the link (as opposed to the peer's or the
// guest's), which a reconnection may repair.
type cutError struct{ err error }

func (e *cutError) Error() string { return e.err.Error() }
func (e *cutError) Unwrap() error { return e.err }

func (m *migration) event(k EventKind, round int, pages uint64, err error) {
	if m.cfg.OnEvent == nil {
		return
	}
	m.cfg.OnEvent(Event{Kind: k, Round: round, Pages: pages, PagesSent: m.nSent.Load(),
		Elapsed: m.cfg.Clock.Now().Sub(m.start), Err: err})
}

func (m *migration) newSession(ctx context.Context, conn, urgent transport.Conn) *session {
	s := &session{
		conn: conn, urgent: urgent,
		ret:    make(chan retMsg, 256),
		stop:   make(chan struct{}),
		failed: make(chan struct{}),
		finish: make(chan struct{}),
		marked: make(chan struct{}),
	}
	if urgent != nil {
		s.reqs = make(chan reqRange, 1024)
	}
	s.wg.Add(1)
	go m.reader(ctx, s)
	return s
}

// reader forwards what the destination says: requests to the urgent server
// (with an urgent connection), everything else to s.ret.
func (m *migration) reader(ctx context.Context, s *session) {
	defer s.wg.Done()
	var msg transport.Msg // one for the loop: Recv's argument escapes
	for {
		err := s.conn.Recv(ctx, &msg)
		if err == nil && msg.Kind == transport.KindRequest && s.reqs != nil {
			select {
			case s.reqs <- reqRange{msg.Page, msg.Arg}:
			case <-s.stop:
				return
			}
			continue
		}
		if err == nil {
			msg.Data = bytes.Clone(msg.Data)
			if msg.Kind == transport.KindError {
				// Stop the migration at once, even inside a blocked send:
				// the destination has given up (no recovery follows).
				m.peerFail.Store(transport.PeerErrorOf(msg, m.session))
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
		m.wakeUp()
		if err != nil {
			return
		}
	}
}

func (m *migration) wakeUp() {
	if c := m.waker.Load(); c != nil {
		(*c)()
	}
}

func (m *migration) run(ctx context.Context) (err error) {
	m.start = m.cfg.Clock.Now()
	defer func() {
		m.endAt = m.cfg.Clock.Now()
		if err == nil {
			return
		}
		err = m.explain(m.s, err)
		if pe := m.peerFail.Load(); pe != nil && !errors.Is(err, livemig.ErrPeer) {
			err = errors.Join(pe, err)
		}
		if m.handed && m.resumedAt.IsZero() && transport.NotResumed(err) {
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
		_ = m.s.conn.Send(tell, transport.Msg{Kind: transport.KindError, Data: []byte(err.Error())})
		cancel()
		if m.stateSent && m.cfg.Redial != nil && !errors.Is(err, livemig.ErrPeer) {
			handover.Abandon(bg, m.cfg.Redial, m.session, err)
		}
		m.log.Info("post-copy failed before the hand-over; source resumed", "err", err)
	}()
	if m.cfg.PreCopyRounds > 0 {
		if err := m.precopyPhase(ctx); err != nil {
			return err
		}
		if err := m.discardEarly(ctx); err != nil {
			return err
		}
	}
	if err := m.switchover(ctx); err != nil && !m.handed {
		return err
	} else if err != nil {
		// The Commit may have arrived: recover as after any cut.
		return m.postCopy(ctx, err)
	}
	return m.postCopy(ctx, nil)
}

// precopyPhase runs up to cfg.PreCopyRounds rounds and leaves in m.dirty the
// pages dirtied since they were last sent.
func (m *migration) precopyPhase(ctx context.Context) error {
	if err := m.src.Dirty.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("postcopy: start dirty log: %w", err)
	}
	clear(m.dirty)
	var left, prev uint64
	for round := 1; ; round++ {
		r := livemig.Round{Index: round, Start: m.cfg.Clock.Now().Sub(m.start), DirtyPages: m.pages}
		if round > 1 {
			r.DirtyPages = left
		}
		m.event(RoundStarted, round, r.DirtyPages, nil)
		t0 := m.cfg.Clock.Now()
		s0, b0, z0 := m.nSent.Load(), m.nBytes.Load(), m.nZero.Load()
		send := func(n uint64) error {
			if (m.nSent.Load()-s0)%256 == 0 {
				if err := m.poll(ctx, m.s); err != nil {
					return err
				}
			}
			atomic.OrUint64(&m.sent[n/64], 1<<(n%64))
			_, err := m.sendPage(ctx, m.s.conn, m.mainSend, n)
			return err
		}
		var err error
		if round == 1 {
			for n := uint64(0); n < m.pages && err == nil; n++ {
				err = send(n)
			}
		} else {
			err = m.eachDirty(m.dirty, true, send)
		}
		if err != nil {
			return err
		}
		if err := m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindEndRound, Arg: uint64(round)}); err != nil {
			return linkErr(fmt.Sprintf("end of round %d", round), err)
		}
		r.Duration = m.cfg.Clock.Now().Sub(t0)
		r.PagesSent, r.Bytes, r.ZeroPages = m.nSent.Load()-s0, m.nBytes.Load()-b0, m.nZero.Load()-z0
		m.rounds = append(m.rounds, r)
		if err := m.syncDirty(); err != nil {
			return err
		}
		prev, left = left, bitmap.CountWords(m.dirty)
		m.event(RoundEnded, round, left, nil)
		m.log.Debug("pre-copy round ended", "round", round, "sent", r.PagesSent, "left", left)
		if round >= m.cfg.PreCopyRounds || left == 0 || (round > 1 && left >= prev) {
			return nil
		}
	}
}

// syncDirty ORs the dirty log into m.dirty, checks it, and tells the Order.
func (m *migration) syncDirty() error {
	if err := m.src.Dirty.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("postcopy: sync dirty log: %w", err)
	}
	if rem := m.pages % 64; rem != 0 {
		if extra := m.dirty[len(m.dirty)-1] >> rem; extra != 0 {
			n := m.pages + uint64(bits.TrailingZeros64(extra))
			return fmt.Errorf("postcopy: dirty log reports page %d of %d: %w", n, m.pages, livemig.ErrPageRange)
		}
	}
	if m.cfg.Order != nil {
		m.cfg.Order.Observe(m.dirty)
	}
	return nil
}

// eachDirty calls f for every page set in bm, in cfg.Order's order
// (ascending without one), clearing bm if clr.
func (m *migration) eachDirty(bm []uint64, clr bool, f func(n uint64) error) error {
	if m.cfg.Order != nil {
		m.plan = m.cfg.Order.Plan(m.plan[:0], bm)
		if clr {
			clear(bm)
		}
		for _, n := range m.plan {
			if n >= m.pages {
				return fmt.Errorf("postcopy: order %s planned page %d of %d: %w", m.cfg.Order.Name(), n, m.pages, livemig.ErrPageRange)
			}
			if err := f(n); err != nil {
				return err
			}
		}
		return nil
	}
	for i := range bm {
		w := bm[i]
		if clr {
			bm[i] = 0
		}
		for w != 0 {
			b := bits.TrailingZeros64(w)
			w &= w - 1
			if err := f(uint64(i)*64 + uint64(b)); err != nil {
				return err
			}
		}
	}
	return nil
}

// discardEarly names to the destination, while the guest still runs here,
// the copies the last pre-copy round left stale (m.dirty), and waits until
// it has made them missing. With userfaultfd memory that is a madvise per
// page (about 3 µs: BenchmarkDiscard in package faultmem), which would
// otherwise fall inside the downtime; the switchover then discards only
// what the guest dirtied since. The pages become unsent: the push sends
// them after the switchover.
func (m *migration) discardEarly(ctx context.Context) error {
	stale := bitmap.CountWords(m.dirty)
	if stale == 0 {
		return nil
	}
	if _, err := bitmapChunks(m.dirty, nil, func(first uint64, data []byte) error {
		return m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindDiscard, Page: first, Data: data})
	}); err != nil {
		return linkErr("discard", err)
	}
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindEndRound, Arg: uint64(len(m.rounds)) | ackFlag}); err != nil {
		return linkErr("discard", err)
	}
	if err := m.s.conn.Flush(ctx); err != nil {
		return linkErr("discard", err)
	}
	if _, err := m.await(ctx, m.s, transport.AckRound); err != nil {
		return err
	}
	for i, w := range m.dirty {
		atomic.AndUint64(&m.sent[i], ^w)
	}
	clear(m.dirty)
	m.log.Debug("stale copies discarded before the pause", "pages", stale)
	return nil
}

// switchover pauses the source, discards stale copies at the destination,
// sends the state and hands the guest over.
func (m *migration) switchover(ctx context.Context) error {
	round := len(m.rounds) + 1
	m.event(Pausing, round, 0, nil)
	m.pauseAt = m.cfg.Clock.Now()
	if err := m.src.VM.Pause(ctx); err != nil {
		return fmt.Errorf("postcopy: pause source: %w", err)
	}
	m.paused = true
	m.preSent, m.preBytes, m.preZero = m.nSent.Load(), m.nBytes.Load(), m.nZero.Load()
	if m.cfg.PreCopyRounds > 0 {
		if err := m.syncDirty(); err != nil {
			return err
		}
		// Every page was sent in round 1: the dirty ones are stale there,
		// except those discardEarly already made missing (unsent now).
		for i := range m.dirty {
			m.dirty[i] &= atomic.LoadUint64(&m.sent[i])
		}
		if _, err := bitmapChunks(m.dirty, nil, func(first uint64, data []byte) error {
			return m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindDiscard, Page: first, Data: data})
		}); err != nil {
			return linkErr("discard", err)
		}
		for i, w := range m.dirty {
			atomic.AndUint64(&m.sent[i], ^w)
		}
		clear(m.dirty)
	}
	m.toPush = m.pages - bitmap.CountWords(m.sent)
	arg := uint64(round)
	if m.s.urgent != nil {
		arg |= urgentFlag
	}
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindSwitchover, Page: m.session, Arg: arg}); err != nil {
		return linkErr("switchover", err)
	}
	state, err := m.src.VM.SaveState(ctx, nil)
	if err != nil {
		return fmt.Errorf("postcopy: save source state: %w", err)
	}
	m.report.StateBytes = uint64(len(state))
	m.nBytes.Add(uint64(len(state)) + 2*recordOverhead)
	m.stateSent = true
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindState, Data: state}); err != nil {
		return linkErr("state", err)
	}
	if _, err := m.await(ctx, m.s, transport.AckReady); err != nil {
		return err
	}
	// From here on the guest may run at the destination: never resume it
	// here.
	m.handed = true
	m.event(HandedOver, round, m.toPush, nil)
	m.log.Info("guest handed over", "pages_to_push", m.toPush, "session", m.session)
	if err := m.s.conn.Send(ctx, transport.Msg{Kind: transport.KindCommit}); err != nil {
		return linkErr("commit", err)
	}
	return nil
}

// postCopy pushes the pages and finishes, reconnecting after cuts; err is
// a failure of the hand-over's Commit, to recover from first.
func (m *migration) postCopy(ctx context.Context, err error) error {
	if m.s.urgent != nil && err == nil {
		m.s.wg.Add(1)
		go m.urgentServer(ctx, m.s)
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
		m.event(LinkCut, len(m.rounds)+1, 0, err)
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
		arg |= urgentFlag
	}
	if err := conn.Send(ctx, transport.Msg{Kind: transport.KindResume, Page: m.session, Arg: arg}); err != nil {
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
	held := make([]uint64, len(m.sent))
	for {
		var msg transport.Msg
		if err := conn.Recv(ctx, &msg); err != nil {
			return fail(&cutError{fmt.Errorf("postcopy: receive the destination's bitmap: %w", err)})
		}
		switch {
		case msg.Kind == transport.KindRecvBitmap:
			if err := applyBitmap(msg, m.pages, func(n uint64) error {
				held[n/64] |= 1 << (n % 64)
				return nil
			}); err != nil {
				return fail(fmt.Errorf("postcopy: destination's bitmap: %w", err))
			}
			continue
		case msg.Kind == transport.KindAck && msg.Arg == transport.AckResumed:
			m.noteResumed()
			continue
		case msg.Kind == transport.KindAck && msg.Arg == transport.AckComplete:
			// The destination finished before the cut: only its answer
			// was lost.
			msg.Data = bytes.Clone(msg.Data)
			_ = conn.Send(ctx, transport.Msg{Kind: transport.KindAck, Arg: transport.AckReleased})
			_ = conn.Flush(ctx)
			return fail(&completedError{msg})
		case msg.Kind == transport.KindAck && msg.Arg == transport.AckHeld:
			if got := bitmap.CountWords(held); got != msg.Page {
				return fail(fmt.Errorf("postcopy: destination holds %d pages, its bitmap names %d: %w", msg.Page, got, livemig.ErrCorrupt))
			}
		case msg.Kind == transport.KindError:
			return fail(transport.PeerErrorOf(msg, m.session))
		default:
			return fail(fmt.Errorf("postcopy: %v message while reconnecting: %w", msg.Kind, livemig.ErrCorrupt))
		}
		break
	}
	for i := range m.sent {
		atomic.StoreUint64(&m.sent[i], held[i])
		atomic.StoreUint64(&m.usent[i], 0)
	}
	m.s = m.newSession(ctx, conn, urgent)
	if urgent != nil {
		m.s.wg.Add(1)
		go m.urgentServer(ctx, m.s)
	}
	m.event(Reconnected, len(m.rounds)+1, m.pages-bitmap.CountWords(held), nil)
	m.log.Info("reconnected", "held", bitmap.CountWords(held), "left", m.pages-bitmap.CountWords(held), "urgent", urgent != nil)
	return nil
}

// PushSlack is how far the push may fall behind its Config.PushBandwidth
// schedule and still catch up by sending at once. A sleep overshoots (a
// wall-clock sleep shorter than a millisecond takes about one on Linux, the
// runtime's poller waits in whole milliseconds): without the catch-up the
// time lost was never made up, and a push capped at 64 MiB/s, one sleep a
// page, ran at 4 MiB/s. It bounds the burst after the push was held back
// (by requests, a slow link) to 5 ms of its bandwidth.
const PushSlack = 5 * time.Millisecond

// pushAndFinish pushes every page not yet sent, then sends Done and waits
// for the destination's confirmation.
func (m *migration) pushAndFinish(ctx context.Context, s *session) error {
	pushed := uint64(0)
	push := func(n uint64) error {
		if err := m.poll(ctx, s); err != nil {
			return err
		}
		w, bit := n/64, uint64(1)<<(n%64)
		if atomic.LoadUint64(&m.sent[w])&bit != 0 {
			return nil // sent on request
		}
		for m.cfg.PushBandwidth > 0 {
			now := m.cfg.Clock.Now()
			if !now.Before(m.nextPush) {
				if floor := now.Add(-PushSlack); m.nextPush.Before(floor) {
					m.nextPush = floor
				}
				break
			}
			if err := m.sleep(ctx, s, m.nextPush, func() bool { return atomic.LoadUint64(&m.sent[w])&bit != 0 }); err != nil {
				return err
			}
			if err := m.poll(ctx, s); err != nil {
				return err
			}
			if atomic.LoadUint64(&m.sent[w])&bit != 0 {
				return nil // sent on request while the push waited
			}
		}
		if atomic.OrUint64(&m.sent[w], bit)&bit != 0 {
			return nil // sent on request meanwhile
		}
		size, err := m.sendPage(ctx, s.conn, m.mainSend, n)
		if err != nil {
			return err
		}
		m.nPushed.Add(1)
		if m.cfg.PushBandwidth > 0 {
			m.nextPush = m.nextPush.Add(time.Duration(size * uint64(time.Second) / uint64(m.cfg.PushBandwidth)))
		}
		if pushed++; pushed%PushEventEvery == 0 {
			m.event(Pushing, len(m.rounds)+1, m.nSent.Load()-m.preSent, nil)
		}
		return nil
	}
	unsent := make([]uint64, len(m.sent))
	for i := range unsent {
		unsent[i] = ^atomic.LoadUint64(&m.sent[i])
	}
	if rem := m.pages % 64; rem != 0 {
		unsent[len(unsent)-1] &= 1<<rem - 1
	}
	if err := m.eachDirty(unsent, false, push); err != nil {
		return err
	}
	if err := s.conn.Flush(ctx); err != nil {
		return linkErr("push", err)
	}
	m.event(PushDone, len(m.rounds)+1, m.nSent.Load()-m.preSent, nil)
	if s.urgent != nil {
		close(s.finish)
		select {
		case <-s.marked:
		case <-s.failed:
			return s.failErr
		case <-ctx.Done():
			return fmt.Errorf("postcopy: finishing the urgent stream: %w", ctx.Err())
		}
	}
	var sum uint64
	if m.digest != nil {
		sum = m.digest.Sum()
	}
	if err := s.conn.Send(ctx, transport.Msg{Kind: transport.KindDone, Arg: sum}); err != nil {
		return linkErr("done", err)
	}
	ack, err := m.await(ctx, s, transport.AckComplete)
	if err != nil {
		return err
	}
	_ = s.conn.Send(ctx, transport.Msg{Kind: transport.KindAck, Arg: transport.AckReleased})
	_ = s.conn.Flush(ctx)
	return m.complete(ack)
}

// complete takes the destination's Ack(AckComplete): it checks the digest
// and keeps the destination's figures.
func (m *migration) complete(ack transport.Msg) error {
	var sum uint64
	if m.digest != nil {
		sum = m.digest.Sum()
	}
	if m.digest != nil {
		if ack.Page != sum {
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
	m.event(Finished, len(m.rounds)+1, 0, nil)
	return nil
}

// sleep waits until t on the clock, or until the return path has something
// or the urgent server sent a page (wakeUp), or ctx ends. It does not wait
// if done() already holds.
func (m *migration) sleep(ctx context.Context, s *session, t time.Time, done func() bool) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.waker.Store(&cancel)
	defer m.waker.Store(nil)
	if len(s.ret) > 0 || done() {
		return nil
	}
	select {
	case <-s.failed:
		return nil
	default:
	}
	_ = m.cfg.Clock.WaitUntil(wctx, t)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("postcopy: push: %w", err)
	}
	return nil
}

// poll handles what the return path holds, without blocking.
func (m *migration) poll(ctx context.Context, s *session) error {
	for {
		select {
		case rm := <-s.ret:
			if _, err := m.handleReturn(ctx, s, rm); err != nil {
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
			ack, err := m.handleReturn(ctx, s, rm)
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
func (m *migration) handleReturn(ctx context.Context, s *session, rm retMsg) (ack bool, err error) {
	if rm.err != nil {
		if errors.Is(rm.err, io.EOF) {
			rm.err = io.ErrUnexpectedEOF
		}
		return false, &cutError{fmt.Errorf("postcopy: return path: %w", rm.err)}
	}
	switch rm.m.Kind {
	case transport.KindError:
		return false, transport.PeerErrorOf(rm.m, m.session)
	case transport.KindAck:
		if rm.m.Arg == transport.AckResumed {
			m.noteResumed()
		}
		return true, nil
	case transport.KindRequest:
		if !m.handed {
			return false, fmt.Errorf("postcopy: request for page %d before the hand-over: %w", rm.m.Page, livemig.ErrCorrupt)
		}
		return false, m.serve(ctx, s.conn, false, rm.m.Page, rm.m.Arg)
	}
	return false, fmt.Errorf("postcopy: unexpected %v message on the return path: %w", rm.m.Kind, livemig.ErrCorrupt)
}

func (m *migration) noteResumed() {
	if m.resumedAt.IsZero() {
		m.resumedAt = m.cfg.Clock.Now()
	}
}

// urgentServer sends requested pages on the urgent connection until the
// push is done (s.finish), then the end marker.
func (m *migration) urgentServer(ctx context.Context, s *session) {
	defer s.wg.Done()
	finished := false
	for {
		select {
		case r := <-s.reqs:
			if finished {
				continue
			}
			if err := m.serve(ctx, s.urgent, true, r.page, r.count); err != nil {
				s.fail(err)
				m.wakeUp()
				return
			}
			m.wakeUp() // the push may be waiting on a page just sent
		case <-s.finish:
			if finished {
				continue
			}
			finished = true
			if err := s.urgent.Send(ctx, transport.Msg{Kind: transport.KindEndRound, Arg: uint64(len(m.rounds) + 1)}); err != nil {
				s.fail(linkErr("urgent end marker", err))
				return
			}
			close(s.marked)
		case <-s.stop:
			return
		}
	}
}

// serve sends the requested pages [page, page+count) that need it and their
// neighbours on conn, then flushes. On the urgent connection a page goes
// even if the push sent it already (it may be queued behind the push), once.
// Only one goroutine serves requests at a time: the urgent server while
// there is one, the push otherwise.
func (m *migration) serve(ctx context.Context, conn transport.Conn, urgent bool, page, count uint64) error {
	if page >= m.pages {
		return fmt.Errorf("postcopy: request for page %d of %d: %w", page, m.pages, livemig.ErrPageRange)
	}
	count = min(max(count, 1), m.pages-page)
	ps := m.mainSend
	if urgent {
		ps = m.urgSend
	}
	claim := func(n uint64, resend bool) bool {
		w, bit := n/64, uint64(1)<<(n%64)
		if resend {
			if atomic.OrUint64(&m.usent[w], bit)&bit != 0 {
				return false
			}
			atomic.OrUint64(&m.sent[w], bit)
			return true
		}
		if atomic.OrUint64(&m.sent[w], bit)&bit != 0 {
			return false
		}
		if urgent {
			atomic.OrUint64(&m.usent[w], bit)
		}
		return true
	}
	send := func(n uint64) error {
		if _, err := m.sendPage(ctx, conn, ps, n); err != nil {
			return err
		}
		m.nPulled.Add(1)
		return nil
	}
	for n := page; n < page+count; n++ {
		if claim(n, urgent) {
			if err := send(n); err != nil {
				return err
			}
		}
	}
	// Pre-page around the last page asked for, in the direction faults go.
	last := page + count - 1
	dir, more := m.prepage.Next(last, m.pages)
	for i := 1; i <= more; i++ {
		n := last + uint64(i)
		if dir < 0 {
			n = last - uint64(i)
		}
		if claim(n, false) {
			if err := send(n); err != nil {
				return err
			}
		}
	}
	if err := conn.Flush(ctx); err != nil {
		return linkErr("flush requested pages", err)
	}
	return nil
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

// sendPage reads page n and sends it on conn, encoded by ps.enc.
func (m *migration) sendPage(ctx context.Context, conn transport.Conn, ps *pageSender, n uint64) (uint64, error) {
	var page []byte
	if m.view != nil {
		v, err := m.view.View(n)
		if err != nil {
			return 0, &livemig.PageError{Op: "read", Page: n, Err: err}
		}
		page = v
	} else {
		if err := m.src.Memory.ReadPage(n, ps.buf); err != nil {
			return 0, &livemig.PageError{Op: "read", Page: n, Err: err}
		}
		page = ps.buf
	}
	msg := transport.Msg{Kind: transport.KindPage, Page: n}
	msg.Enc, msg.Data = ps.enc.Encode(ps.out[:0], page)
	switch msg.Enc {
	case transport.EncZero:
		m.nZero.Add(1)
		if m.digest != nil {
			m.digest.Zero(n)
		}
	default:
		if m.digest != nil {
			m.digest.Update(n, page)
		}
		if m.cfg.LZ4 {
			m.nRaw.Add(uint64(m.ps))
			m.nEncoded.Add(uint64(len(msg.Data)))
			if msg.Enc == transport.EncLZ4 {
				m.nLZ4.Add(1)
			}
		}
	}
	if err := conn.Send(ctx, msg); err != nil {
		return 0, linkErr(fmt.Sprintf("page %d", n), err)
	}
	size := uint64(recordOverhead + len(msg.Data))
	m.nSent.Add(1)
	m.nBytes.Add(size)
	w, bit := n/64, uint64(1)<<(n%64)
	if atomic.OrUint64(&m.ever[w], bit)&bit != 0 {
		m.nResent.Add(1)
	}
	return size, nil
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
func (m *migration) explain(s *session, err error) error {
	var ce *cutError
	if !errors.As(err, &ce) {
		return err
	}
	for {
		select {
		case rm := <-s.ret:
			if rm.err == nil && rm.m.Kind == transport.KindError {
				return errors.Join(transport.PeerErrorOf(rm.m, m.session), err)
			}
			if rm.err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// fillReport completes the report from the counters.
func (m *migration) fillReport() {
	r := m.report
	r.Rounds = append(r.Rounds[:0], m.rounds...)
	if !m.pauseAt.IsZero() {
		pc := livemig.Round{
			Index: len(m.rounds) + 1, Final: true, Start: m.pauseAt.Sub(m.start), Duration: m.endAt.Sub(m.pauseAt),
			DirtyPages: m.toPush, PagesSent: m.nSent.Load() - m.preSent, ZeroPages: m.nZero.Load() - m.preZero,
			Bytes: m.nBytes.Load() - m.preBytes,
		}
		r.Rounds = append(r.Rounds, pc)
	}
	r.TotalTime = m.endAt.Sub(m.start)
	if !m.resumedAt.IsZero() {
		r.Downtime = m.resumedAt.Sub(m.pauseAt)
	}
	r.BytesSent = m.nBytes.Load()
	r.PagesSent = m.nSent.Load()
	r.PagesResent = m.nResent.Load()
	r.ZeroPages = m.nZero.Load()
	if m.cfg.LZ4 {
		r.Codec = &livemig.CodecStats{RawBytes: m.nRaw.Load(), EncodedBytes: m.nEncoded.Load(), LZ4Pages: m.nLZ4.Load()}
	}
	r.Converged = true
	if m.handed {
		pc := &livemig.PostCopyStats{PagesPushed: m.nPushed.Load(), PagesPulled: m.nPulled.Load()}
		if m.haveStats {
			d := m.dstStats
			pc.DemandFaults, pc.FaultP50, pc.FaultP99, pc.FaultMax, pc.WaitTotal, pc.LastPage =
				d.Faults, d.P50, d.P99, d.Max, d.WaitTotal, d.LastPage
		}
		r.PostCopy = pc
	}
}

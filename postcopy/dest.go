package postcopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/internal/handover"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

// Destination is where the guest goes.
type Destination struct {
	// Memory is the guest's memory here; with pre-copy rounds (hybrid) it
	// must implement Discarder.
	Memory Memory
	// VM loads the state and resumes the guest.
	VM livemig.VM
	// Faults reports the missing pages the guest touches, which are then
	// requested from the source. Nil: pages only arrive by the push.
	Faults   FaultSource
	Pages    uint64 // the guest's page count, as agreed in the handshake
	PageSize int
}

// ReceiveReport is what the destination saw.
type ReceiveReport struct {
	PagesReceived uint64 // page records received
	ZeroPages     uint64 // of which zero pages
	Duplicates    uint64 // copies dropped because the page was already present
	Discarded     uint64 // stale copies discarded at the switchover
	Rounds        int    // pre-copy rounds received
	StateBytes    int
	Reconnects    int
	Verified      bool // the digest matched the source's
	Resumed       bool // the guest was resumed here
	Complete      bool // every page arrived and was verified
	// StopAndCopy says the source ended by pre-copy's stop-and-copy (an
	// adaptive hybrid that converged, precopy.HandOff): every page came
	// before the resume.
	StopAndCopy bool
	// PostCopy holds the fault figures (demand faults, wait percentiles,
	// last page); the pushed/pulled split is known only to the source.
	PostCopy livemig.PostCopyStats
}

// Receive is the destination's side of Migrate: it stores the pages of the
// pre-copy rounds (if any), discards the copies the source says are stale,
// loads the state, and on the source's Commit resumes dst.VM at once. From
// then on it places each arriving page only if it is still missing (a placed
// page belongs to the running guest), requests the pages the guest faults on
// (dst.Faults) on the return path, and returns once the source's Done
// arrives and it holds every page with a digest equal to the source's.
//
// It takes pre-copy's end too (precopy.HandOff that stops and copies, a
// switchover without wire.FlagPostCopy): then the rest of the pages, the
// state and Done come before the Commit, it says Ready only once every
// page is here, verified, and the state loaded, and it resumes on the
// Commit with nothing left to fetch, as package precopy's Receive does.
// XBZRLE pages of pre-copy rounds are decoded against dst.Memory, which
// must then implement livemig.PageReader.
//
// Receive owns conn (and cfg.Urgent) and closes them before it returns.
// Before the resume, failure is clean: the guest is not resumed and the
// error wraps livemig.ErrIncomplete (link cut), livemig.ErrPeer (the source
// gave up), livemig.ErrCorrupt or livemig.ErrVerify (bad data). After the
// resume the guest keeps running whatever happens (threads on missing pages
// wait): a cut link is recovered through cfg.Reaccept (the source comes back
// with KindResume, is told which pages are here, and the push goes on);
// without it, the error wraps livemig.ErrIncomplete and the report says
// Resumed. A cut after the state was loaded and acknowledged but before the
// Commit leaves the destination in doubt: with Reaccept it waits for the
// source to come back (and then resumes), without it it fails, not resumed.
func Receive(ctx context.Context, conn transport.Conn, dst Destination, cfg Config) (*ReceiveReport, error) {
	cfg.setDefaults()
	err := cfg.validate()
	if err == nil && (dst.Memory == nil || dst.VM == nil || dst.Pages == 0 || dst.PageSize <= 0) {
		err = errors.New("postcopy: Destination needs Memory, VM, Pages and PageSize")
	}
	if err != nil {
		conn.Close()
		if cfg.Urgent != nil {
			cfg.Urgent.Close()
		}
		return nil, err
	}
	r := &receiver{
		cfg: cfg, dst: dst, log: cfg.Logger, pages: dst.Pages, ps: dst.PageSize,
		digest:      verify.New(dst.Pages, dst.PageSize),
		rep:         &ReceiveReport{},
		demand:      NewDemand(dst.Pages),
		conn:        conn,
		urgent:      cfg.Urgent,
		mainScratch: make([]byte, dst.PageSize),
	}
	r.discarder, _ = dst.Memory.(Discarder)
	r.reader, _ = dst.Memory.(livemig.PageReader)
	r.start = cfg.Clock.Now()
	rctx, cancel := context.WithCancel(ctx)
	err = r.run(rctx)
	if err != nil {
		tell, cancelTell := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		var promise uint64 // the session we promise not to resume, if so
		if !r.rep.Resumed {
			promise = r.session
		}
		_ = r.send(tell, wire.ErrorMsg(err, promise))
		_ = r.current().Flush(tell)
		cancelTell()
		if r.rep.Resumed {
			r.log.Error("post-copy receive failed with the guest running here", "err", err)
		} else {
			r.log.Info("post-copy receive failed; guest not resumed", "err", err)
		}
	}
	cancel()
	r.closeSession()
	if r.direct != nil {
		r.direct.serveDirect(nil) // waits for requests under way
	}
	r.reqWG.Wait()
	r.fillReport()
	return r.rep, err
}

type receiver struct {
	cfg       Config
	dst       Destination
	log       *slog.Logger
	pages     uint64
	ps        int
	digest    *verify.Digest
	discarder Discarder
	reader    livemig.PageReader // dst.Memory's, if it reads: XBZRLE before the resume
	rep       *ReceiveReport
	start     time.Time

	// demand, under demMu, holds which pages are here and which faults
	// wait on which: the main and the urgent receiver, the requester and
	// the guest's faulting threads (a FaultQueue served directly) share it.
	demMu  sync.Mutex
	demand *Demand

	sendMu sync.Mutex // serialises Sends
	connMu sync.Mutex // guards conn; the main goroutine alone changes it
	conn   transport.Conn
	urgent transport.Conn // this session's urgent connection, or nil
	// the urgent receiver of this session
	uwg     sync.WaitGroup
	uerr    chan error    // its failure
	umarker chan struct{} // closed when it saw the end marker
	reqWG   sync.WaitGroup
	direct  *FaultQueue // dst.Faults, served directly from the resume on

	mainScratch []byte        // the main receiver's page for LZ4 blocks (codec.DecodePage)
	completeAck transport.Msg // Ack(AckComplete), kept for a source that missed it

	session      uint64
	switched     bool
	stopCopy     bool // the switchover was pre-copy's: every page comes before the Commit
	stateLoaded  bool
	resumeAt     time.Time
	state        []byte
	recvN, zeroN atomic.Uint64
	dupN, placed atomic.Uint64
}

func (r *receiver) event(k EventKind, err error) {
	if r.cfg.OnEvent != nil {
		r.cfg.OnEvent(Event{Kind: k, Elapsed: r.cfg.Clock.Now().Sub(r.start), Err: err})
	}
}

// current returns the connection of the current session.
func (r *receiver) current() transport.Conn {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	return r.conn
}

// send sends m on the current connection; any goroutine may call it.
func (r *receiver) send(ctx context.Context, m transport.Msg) error {
	c := r.current()
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	return c.Send(ctx, m)
}

func (r *receiver) run(ctx context.Context) error {
	if err := r.beforeResume(ctx); err != nil {
		return err
	}
	if r.stopCopy {
		// Every page was here before the resume: only the source's
		// AckReleased is left to wait for (answering AckResumed to a source
		// that comes back to ask).
		r.completeAck = transport.Msg{Kind: wire.KindAck, Arg: wire.AckResumed}
		r.rep.Complete, r.rep.StopAndCopy = true, true
		r.release(ctx)
		return nil
	}
	return r.afterResume(ctx)
}

// beforeResume receives until the Commit (or, in doubt, a reconnection) and
// resumes the guest.
func (r *receiver) beforeResume(ctx context.Context) error {
	var msg transport.Msg
	for {
		if err := r.conn.Recv(ctx, &msg); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			err = fmt.Errorf("postcopy: receive before the resume, after %d pages: %w (%w)", r.recvN.Load(), livemig.ErrIncomplete, err)
			if r.stateLoaded && r.cfg.Reaccept != nil && ctx.Err() == nil {
				// In doubt: the source may have sent Commit. Wait for it.
				r.log.Info("link cut between the state and the commit; waiting for the source", "err", err)
				return r.recoverLink(ctx, err)
			}
			return err
		}
		switch msg.Kind {
		case wire.KindPage:
			if r.switched && !r.stopCopy || r.stateLoaded {
				return fmt.Errorf("postcopy: page %d after the switchover, before the resume: %w", msg.Page, livemig.ErrCorrupt)
			}
			if err := r.write(msg); err != nil {
				return err
			}
		case wire.KindEndRound:
			if msg.Arg&wire.FlagAck != 0 {
				// The source waits until what came before (discards) is
				// applied.
				if err := r.send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckRound, Page: msg.Arg &^ wire.FlagAck}); err != nil {
					return fmt.Errorf("postcopy: acknowledge the discards: %w (%w)", livemig.ErrIncomplete, err)
				}
				continue
			}
			r.rep.Rounds++
		case wire.KindDiscard:
			if r.switched {
				return fmt.Errorf("postcopy: discard after the switchover: %w", livemig.ErrCorrupt)
			}
			if r.discarder == nil {
				return fmt.Errorf("postcopy: the source discards stale pages but the memory cannot (implement postcopy.Discarder): %w", livemig.ErrNotSupported)
			}
			if err := applyBitmap(msg, r.pages, r.discard); err != nil {
				return err
			}
		case wire.KindSwitchover:
			if err := r.switchover(msg); err != nil {
				return err
			}
		case wire.KindState:
			if err := r.takeState(ctx, msg.Data); err != nil {
				return err
			}
		case wire.KindDone:
			if err := r.readyToStop(ctx, msg.Arg); err != nil {
				return err
			}
		case wire.KindCommit:
			if !r.stateLoaded {
				return fmt.Errorf("postcopy: commit before the state: %w", livemig.ErrCorrupt)
			}
			return r.resume(ctx)
		case wire.KindError:
			return fmt.Errorf("postcopy: source failed: %s: %w", msg.Data, livemig.ErrPeer)
		default:
			return fmt.Errorf("postcopy: unexpected %v message before the resume: %w", msg.Kind, livemig.ErrCorrupt)
		}
	}
}

// switchover takes the source's Switchover: post-copy's (wire.FlagPostCopy,
// checked against our urgent connection) or pre-copy's stop-and-copy.
func (r *receiver) switchover(msg transport.Msg) error {
	if r.switched {
		return fmt.Errorf("postcopy: second switchover: %w", livemig.ErrCorrupt)
	}
	r.switched, r.session = true, msg.Page
	if msg.Arg&wire.FlagPostCopy == 0 {
		// Pre-copy converged (precopy.HandOff ended by stop-and-copy): the
		// rest, the state and Done follow.
		r.stopCopy = true
		return nil
	}
	if (msg.Arg&wire.FlagUrgent != 0) != (r.urgent != nil) {
		return fmt.Errorf("postcopy: the source's use of an urgent connection (%v) differs from ours (%v): %w",
			msg.Arg&wire.FlagUrgent != 0, r.urgent != nil, livemig.ErrVersion)
	}
	return nil
}

// takeState takes the device state: after post-copy's switchover it loads
// it and says Ready; after pre-copy's it keeps it for Done.
func (r *receiver) takeState(ctx context.Context, state []byte) error {
	if !r.switched || r.stateLoaded || r.state != nil {
		return fmt.Errorf("postcopy: state before the switchover or twice: %w", livemig.ErrCorrupt)
	}
	r.state = append(make([]byte, 0, len(state)), state...)
	r.rep.StateBytes = len(r.state)
	if r.stopCopy {
		return nil // loaded once every page is here (Done)
	}
	if err := r.dst.VM.LoadState(ctx, r.state); err != nil {
		return fmt.Errorf("postcopy: load state: %w", err)
	}
	r.stateLoaded = true
	if err := r.send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReady}); err != nil {
		return fmt.Errorf("postcopy: acknowledge the state: %w (%w)", livemig.ErrIncomplete, err)
	}
	return nil
}

// readyToStop takes pre-copy's Done (with the source's digest sum) after a
// stop-and-copy switchover: once every page is here, the digests agree and
// the state loaded, it says Ready, as package precopy's destination does.
func (r *receiver) readyToStop(ctx context.Context, sum uint64) error {
	if !r.stopCopy || r.state == nil || r.stateLoaded {
		return fmt.Errorf("postcopy: Done before the resume without a stop-and-copy switchover and its state: %w", livemig.ErrCorrupt)
	}
	if got := r.heldCount(); got != r.pages {
		return fmt.Errorf("postcopy: source done but %d of %d pages never arrived: %w", r.pages-got, r.pages, livemig.ErrIncomplete)
	}
	mine := r.digest.Sum()
	if !r.cfg.NoVerify && sum != 0 {
		if sum != mine {
			return fmt.Errorf("postcopy: digest %016x, source's %016x: %w", mine, sum, livemig.ErrVerify)
		}
		r.rep.Verified = true
	}
	if err := r.dst.VM.LoadState(ctx, r.state); err != nil {
		return fmt.Errorf("postcopy: load state: %w", err)
	}
	r.stateLoaded = true
	if err := r.send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReady, Page: mine}); err != nil {
		return fmt.Errorf("postcopy: acknowledge done: %w (%w)", livemig.ErrIncomplete, err)
	}
	return nil
}

// resume resumes the guest and starts the urgent receiver.
func (r *receiver) resume(ctx context.Context) error {
	if err := r.dst.VM.Resume(ctx); err != nil {
		return fmt.Errorf("postcopy: resume guest: %w", err)
	}
	r.resumeAt = r.cfg.Clock.Now()
	r.demMu.Lock()
	r.demand.Resumed(r.resumeAt)
	r.demMu.Unlock()
	r.rep.Resumed = true
	r.event(Resumed, nil)
	r.log.Info("guest resumed", "held", r.heldCount(), "pages", r.pages)
	if err := r.send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckResumed}); err != nil {
		r.log.Debug("could not tell the source of the resume", "err", err)
	}
	if r.stopCopy && r.urgent != nil {
		// Pre-copy's end: every page is here, no request will go.
		r.urgent.Close()
		r.urgent = nil
	}
	r.startSession(ctx)
	if r.dst.Faults != nil {
		if q, ok := r.dst.Faults.(*FaultQueue); ok {
			// Faults reported from now on are requested by the goroutine
			// that reports them; the requester drains the queue. (So any
			// request, the requester's too, follows this switch.)
			r.direct = q
			q.serveDirect(func(n uint64, at time.Time) { r.request(ctx, n, at) })
		}
		r.reqWG.Add(1)
		go r.requester(ctx)
	}
	return nil
}

func (r *receiver) startSession(ctx context.Context) {
	r.uerr = make(chan error, 1)
	r.umarker = make(chan struct{})
	if r.urgent != nil {
		r.uwg.Add(1)
		go r.urgentReceiver(ctx, r.urgent, r.uerr, r.umarker)
	} else {
		close(r.umarker)
	}
}

// closeSession closes the connections of the session and waits for its
// urgent receiver.
func (r *receiver) closeSession() {
	r.current().Close()
	if r.urgent != nil {
		r.urgent.Close()
	}
	r.uwg.Wait()
	r.urgent = nil
}

// afterResume receives pages while the guest runs, until Done.
func (r *receiver) afterResume(ctx context.Context) error {
	var msg transport.Msg
	for {
		err := r.conn.Recv(ctx, &msg)
		if err == nil {
			switch msg.Kind {
			case wire.KindPage:
				err = r.place(msg, r.mainScratch)
				if err != nil {
					return err
				}
				continue
			case wire.KindDone:
				var done bool
				done, err = r.done(ctx, msg.Arg)
				if err == nil {
					r.release(ctx)
				}
				if done || err == nil {
					return err
				}
			case wire.KindError:
				return fmt.Errorf("postcopy: source failed after the resume: %s: %w", msg.Data, livemig.ErrPeer)
			default:
				return fmt.Errorf("postcopy: unexpected %v message after the resume: %w", msg.Kind, livemig.ErrCorrupt)
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("postcopy: receive after the resume: %w (%w)", livemig.ErrIncomplete, ctx.Err())
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if errors.Is(err, livemig.ErrVerify) || errors.Is(err, livemig.ErrPeer) {
			return err
		}
		if err := r.recoverLink(ctx, err); err != nil {
			return err
		}
	}
}

// done checks the source's Done: it waits for the urgent stream's end marker,
// then checks that every page is here and that the digests agree. It
// returns done=true with a nil error on success; a cut while waiting is
// returned with done=false.
func (r *receiver) done(ctx context.Context, sum uint64) (bool, error) {
	select {
	case <-r.umarker:
	case err := <-r.uerr:
		return false, err
	case <-ctx.Done():
		return true, fmt.Errorf("postcopy: waiting for the urgent stream: %w (%w)", livemig.ErrIncomplete, ctx.Err())
	}
	if got := r.heldCount(); got != r.pages {
		return true, fmt.Errorf("postcopy: source done but %d of %d pages never arrived: %w", r.pages-got, r.pages, livemig.ErrIncomplete)
	}
	mine := r.digest.Sum()
	if !r.cfg.NoVerify && sum != 0 {
		if sum != mine {
			return true, fmt.Errorf("postcopy: digest %016x, source's %016x: %w", mine, sum, livemig.ErrVerify)
		}
		r.rep.Verified = true
	}
	r.fillReport()
	pc := r.rep.PostCopy
	data := appendStats(nil, destStats{Faults: pc.DemandFaults, P50: pc.FaultP50, P99: pc.FaultP99, Max: pc.FaultMax,
		WaitTotal: pc.WaitTotal, LastPage: pc.LastPage, Placed: r.placed.Load(), Duplicates: r.dupN.Load()})
	r.completeAck = transport.Msg{Kind: wire.KindAck, Arg: wire.AckComplete, Page: mine, Data: data}
	if err := r.send(ctx, r.completeAck); err != nil {
		// The source did not get it (a frame is whole or refused): it
		// will come back and send Done again.
		return false, fmt.Errorf("postcopy: confirm completion: %w", err)
	}
	r.rep.Complete = true
	r.event(Finished, nil)
	return true, nil
}

// release waits, after the completion, for the source's AckReleased, and
// answers a source that comes back after a cut (cfg.Reaccept) with the
// completion again: it may have missed it. The migration is complete here
// whatever happens; failures are only logged.
func (r *receiver) release(ctx context.Context) {
	conn := r.current()
	var msg transport.Msg
	err := conn.Recv(ctx, &msg)
	for tries := 0; ; {
		for err == nil && (msg.Kind != wire.KindAck || msg.Arg != wire.AckReleased) {
			err = conn.Recv(ctx, &msg)
		}
		if err == nil || r.cfg.Reaccept == nil || ctx.Err() != nil {
			return
		}
		// Wait for the source's new connection: one that names another
		// session, or says nothing, is dropped.
		for {
			if tries++; tries > r.cfg.MaxReconnects {
				return
			}
			conn.Close()
			c, aerr := r.cfg.Reaccept(ctx)
			if aerr != nil {
				r.log.Warn("migration complete here; the source may not know it", "err", aerr)
				return
			}
			r.connMu.Lock()
			r.conn = c
			r.connMu.Unlock()
			conn = c
			fctx, cancel := context.WithTimeout(ctx, handover.FirstMessageWait(c))
			err = c.Recv(fctx, &msg)
			cancel()
			if err == nil && msg.Kind == wire.KindResume && msg.Page == r.session {
				break
			}
		}
		if msg.Arg&wire.FlagUrgent != 0 && r.cfg.ReacceptUrgent != nil {
			if u, uerr := r.cfg.ReacceptUrgent(ctx); uerr == nil {
				u.Close() // not needed: the migration is complete
			}
		}
		_ = conn.Send(ctx, r.completeAck)
		err = conn.Flush(ctx)
		if err == nil {
			err = conn.Recv(ctx, &msg)
		}
	}
}

// recoverLink replaces a cut connection: it waits for the source to come
// back through cfg.Reaccept, resumes the guest if the cut left it in doubt,
// tells the source which pages are here and asks again for the pages the
// guest waits on.
func (r *receiver) recoverLink(ctx context.Context, cause error) error {
	r.event(LinkCut, cause)
	r.log.Info("link cut", "resumed", r.rep.Resumed, "held", r.heldCount(), "err", cause)
	r.closeSession()
	if r.cfg.Reaccept == nil {
		return fmt.Errorf("postcopy: link cut and no Reaccept: %w (%w)", livemig.ErrIncomplete, cause)
	}
	for {
		if r.rep.Reconnects >= r.cfg.MaxReconnects {
			return fmt.Errorf("postcopy: link cut %d times: %w (%w)", r.rep.Reconnects+1, livemig.ErrIncomplete, cause)
		}
		r.rep.Reconnects++
		conn, err := r.cfg.Reaccept(ctx)
		if err != nil {
			return fmt.Errorf("postcopy: reaccept: %w (%w)", livemig.ErrIncomplete, errors.Join(err, cause))
		}
		err = r.rejoin(ctx, conn)
		if err == nil {
			r.event(Reconnected, nil)
			return nil
		}
		conn.Close()
		r.closeSession() // the new urgent connection and its receiver, if any
		if errors.Is(err, livemig.ErrPeer) || ctx.Err() != nil {
			return err
		}
		r.log.Info("reconnection failed", "err", err)
		cause = err
	}
}

// rejoin runs the recovery exchange on a new connection and installs it.
func (r *receiver) rejoin(ctx context.Context, conn transport.Conn) error {
	var msg transport.Msg
	fctx, cancel := context.WithTimeout(ctx, handover.FirstMessageWait(conn)) // a silent peer must not hold us
	err := conn.Recv(fctx, &msg)
	cancel()
	if err != nil {
		return fmt.Errorf("postcopy: wait for the source's resume: %w", err)
	}
	switch {
	case msg.Kind == wire.KindError && msg.Page == r.session:
		return fmt.Errorf("postcopy: source failed: %s: %w", msg.Data, livemig.ErrPeer)
	case msg.Kind != wire.KindResume:
		return fmt.Errorf("postcopy: %v message instead of Resume on a new connection: %w", msg.Kind, livemig.ErrCorrupt)
	case msg.Page != r.session:
		return fmt.Errorf("postcopy: resume of session %016x, ours is %016x: %w", msg.Page, r.session, livemig.ErrVersion)
	case msg.Arg&wire.FlagUrgent != 0 && r.cfg.ReacceptUrgent == nil:
		return fmt.Errorf("postcopy: the source resumes with an urgent connection and we have no ReacceptUrgent: %w", livemig.ErrVersion)
	}
	if r.stopCopy {
		return r.rejoinStopCopy(ctx, conn)
	}
	if msg.Arg&wire.FlagUrgent != 0 {
		u, err := r.cfg.ReacceptUrgent(ctx)
		if err != nil {
			return fmt.Errorf("postcopy: reaccept the urgent connection: %w", err)
		}
		r.urgent = u
	}
	// Say which pages are here before conn becomes the current connection:
	// the source reads no request before Ack(AckHeld) (a request there is
	// corrupt), and the guest's faults meanwhile (from the requester or a
	// FaultQueue served directly) go to the old, closed connection and are
	// asked again below. Nothing is placed while the old session is closed,
	// so the bitmap stays true.
	if r.rep.Resumed {
		// The source may have missed the first one.
		if err := conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckResumed}); err != nil {
			return err
		}
	}
	r.demMu.Lock()
	snap := r.demand.AppendHeld(nil)
	r.demMu.Unlock()
	if _, err := bitmapChunks(snap, nil, func(first uint64, data []byte) error {
		return conn.Send(ctx, transport.Msg{Kind: wire.KindRecvBitmap, Page: first, Data: data})
	}); err != nil {
		return err
	}
	if err := conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckHeld, Page: bitmap.CountWords(snap)}); err != nil {
		return err
	}
	r.connMu.Lock()
	r.conn = conn
	r.connMu.Unlock()
	if !r.rep.Resumed {
		// The source came back: it had handed the guest over. (resume
		// sends Ack(AckResumed), which the source takes at any time.)
		if err := r.resume(ctx); err != nil {
			return err
		}
	} else {
		r.startSession(ctx)
	}
	// Ask again for what the guest waits on.
	r.demMu.Lock()
	again := r.demand.AppendWaiting(nil)
	r.demMu.Unlock()
	for _, n := range again {
		if err := r.send(ctx, transport.Msg{Kind: wire.KindRequest, Page: n, Arg: 1}); err != nil {
			return err
		}
	}
	return nil
}

// rejoinStopCopy answers, after pre-copy's end, a source in doubt after its
// Commit (precopy.Resolve): every page is here and the source committed, so
// the guest resumes (if it has not) and the source is told.
func (r *receiver) rejoinStopCopy(ctx context.Context, conn transport.Conn) error {
	if !r.rep.Resumed {
		if err := r.resume(ctx); err != nil {
			return err
		}
	}
	r.connMu.Lock()
	r.conn = conn
	r.connMu.Unlock()
	return conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckResumed})
}

// urgentReceiver places the pages that arrive on the urgent connection
// until its end marker, then drains it until it closes.
func (r *receiver) urgentReceiver(ctx context.Context, c transport.Conn, errc chan<- error, marker chan struct{}) {
	defer r.uwg.Done()
	var msg transport.Msg
	marked := false
	scratch := make([]byte, r.ps) // for LZ4 blocks: the main receiver has its own
	for {
		err := c.Recv(ctx, &msg)
		if err == nil {
			switch {
			case msg.Kind == wire.KindPage && !marked:
				err = r.place(msg, scratch)
			case msg.Kind == wire.KindEndRound && !marked:
				marked = true
				close(marker)
			default:
				err = fmt.Errorf("postcopy: unexpected %v message on the urgent connection: %w", msg.Kind, livemig.ErrCorrupt)
			}
		}
		if err != nil {
			if !marked {
				errc <- fmt.Errorf("postcopy: urgent connection: %w", err)
				// Make the main receiver notice.
				r.current().Close()
			}
			return
		}
	}
}

// requester turns the guest's faults into requests.
func (r *receiver) requester(ctx context.Context) {
	defer r.reqWG.Done()
	for {
		n, at, err := r.dst.Faults.NextFault(ctx)
		if err != nil {
			return
		}
		r.request(ctx, n, at)
	}
}

// request asks the source for page n, which the guest began to wait on at
// time at, unless the page is here or already asked for. The requester and
// the goroutines reporting faults to a FaultQueue served directly call it
// concurrently.
func (r *receiver) request(ctx context.Context, n uint64, at time.Time) {
	r.demMu.Lock()
	ask := r.demand.Fault(n, at, r.cfg.Clock.Now())
	r.demMu.Unlock()
	if !ask {
		return
	}
	if err := r.send(ctx, transport.Msg{Kind: wire.KindRequest, Page: n, Arg: 1}); err != nil {
		// A cut: the main receiver notices it and asks again once
		// reconnected.
		r.log.Debug("request failed", "page", n, "err", err)
	}
}

// heldCount is how many pages hold a valid copy.
func (r *receiver) heldCount() uint64 {
	r.demMu.Lock()
	defer r.demMu.Unlock()
	return r.demand.HeldCount()
}

// markHeld records that page n holds a valid copy, ending the waits on it.
func (r *receiver) markHeld(n uint64) {
	r.demMu.Lock()
	var now time.Time // read only when it counts: not a clock read a page
	if r.demand.Timed(n) {
		now = r.cfg.Clock.Now()
	}
	r.demand.Placed(n, now)
	r.demMu.Unlock()
}

// checkPage checks a page record's page number; codec.DecodePage checks
// its encoding and data.
func (r *receiver) checkPage(msg transport.Msg) error {
	if msg.Page >= r.pages {
		return &livemig.PageError{Op: "receive", Page: msg.Page, Err: livemig.ErrPageRange}
	}
	return nil
}

// write stores a page of the pre-copy phase (newest wins). It runs on the
// main receiver only (before the resume there is no urgent one).
func (r *receiver) write(msg transport.Msg) error {
	if err := r.checkPage(msg); err != nil {
		return err
	}
	data, err := codec.DecodePage(r.mainScratch, msg.Page, msg.Enc, msg.Data, r.reader)
	if err != nil {
		return err
	}
	msg.Data = data
	r.recvN.Add(1)
	if msg.Enc == transport.EncZero {
		if err := r.dst.Memory.ZeroPage(msg.Page); err != nil {
			return &livemig.PageError{Op: "zero", Page: msg.Page, Err: err}
		}
		r.digest.Zero(msg.Page)
		r.zeroN.Add(1)
	} else {
		if err := r.dst.Memory.WritePage(msg.Page, msg.Data); err != nil {
			return &livemig.PageError{Op: "write", Page: msg.Page, Err: err}
		}
		r.digestPage(msg)
	}
	r.markHeld(msg.Page)
	return nil
}

// digestPage updates the digest with a page received whole (not zero):
// with the transport's CRC of a raw page's bytes, which it checked the
// frame with, else by reading the page.
func (r *receiver) digestPage(msg transport.Msg) {
	if msg.Enc == transport.EncRaw && msg.HaveCRC {
		r.digest.UpdateCRC(msg.Page, msg.DataCRC)
		return
	}
	r.digest.Update(msg.Page, msg.Data)
}

// discard makes a stale page missing again.
func (r *receiver) discard(n uint64) error {
	if err := r.discarder.Discard(n); err != nil {
		return &livemig.PageError{Op: "discard", Page: n, Err: err}
	}
	r.demMu.Lock()
	r.demand.Discard(n)
	r.demMu.Unlock()
	r.rep.Discarded++
	return nil
}

// place places a page that arrived after the resume, if still missing.
// The main and the urgent receiver call it concurrently, each with its own
// scratch page for LZ4 blocks.
func (r *receiver) place(msg transport.Msg, scratch []byte) error {
	if err := r.checkPage(msg); err != nil {
		return err
	}
	data, err := codec.DecodePage(scratch, msg.Page, msg.Enc, msg.Data, nil)
	if err != nil {
		return err
	}
	msg.Data = data
	r.recvN.Add(1)
	var placed bool
	if msg.Enc == transport.EncZero {
		r.zeroN.Add(1)
		placed, err = r.dst.Memory.PlaceZero(msg.Page)
	} else {
		placed, err = r.dst.Memory.Place(msg.Page, msg.Data)
	}
	if err != nil {
		return &livemig.PageError{Op: "place", Page: msg.Page, Err: err}
	}
	if !placed {
		r.dupN.Add(1)
		return nil
	}
	r.placed.Add(1)
	if msg.Enc == transport.EncZero {
		r.digest.Zero(msg.Page)
	} else {
		r.digestPage(msg)
	}
	r.markHeld(msg.Page)
	return nil
}

func (r *receiver) fillReport() {
	r.rep.PagesReceived = r.recvN.Load()
	r.rep.ZeroPages = r.zeroN.Load()
	r.rep.Duplicates = r.dupN.Load()
	if r.rep.Complete {
		return // keep the figures sent to the source with AckComplete
	}
	r.demMu.Lock()
	r.demand.Fill(&r.rep.PostCopy)
	last := r.demand.LastPage()
	r.demMu.Unlock()
	if r.rep.Resumed && !last.IsZero() {
		r.rep.PostCopy.LastPage = last.Sub(r.resumeAt)
	}
}

package precopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

// Destination is where the guest goes: its memory and its control.
type Destination struct {
	Sink     livemig.PageSink
	VM       livemig.VM
	Pages    uint64 // the guest's page count, as agreed in the handshake
	PageSize int
}

// ReceiveReport is what the destination saw.
type ReceiveReport struct {
	PagesReceived uint64 // page records applied
	ZeroPages     uint64
	Rounds        int
	StateBytes    int
	Verified      bool // the digest matched the source's
	Resumed       bool // the guest was resumed here
	Reconnects    int  // connections the source came back on (Config.Reaccept)
}

// Receive is the destination's side of Migrate: it applies the pages the
// source sends to dst.Sink and, once the source has sent everything, checks
// that it holds every page and that its digest matches the source's, loads
// the state (dst.VM.LoadState), and only then says Ready; on the source's
// Commit it resumes dst.VM and says so.
//
// Receive owns conn (and the connections cfg.Reaccept returns) and closes
// them before it returns. It resumes the guest only after a complete,
// verified and loaded migration and the source's Commit; on any failure
// before that it returns an error (wrapping livemig.ErrIncomplete when the
// stream ended early, livemig.ErrPeer when the source gave up,
// livemig.ErrVerify or livemig.ErrCorrupt for bad data, the VM's error when
// the state does not load) with ReceiveReport.Resumed false, and tells the
// source it will not resume (wire.ErrorNotResumed), so that the source
// resumes its guest even after the Commit.
//
// A link that fails once the destination said Ready leaves the source in
// doubt; with cfg.Reaccept the destination waits for it to come back and
// ask (answering, or taking the Commit again), see Config.Reaccept. After
// the resume it waits for the source's AckReleased (bounded by the link's
// liveness), and after a cut, with Reaccept, for the source to come back
// and ask; it returns success (Resumed) either way.
func Receive(ctx context.Context, conn transport.Conn, dst Destination, cfg Config) (*ReceiveReport, error) {
	cfg.setDefaults()
	if dst.Sink == nil || dst.VM == nil || dst.Pages == 0 || dst.PageSize <= 0 {
		conn.Close()
		return nil, errors.New("precopy: Destination needs Sink, VM, Pages and PageSize")
	}
	rv := &receiver{conn: conn, dst: dst, cfg: &cfg, rep: &ReceiveReport{}}
	defer func() { rv.conn.Close() }()
	err := rv.receive(ctx)
	if err != nil && !rv.rep.Resumed {
		tell, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		// The promise not to resume, for the session we were given.
		_ = rv.conn.Send(tell, wire.ErrorMsg(err, rv.session))
		_ = rv.conn.Flush(tell)
		cancel()
		cfg.Logger.Info("pre-copy receive failed; guest not resumed", "err", err)
	}
	rv.conn.Close() // no page is applied after this
	rv.rep.PagesReceived, rv.rep.ZeroPages = rv.applied()
	return rv.rep, err
}

// receiver is the destination's side of one migration.
type receiver struct {
	conn    transport.Conn
	dst     Destination
	cfg     *Config
	rep     *ReceiveReport
	session uint64
	digest  *verify.Digest
	// The pages applied (rep's figures): counts[0] by the receiving
	// goroutine, counts[i] by stream i's (applyStreams).
	counts []applyCount
	// ready: everything is received, verified and loaded; a page record
	// now is an error (set before the Ready goes out).
	ready atomic.Bool
}

// applyCount is what one goroutine applied, on a cache line of its own.
type applyCount struct {
	pages, zeros atomic.Uint64
	_            [48]byte
}

// applied returns the pages and zero pages applied so far.
func (rv *receiver) applied() (pages, zeros uint64) {
	for i := range rv.counts {
		pages += rv.counts[i].pages.Load()
		zeros += rv.counts[i].zeros.Load()
	}
	return pages, zeros
}

// applyPage applies page record m with dec, records it in the digest and
// counts it in c. It may run on several goroutines at once (applyStreams),
// for distinct pages, each with its own dec and c.
func (rv *receiver) applyPage(dec *codec.Decoder, c *applyCount, m *transport.Msg) error {
	if rv.ready.Load() {
		return fmt.Errorf("precopy: page %d after the source said done: %w", m.Page, livemig.ErrCorrupt)
	}
	if m.Page >= rv.dst.Pages {
		return &livemig.PageError{Op: "receive", Page: m.Page, Err: livemig.ErrPageRange}
	}
	page, err := dec.Apply(rv.dst.Sink, m.Page, m.Enc, m.Data)
	if err != nil {
		return err
	}
	switch {
	case page == nil:
		rv.digest.Zero(m.Page)
		c.zeros.Add(1)
	case m.Enc == transport.EncRaw && m.HaveCRC:
		rv.digest.UpdateCRC(m.Page, m.DataCRC) // the transport's: page is m.Data
	default:
		rv.digest.Update(m.Page, page)
	}
	c.pages.Add(1)
	return nil
}

// applyStreams has a multi-stream connection apply the page records on its
// streams' goroutines (transport.ParallelReceiver), one decoder each: the
// destination applies pages on as many cores as there are streams. With
// one stream, or a Conn that cannot, the receiving goroutine applies them.
func (rv *receiver) applyStreams() {
	pr, ok := rv.conn.(transport.ParallelReceiver)
	if !ok || pr.Streams() < 2 {
		return
	}
	decs := make([]*codec.Decoder, pr.Streams())
	for i := range decs {
		decs[i] = codec.NewDecoder(codec.Config{PageSize: rv.dst.PageSize})
	}
	counts := make([]applyCount, 1+len(decs))
	if pr.HandlePages(func(stream int, m *transport.Msg) error {
		if m.Kind != wire.KindPage {
			return fmt.Errorf("precopy: unexpected record kind %d: %w", m.Kind, livemig.ErrCorrupt)
		}
		return rv.applyPage(decs[stream], &counts[1+stream], m)
	}) == nil {
		rv.counts = counts
	}
}

// reconnect replaces a failed connection (cause) by the source's new one,
// when cfg.Reaccept allows; resumed says what to answer.
func (rv *receiver) reconnect(ctx context.Context, resumed bool, cause error) error {
	if rv.cfg.Reaccept == nil || ctx.Err() != nil {
		return cause
	}
	rv.cfg.Logger.Info("link failed with the source in doubt; waiting for it to come back", "resumed", resumed, "err", cause)
	rv.conn.Close()
	conn, err := awaitResume(ctx, rv.cfg, rv.session, resumed, cause)
	if err != nil {
		return err
	}
	rv.conn = conn
	rv.rep.Reconnects++
	return nil
}

func (rv *receiver) receive(ctx context.Context) error {
	dst, rep := rv.dst, rv.rep
	rv.digest = verify.New(dst.Pages, dst.PageSize)
	digest := rv.digest
	dec := codec.NewDecoder(codec.Config{PageSize: dst.PageSize})
	rv.counts = make([]applyCount, 1)
	rv.applyStreams()
	var (
		msg      transport.Msg
		state    []byte
		gotState bool
		switched bool
	)
	for {
		if err := rv.conn.Recv(ctx, &msg); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			pages, _ := rv.applied()
			err = fmt.Errorf("precopy: receive after %d pages, %d rounds: %w (%w)", pages, rep.Rounds, livemig.ErrIncomplete, err)
			if !rv.ready.Load() {
				return err
			}
			// Ready: the source may have sent the Commit.
			if err := rv.reconnect(ctx, false, err); err != nil {
				return err
			}
			continue
		}
		if rv.ready.Load() && msg.Kind != wire.KindCommit && msg.Kind != wire.KindError {
			// Ready: everything is received, verified and loaded; only the
			// Commit or the source's giving up may come.
			err := fmt.Errorf("precopy: %v message after the source said done: %w", msg.Kind, livemig.ErrCorrupt)
			if err := rv.reconnect(ctx, false, err); err != nil {
				return err
			}
			continue
		}
		switch msg.Kind {
		case wire.KindPage:
			if err := rv.applyPage(dec, &rv.counts[0], &msg); err != nil {
				return err
			}
		case wire.KindEndRound:
			if msg.Arg&wire.FlagAck != 0 {
				// A barrier (HandOff's): everything before it is applied.
				if err := rv.conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckRound, Page: msg.Arg &^ wire.FlagAck}); err != nil {
					return fmt.Errorf("precopy: answer the barrier: %w (%w)", livemig.ErrIncomplete, err)
				}
				if err := rv.conn.Flush(ctx); err != nil {
					return fmt.Errorf("precopy: answer the barrier: %w (%w)", livemig.ErrIncomplete, err)
				}
				continue
			}
			rep.Rounds++
		case wire.KindSwitchover:
			switched = true
			rv.session = msg.Page
		case wire.KindState:
			state = append(state[:0], msg.Data...)
			gotState = true
			rep.StateBytes = len(state)
		case wire.KindDone:
			if !switched || !gotState {
				return fmt.Errorf("precopy: source said done before switchover and state: %w", livemig.ErrCorrupt)
			}
			if got := digest.Covered(); got != dst.Pages {
				return fmt.Errorf("precopy: source done but %d of %d pages never arrived: %w", dst.Pages-got, dst.Pages, livemig.ErrIncomplete)
			}
			sum := digest.Sum()
			if !rv.cfg.NoVerify && msg.Arg != 0 {
				if msg.Arg != sum {
					return fmt.Errorf("precopy: digest %016x, source's %016x: %w", sum, msg.Arg, livemig.ErrVerify)
				}
				rep.Verified = true
			}
			// Load everything before saying Ready: a state that does not
			// load is a clean failure, the source still holding the guest.
			if err := dst.VM.LoadState(ctx, state); err != nil {
				return fmt.Errorf("precopy: load state: %w", err)
			}
			rv.ready.Store(true)
			if err := rv.conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckReady, Page: sum}); err != nil {
				if err := rv.reconnect(ctx, false, fmt.Errorf("precopy: acknowledge done: %w (%w)", livemig.ErrIncomplete, err)); err != nil {
					return err
				}
			}
		case wire.KindCommit:
			if !rv.ready.Load() {
				return fmt.Errorf("precopy: hand-over before the source said done: %w", livemig.ErrCorrupt)
			}
			if err := dst.VM.Resume(ctx); err != nil {
				return fmt.Errorf("precopy: resume guest: %w", err)
			}
			rep.Resumed = true
			rv.cfg.Logger.Info("guest resumed")
			rv.release(ctx)
			return nil
		case wire.KindError:
			return fmt.Errorf("precopy: source failed: %s: %w", msg.Data, livemig.ErrPeer)
		default:
			return fmt.Errorf("precopy: unexpected message kind %d: %w", msg.Kind, livemig.ErrCorrupt)
		}
	}
}

// release tells the source that the guest runs here and waits until it
// knows (AckReleased), answering it again if it comes back after a cut. The
// guest runs here whatever happens: failures are only logged.
func (rv *receiver) release(ctx context.Context) {
	err := rv.conn.Send(ctx, transport.Msg{Kind: wire.KindAck, Arg: wire.AckResumed})
	if err == nil {
		err = rv.conn.Flush(ctx)
	}
	var msg transport.Msg
	for {
		for err == nil {
			if err = rv.conn.Recv(ctx, &msg); err == nil && msg.Kind == wire.KindAck && msg.Arg == wire.AckReleased {
				return
			}
		}
		if errors.Is(err, io.EOF) && rv.cfg.Reaccept == nil {
			return
		}
		if err = rv.reconnect(ctx, true, err); err != nil {
			rv.cfg.Logger.Warn("guest resumed here; the source may not know it", "err", err)
			return
		}
	}
}

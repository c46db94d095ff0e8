package precopy

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
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
}

// Receive is the destination's side of Migrate: it applies the pages the
// source sends to dst.Sink and, once the source has sent everything and the
// destination has checked that it holds every page and that its digest
// matches the source's, waits for the hand-over, loads the state and resumes
// dst.VM.
//
// Receive owns conn and closes it before it returns. It resumes the guest
// only after a complete, verified migration; on any failure it returns an
// error (wrapping livemig.ErrIncomplete when the stream ended early,
// livemig.ErrPeer when the source gave up, livemig.ErrVerify or
// livemig.ErrCorrupt for bad data) and the guest stays paused.
func Receive(ctx context.Context, conn transport.Conn, dst Destination, cfg Config) (*ReceiveReport, error) {
	defer conn.Close()
	cfg.setDefaults()
	if dst.Sink == nil || dst.VM == nil || dst.Pages == 0 || dst.PageSize <= 0 {
		return nil, errors.New("precopy: Destination needs Sink, VM, Pages and PageSize")
	}
	rep := &ReceiveReport{}
	err := receive(ctx, conn, dst, cfg, rep)
	if err != nil && !rep.Resumed {
		tell, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2e9)
		_ = conn.Send(tell, transport.Msg{Kind: transport.KindError, Data: []byte(err.Error())})
		cancel()
		cfg.Logger.Info("pre-copy receive failed; guest not resumed", "err", err)
	}
	return rep, err
}

func receive(ctx context.Context, conn transport.Conn, dst Destination, cfg Config, rep *ReceiveReport) error {
	digest := verify.New(dst.Pages, dst.PageSize)
	dec := codec.NewDecoder(codec.Config{PageSize: dst.PageSize})
	var (
		msg      transport.Msg
		state    []byte
		gotState bool
		switched bool
		ready    bool
	)
	for {
		if err := conn.Recv(ctx, &msg); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("precopy: receive after %d pages, %d rounds: %w (%w)", rep.PagesReceived, rep.Rounds, livemig.ErrIncomplete, err)
		}
		switch msg.Kind {
		case transport.KindPage:
			if ready {
				return fmt.Errorf("precopy: page %d after the source said done: %w", msg.Page, livemig.ErrCorrupt)
			}
			if msg.Page >= dst.Pages {
				return &livemig.PageError{Op: "receive", Page: msg.Page, Err: livemig.ErrPageRange}
			}
			page, err := dec.Apply(dst.Sink, msg.Page, msg.Enc, msg.Data)
			if err != nil {
				return err
			}
			if page == nil {
				digest.Zero(msg.Page)
				rep.ZeroPages++
			} else {
				digest.Update(msg.Page, page)
			}
			rep.PagesReceived++
		case transport.KindEndRound:
			rep.Rounds++
		case transport.KindSwitchover:
			switched = true
		case transport.KindState:
			state = append(state[:0], msg.Data...)
			gotState = true
			rep.StateBytes = len(state)
		case transport.KindDone:
			if !switched || !gotState {
				return fmt.Errorf("precopy: source said done before switchover and state: %w", livemig.ErrCorrupt)
			}
			if got := digest.Covered(); got != dst.Pages {
				return fmt.Errorf("precopy: source done but %d of %d pages never arrived: %w", dst.Pages-got, dst.Pages, livemig.ErrIncomplete)
			}
			sum := digest.Sum()
			if !cfg.NoVerify && msg.Arg != 0 {
				if msg.Arg != sum {
					return fmt.Errorf("precopy: digest %016x, source's %016x: %w", sum, msg.Arg, livemig.ErrVerify)
				}
				rep.Verified = true
			}
			ready = true
			if err := conn.Send(ctx, transport.Msg{Kind: transport.KindAck, Arg: transport.AckReady, Page: sum}); err != nil {
				return fmt.Errorf("precopy: acknowledge done: %w (%w)", livemig.ErrIncomplete, err)
			}
		case transport.KindCommit:
			if !ready {
				return fmt.Errorf("precopy: hand-over before the source said done: %w", livemig.ErrCorrupt)
			}
			if err := dst.VM.LoadState(ctx, state); err != nil {
				return fmt.Errorf("precopy: load state: %w", err)
			}
			if err := dst.VM.Resume(ctx); err != nil {
				return fmt.Errorf("precopy: resume guest: %w", err)
			}
			rep.Resumed = true
			if err := conn.Send(ctx, transport.Msg{Kind: transport.KindAck, Arg: transport.AckResumed}); err != nil {
				cfg.Logger.Warn("guest resumed but the source was not told", "err", err)
			}
			return nil
		case transport.KindError:
			return fmt.Errorf("precopy: source failed: %s: %w", msg.Data, livemig.ErrPeer)
		default:
			return fmt.Errorf("precopy: unexpected message kind %d: %w", msg.Kind, livemig.ErrCorrupt)
		}
	}
}

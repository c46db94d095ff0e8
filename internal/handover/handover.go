// Package handover holds what the engines' hand-overs share beyond the
// wire: telling a destination that waits in doubt that its source gave up.
package handover

import (
	"context"
	"fmt"
	"time"

	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// FirstMessageWait bounds how long a destination waiting for its source to
// come back waits for the first message on c, a connection it accepted: a
// peer that connects and says nothing (its heartbeats keep the link alive)
// must not hold the wait. It is c's liveness bound (a source that comes
// back speaks at once), or transport.DefaultLiveness when c has none.
func FirstMessageWait(c transport.Conn) time.Duration {
	if d, ok := transport.LivenessOf(c); ok {
		return d
	}
	return transport.DefaultLiveness
}

// Abandon tells, best effort, a destination that may wait for this source
// to come back (its state loaded, the Commit not sent) that the source gave
// up before the Commit and resumed the guest: it opens a new connection
// with redial and sends KindError with the session in Page, then waits
// until the destination has read it and closed, all within AbandonWait.
// The guest already runs at the source, and a destination that is not
// told gives up at its own bound, so this courtesy must not hold the
// failed migration's return: a destination that waits for its source has
// an AcceptConn pending and answers at once, while a listener nobody
// accepts on any more would hold the dial for a whole handshake bound.
func Abandon(ctx context.Context, redial func(context.Context) (transport.Conn, error), session uint64, why error) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), AbandonWait)
	defer cancel()
	conn, err := redial(actx)
	if err != nil {
		return
	}
	defer conn.Close()
	_ = conn.Send(actx, transport.Msg{Kind: wire.KindError, Page: session,
		Data: []byte("source resumed the guest before the commit: " + why.Error())})
	_ = conn.Flush(actx)
	var msg transport.Msg
	for conn.Recv(actx, &msg) == nil { // until the destination closes
	}
}

// AbandonWait bounds Abandon: the dial, the handshake and the wait for the
// destination to read the message (a few round trips).
const AbandonWait = 500 * time.Millisecond

// Backoff returns the wait before reconnection attempt n (1-based): none
// before the first, then 50 ms doubling to at most 1 s.
func Backoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(50*time.Millisecond<<min(n-2, 5), time.Second)
}

// Sleep waits d or until ctx ends, and returns ctx's error in that case.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("waiting to reconnect: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}

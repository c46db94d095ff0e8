package postcopy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// gatedLink serves first, then waits until open is closed (or the link
// is) before it serves rest; writes are discarded.
type gatedLink struct {
	first, rest io.Reader
	open        chan struct{}
	closed      chan struct{}
	once        sync.Once
}

func (l *gatedLink) Read(p []byte) (int, error) {
	if n, _ := l.first.Read(p); n > 0 {
		return n, nil
	}
	select {
	case <-l.open:
	case <-l.closed:
		return 0, io.ErrClosedPipe
	}
	return l.rest.Read(p)
}

func (l *gatedLink) Write(p []byte) (int, error) { return len(p), nil }
func (l *gatedLink) Close() error                { l.once.Do(func() { close(l.closed) }); return nil }

// openOnClose is an urgent connection whose peer is gone (Recv: EOF) and
// whose Close opens a gate.
type openOnClose struct {
	transport.Conn
	open chan struct{}
	once *sync.Once
}

func (c openOnClose) Close() error {
	c.once.Do(func() { close(c.open) })
	return c.Conn.Close()
}

// After pre-copy's end (an adaptive hybrid that converged) the urgent
// connection carries nothing: the destination must not take its end for a
// cut of the migration. The source's AckReleased comes only once the urgent
// connection is closed here (as its close at the source would race it);
// a destination whose urgent receiver closed the main connection on that
// EOF lost the AckReleased and waited for a reconnection.
func TestStopCopyUrgentUnused(t *testing.T) {
	seeds := receiveSeeds(t)
	stop := seeds[8] // pre-copy's end, up to the Commit
	var tail writeLink
	tc := transport.NewConn(&tail, transport.Config{PageSize: 64, PageCount: fuzzPages, Liveness: -1})
	if err := tc.Send(context.Background(), transport.Msg{Kind: wire.KindAck, Arg: wire.AckReleased}); err != nil {
		t.Fatal(err)
	}
	if err := tc.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	open := make(chan struct{})
	main := transport.NewConn(&gatedLink{first: bytes.NewReader(stop), rest: bytes.NewReader(tail.Bytes()), open: open,
		closed: make(chan struct{})}, transport.Config{PageSize: 64, PageCount: fuzzPages, Liveness: -1})
	gone := transport.NewConn(&readLink{r: bytes.NewReader(nil)}, transport.Config{PageSize: 64, PageCount: fuzzPages, Liveness: -1})
	urgent := openOnClose{Conn: gone, open: open, once: new(sync.Once)}
	mem, _ := NewHeapMemory(64, fuzzPages, nil)
	vm := &fuzzVM{}
	reaccepted := false
	rep, err := Receive(context.Background(), main, Destination{Memory: mem, VM: vm, Pages: fuzzPages, PageSize: 64},
		Config{Urgent: urgent, Reaccept: func(context.Context) (transport.Conn, error) {
			reaccepted = true
			return nil, errors.New("no source comes back here")
		}})
	if err != nil || !rep.Resumed || !rep.Complete || !rep.StopAndCopy || vm.resumes != 1 || reaccepted {
		t.Fatalf("Receive: %v; report %+v; %d resumes; waited for a reconnection %v", err, rep, vm.resumes, reaccepted)
	}
}

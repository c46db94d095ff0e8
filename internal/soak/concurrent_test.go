package soak

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// concurrentPlans are the eight migrations TestEightConcurrent runs at once:
// each engine, with and without its extras (XBZRLE and LZ4 for pre-copy, an
// urgent connection for post-copy and hybrid), eleven connections in all.
// The guests are of eight sizes, 1 to 2 MiB: the destination announces 0
// pages and each connection takes its source's geometry (transport.Hello).
var concurrentPlans = func() []plan {
	var ps []plan
	for _, x := range []struct {
		e      engine
		extras bool
	}{
		{preCopy, false}, {preCopy, true}, {postCopy, false}, {postCopy, true},
		{hybridCopy, false}, {hybridCopy, true}, {preCopy, true}, {postCopy, true},
	} {
		ps = append(ps, plan{e: x.e, pages: uint64(256 + 32*len(ps)), extras: x.extras})
	}
	return ps
}()

// span is when, from their common start, concurrent migrations did what.
type span struct {
	lastOpen time.Duration // the last source's main connection was open
	firstEnd time.Duration // the first migration ended
	lastEnd  time.Duration // the last migration ended
}

// runConcurrent runs migration i of plans on srcs[i], all at once, into ln,
// and returns their outcomes and when they opened and ended. It fails the
// test if any migration fails, or if a connection reaches the destination
// that is none of theirs.
func runConcurrent(t *testing.T, ln *transport.Listener, plans []plan, srcs []*region.Region) ([]outcome, span) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The destination process: as many AcceptConn calls at once as
	// connections will come, each handing the connection it took to the
	// inbox of the migration its source's tag names.
	type inbox struct{ main, urgent chan transport.Conn }
	inboxes := make([]inbox, len(plans))
	conns := 0
	for i, p := range plans {
		inboxes[i] = inbox{make(chan transport.Conn, 1), make(chan transport.Conn, 1)}
		conns++
		if p.urgent() {
			conns++
		}
	}
	var (
		mu       sync.Mutex
		demuxErr error
	)
	refuse := func(err error) {
		mu.Lock()
		demuxErr = errors.Join(demuxErr, err)
		mu.Unlock()
		cancel() // the migrations stop waiting
	}
	actx, stopAccepting := context.WithCancel(ctx)
	defer stopAccepting()
	var acceptors sync.WaitGroup
	hello := plans[0].hello()
	hello.PageCount = 0 // any geometry: each source's own
	for range conns {
		acceptors.Add(1)
		go func() {
			defer acceptors.Done()
			conn, peer, err := ln.AcceptConn(actx, hello, transport.Config{})
			if err != nil {
				if actx.Err() == nil {
					refuse(fmt.Errorf("accept: %w", err))
				}
				return
			}
			i, urgent, ok := untag(peer.Session)
			if !ok || i >= len(plans) || urgent && !plans[i].urgent() {
				conn.Close()
				refuse(fmt.Errorf("a connection tagged %x is none of the migrations'", peer.Session))
				return
			}
			box := inboxes[i].main
			if urgent {
				box = inboxes[i].urgent
			}
			select {
			case box <- conn:
			default:
				conn.Close()
				refuse(fmt.Errorf("a second connection tagged %x", peer.Session))
			}
		}()
	}
	take := func(box chan transport.Conn) dialer {
		return func(ctx context.Context) (transport.Conn, error) {
			select {
			case c := <-box:
				return c, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}

	outs := make([]outcome, len(plans))
	errs := make([]error, len(plans))
	opened := make([]time.Time, len(plans)) // each source's main connection
	ended := make([]time.Time, len(plans))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, p := range plans {
		h, hu := p.hello(), p.hello()
		h.Session, hu.Session = tag(i, false), tag(i, true)
		dial := testkit.Dialer(ln.Addr().String(), h, transport.Config{})
		w := wiring{
			accept:       take(inboxes[i].main),
			acceptUrgent: take(inboxes[i].urgent),
			dial: func(ctx context.Context) (transport.Conn, error) {
				c, err := dial(ctx)
				opened[i] = time.Now()
				return c, err
			},
			dialUrgent: testkit.Dialer(ln.Addr().String(), hu, transport.Config{}),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			outs[i], errs[i] = migrate(ctx, srcs[i], p, i, w)
			ended[i] = time.Now()
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	sp := span{
		lastOpen: slices.MaxFunc(opened, time.Time.Compare).Sub(began),
		firstEnd: slices.MinFunc(ended, time.Time.Compare).Sub(began),
		lastEnd:  slices.MaxFunc(ended, time.Time.Compare).Sub(began),
	}

	stopAccepting()
	acceptors.Wait()
	for _, b := range inboxes { // a failed migration's connections
		for _, box := range []chan transport.Conn{b.main, b.urgent} {
			select {
			case c := <-box:
				c.Close()
			default:
			}
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("migration %d (%v): %v", i+1, plans[i], err)
		}
	}
	if demuxErr != nil {
		t.Errorf("destination: %v", demuxErr)
	}
	if t.Failed() {
		t.FailNow()
	}
	return outs, sp
}

// tagMagic starts the Session a source of the test announces.
const tagMagic = "soak"

// tag is the Session that the source of migration i announces on its main
// connection (urgent false) or on its urgent one. The protocol names no
// guest and no role, and a single connection leaves Session unused (only a
// multi-stream session's streams share one), so the test's destination
// tells its connections apart by it.
func tag(i int, urgent bool) (s [16]byte) {
	copy(s[:], tagMagic)
	s[4] = byte(i)
	if urgent {
		s[5] = 1
	}
	return s
}

// untag undoes tag; ok is false for a Session tag did not make.
func untag(s [16]byte) (i int, urgent, ok bool) {
	if string(s[:len(tagMagic)]) != tagMagic || s[5] > 1 || s != tag(int(s[4]), s[5] == 1) {
		return 0, false, false
	}
	return int(s[4]), s[5] == 1, true
}

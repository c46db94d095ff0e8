package soak

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

// What the tests of this package share: one migration, its two ends run in
// this process over connections the caller wires (see wiring), verified at
// both ends.

const pageSize = 4096

type engine int

const (
	preCopy engine = iota
	postCopy
	hybridCopy
)

func (e engine) String() string { return [...]string{"precopy", "postcopy", "hybrid"}[e] }

// plan is what one migration does: its engine, its guest's size, and
// whether the extras are on: for pre-copy XBZRLE and LZ4 (an XBZRLE cache
// and encoding workers), for post-copy and hybrid an urgent connection.
type plan struct {
	e      engine
	pages  uint64
	extras bool
}

func (p plan) String() string {
	s := fmt.Sprintf("%v-%dMiB", p.e, p.pages*pageSize>>20)
	if p.extras {
		s += "-extras"
	}
	return s
}

// urgent says whether the migration opens an urgent connection besides its
// main one.
func (p plan) urgent() bool { return p.e != preCopy && p.extras }

// hello is what both ends of a migration of p announce.
func (p plan) hello() transport.Hello {
	return transport.Hello{PageSize: pageSize, PageCount: p.pages,
		Features: transport.FeatDigest | transport.FeatXBZRLE | transport.FeatLZ4}
}

// outcome is what one verified migration saw.
type outcome struct {
	p        plan
	took     time.Duration
	writes   uint64 // guest writes at the source while it migrated
	faults   uint64 // destination guest accesses that found their page missing
	verified bool   // every check passed
}

// dialer opens a connection: a source's dial, or a destination's accept.
type dialer func(context.Context) (transport.Conn, error)

// wiring is how the two ends of one migration get their connections: the
// destination takes its main one with accept and, if the plan has one, its
// urgent one with acceptUrgent; the source dials them with dial and
// dialUrgent.
type wiring struct {
	accept, acceptUrgent dialer
	dial, dialUrgent     dialer
}

// alone wires a migration that has ln to itself: the destination takes the
// next connections that arrive, in turn.
func alone(ln *transport.Listener, p plan) wiring {
	var tcfg transport.Config
	accept := func(ctx context.Context) (transport.Conn, error) {
		c, _, err := ln.AcceptConn(ctx, p.hello(), tcfg)
		return c, err
	}
	dial := testkit.Dialer(ln.Addr().String(), p.hello(), tcfg)
	return wiring{accept: accept, acceptUrgent: accept, dial: dial, dialUrgent: dial}
}

// migrate migrates src by plan p, its two ends wired by w, while a goroutine
// writes to src, and checks that it completed, verified at both ends, with
// the destination resumed once and holding the source's memory and state
// as at its pause. seed picks the pages the destination guest reads once
// resumed (post-copy and hybrid). It returns an error rather than failing a
// test, so that it may run in any goroutine. ctx bounds it, and so does a
// timeout of 30 s.
func migrate(ctx context.Context, src *region.Region, p plan, seed int, w wiring) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stopWriters, writes := testkit.Writers(src, 1)
	defer stopWriters()

	urgent := p.urgent()
	dvm := &destVM{resumed: make(chan struct{})}
	var (
		wg         sync.WaitGroup
		rep        *livemig.Report
		serr, derr error
		dok        bool // the destination's report says verified and resumed
		dmem       []byte
		faults     uint64
	)
	fail := func(err *error, e error) {
		*err = e
		cancel() // the other side stops waiting
	}
	start := time.Now()
	wg.Add(2)
	go func() { // destination
		defer wg.Done()
		conn, err := w.accept(ctx)
		if err != nil {
			fail(&derr, err)
			return
		}
		var ucn transport.Conn
		if urgent {
			if ucn, err = w.acceptUrgent(ctx); err != nil {
				conn.Close()
				fail(&derr, err)
				return
			}
		}
		if p.e == preCopy {
			dst, err := region.New(pageSize, p.pages)
			if err != nil {
				conn.Close()
				fail(&derr, err)
				return
			}
			defer dst.Close()
			drep, err := precopy.Receive(ctx, conn, precopy.Destination{Sink: dst, VM: dvm, Pages: p.pages, PageSize: pageSize}, precopy.Config{})
			if err != nil {
				fail(&derr, err)
				return
			}
			dok = drep.Verified && drep.Resumed
			dmem = bytes.Clone(dst.Bytes())
			return
		}
		fq := postcopy.NewFaultQueue(p.pages, nil)
		mem, err := postcopy.NewHeapMemory(pageSize, p.pages, fq.Fault)
		if err != nil {
			conn.Close()
			if ucn != nil {
				ucn.Close()
			}
			fail(&derr, err)
			return
		}
		// The guest at the destination: once resumed it reads 64 pages in
		// a seeded random order, each access waiting for its page and
		// requesting it if it is still missing.
		gctx, gcancel := context.WithCancel(ctx)
		defer gcancel()
		guestDone := make(chan struct{})
		go func() {
			defer close(guestDone)
			select {
			case <-dvm.resumed:
			case <-gctx.Done():
				return
			}
			order := rand.New(rand.NewPCG(uint64(seed), 1)).Perm(int(p.pages))
			for _, n := range order[:64] {
				if mem.Access(gctx, uint64(n), func(pg []byte) { _ = pg[0] }) != nil {
					return
				}
			}
		}()
		dst := postcopy.Destination{Memory: mem, VM: dvm, Faults: fq, Pages: p.pages, PageSize: pageSize}
		cfg := postcopy.Config{Urgent: ucn}
		var drep *postcopy.ReceiveReport
		if p.e == hybridCopy {
			drep, err = hybrid.Receive(ctx, conn, dst, hybrid.Config{Config: cfg})
		} else {
			drep, err = postcopy.Receive(ctx, conn, dst, cfg)
		}
		if err != nil {
			gcancel()
		}
		<-guestDone
		if err != nil {
			fail(&derr, err)
			return
		}
		dok = drep.Verified && drep.Resumed && drep.Complete
		faults = mem.Faults()
		dmem = bytes.Clone(mem.Bytes())
	}()
	go func() { // source
		defer wg.Done()
		conn, err := w.dial(ctx)
		if err != nil {
			fail(&serr, err)
			return
		}
		s := precopy.Source{Memory: src, Dirty: src, VM: src}
		if p.e == preCopy {
			cfg := precopy.Config{}
			if p.extras {
				cfg.Codec = codec.Config{PageSize: pageSize, XBZRLE: true, LZ4: true, Cache: delta.CacheConfig{Bytes: 1 << 20}}
			}
			if rep, err = precopy.Migrate(ctx, conn, s, cfg); err != nil {
				fail(&serr, err)
			}
			return
		}
		var ucn transport.Conn
		if urgent {
			if ucn, err = w.dialUrgent(ctx); err != nil {
				conn.Close()
				fail(&serr, err)
				return
			}
		}
		cfg := postcopy.Config{Urgent: ucn}
		if p.e == hybridCopy {
			rep, err = hybrid.Migrate(ctx, conn, s, hybrid.Config{Rounds: 2, Config: cfg})
		} else {
			rep, err = postcopy.Migrate(ctx, conn, s, cfg)
		}
		if err != nil {
			fail(&serr, err)
		}
	}()
	wg.Wait()
	o := outcome{p: p, took: time.Since(start), writes: writes(), faults: faults}
	if serr != nil || derr != nil {
		return o, fmt.Errorf("migration failed: source: %v; destination: %v", serr, derr)
	}
	// The source is still paused, so its memory is as at the pause.
	if !src.Paused() || rep == nil || !rep.Verified || !dok || dvm.resumes.Load() != 1 {
		return o, fmt.Errorf("completed with the source paused %v, source report %+v, destination verified and resumed %v, %d resumes",
			src.Paused(), rep, dok, dvm.resumes.Load())
	}
	if n, first := testkit.DiffPages(src.Bytes(), dmem, pageSize); n != 0 {
		return o, fmt.Errorf("completed but %d pages differ (first %d)", n, first)
	}
	if got := dvm.loaded(); !bytes.Equal(got, src.State()) {
		return o, fmt.Errorf("destination loaded state %q, want %q", got, src.State())
	}
	o.verified = true
	return o, nil
}

// destVM is a destination guest's control: it records the state loaded and
// the resumes, and closes resumed at the first.
type destVM struct {
	mu      sync.Mutex
	state   []byte
	resumes atomic.Int32
	resumed chan struct{}
}

func (v *destVM) Pause(context.Context) error { return nil }
func (v *destVM) Resume(context.Context) error {
	if v.resumes.Add(1) == 1 {
		close(v.resumed)
	}
	return nil
}
func (v *destVM) SaveState(_ context.Context, dst []byte) ([]byte, error) { return dst, nil }
func (v *destVM) LoadState(_ context.Context, s []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.state = append(v.state[:0], s...)
	return nil
}

func (v *destVM) loaded() []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return bytes.Clone(v.state)
}

// timeStats sums up wall times: mean, median, max and how many.
func timeStats(d []time.Duration) string {
	d = slices.Clone(d)
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	r := func(x time.Duration) time.Duration { return x.Round(100 * time.Microsecond) }
	return fmt.Sprintf("mean %v, median %v, max %v (%d)", r(sum/time.Duration(len(d))), r(d[len(d)/2]), r(d[len(d)-1]), len(d))
}

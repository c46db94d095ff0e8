package codec

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

// batchSize is how many pages go to a worker at once, at most.
const batchSize = 64

// batchBytes bounds a batch's page bytes: batches of large pages hold fewer
// pages, so that the buffers of all batches in flight, which scale with
// Workers, stay a few MiB per worker whatever the page size (64 pages of
// 2 MiB, in 14 batches for 2 workers, took 1.3 GiB).
const batchBytes = 256 << 10

// stripePages is how many consecutive pages go to one worker before the
// next worker's stripe begins: page n goes to worker (n / stripePages) % W,
// always the same one, since each worker keeps the XBZRLE copies of its
// own pages. Stripes of a batch's pages, not single pages, so that
// workers write neither the same cache lines of the digest (8 bytes a
// page) nor read neighbouring pages of the guest: with pages dealt one by
// one, two workers wrote every digest line in turn. They are a
// multi-stream Conn's runs, so that with as many workers as streams each
// worker's pages take one stream.
const stripePages = transport.StreamRun

// stripe returns the worker of page n among w, and the page's key in that
// worker's XBZRLE cache: the pages of a worker numbered from 0, densely.
func stripe(n uint64, w int) (worker int, key uint64) {
	s, off := n/stripePages, n%stripePages
	return int(s % uint64(w)), s/uint64(w)*stripePages + off
}

// queueDepth is how many batches may wait for each worker. Cheap pages
// (unchanged, small deltas) take 10-20 µs a batch, about what it takes the
// engine and the collector, sharing the cores with the workers, to be
// scheduled: with 2 batches a worker, two workers waited for work a third
// of the time; with 8, two workers took 205-211 ns an unchanged page
// instead of 297 (BenchmarkPipeline, docs/BENCHMARKS.md).
const queueDepth = 8

// Pipeline is the source's side: it turns page numbers into page records
// and passes them to a send function.
//
// For each page submitted, a worker reads it (Memory.ReadPage into a buffer
// of its own, or livemig.PageView when the memory has it), detects a zero
// page, updates the digest with the contents read, and chooses the encoding:
// zero page; else an XBZRLE delta against the page's cached copy when
// XBZRLE is on, the round is 2 or later and the page is cached (a page
// unchanged since its cached copy produces no record at all); else an LZ4
// block when LZ4 is on and the block saves at least 1/64 of the page
// (MaxLZ4); else the raw page. The zero-page test, LZ4 and raw are a
// PageEncoder's choice, the one every engine makes.
//
// The calls Submit, Barrier, StartRound, ObserveLink and Close come from one
// goroutine, the engine's. send is called from one goroutine at a time,
// never concurrently: the caller's own in Submit when Workers is 1, a
// collector goroutine otherwise. The Msg's Data is borrowed: it is valid
// only during the call (send copies it, as transport.Conn.Send does). Pages
// of one round reach send in any order, so a page must be submitted at most
// once per round; Barrier orders rounds, so that a newer copy of a page
// never reaches send before an older one.
//
// With Workers == 1 the pipeline starts no goroutine: Submit does
// everything, send included, before it returns, and the records depend
// only on the pages and the calls (and, through ObserveLink, on wall-clock
// encode costs, unless Config.VirtualTime is set). With Config.Clock the
// pipeline also advances that clock by the modelled encode and decode
// time (see the package doc's "Virtual time").
//
// With SendBatches, the workers build the batch frames themselves, in
// buffers the Conn lends (transport.Batch): a page is read straight into
// its record in the frame, and send is not called.
//
// Stats, RoundStats and Codecs may be called from any goroutine.
type Pipeline struct {
	cfg   Config
	ps    int
	pages uint64
	// batchPages is how many pages fill a batch: batchSize, fewer for
	// pages so large that batchBytes would be exceeded.
	batchPages int
	send       func(transport.Msg) error
	allowed    Codecs
	// SendBatches: the Conn that lends the batches' frames, and the
	// function that sends one; nil when records go one by one to send.
	batches   transport.BatchSender
	sendBatch func(*transport.Batch) error
	submitted bool // a page was submitted: SendBatches is too late

	// Owned by the engine's goroutine.
	par          params
	seq          uint64 // bumped whenever par changes
	closed       bool
	lastX, lastL CodecFacts

	// In virtual time with a Clock: the stream model that charges the
	// records' CPU time to it.
	vs *stream

	// Workers == 1.
	sw   *worker
	slot []byte

	// Workers > 1.
	in       []chan *batch
	out      chan *batch
	free     chan *batch
	pending  []*batch // per worker, being filled
	perBatch int      // bytes of a batch's arena
	tokens   []*batch // barrier tokens, one per worker
	barrier  chan struct{}
	workers  sync.WaitGroup
	collect  chan struct{} // closed when the collector ends

	failed            atomic.Bool
	mu                sync.Mutex
	err               error
	codecs            Codecs
	total             counters
	atRound, atWindow counters // total at StartRound, at the last ObserveLink
}

// batch is pages on their way to a worker and, encoded, to the collector.
type batch struct {
	par   params
	seq   uint64
	token bool // a barrier token: no pages
	n     int
	pages [batchSize]uint64
	recs  [batchSize]record
	// Where the records' data go: arena, a slot of a page per page (made
	// at the batch's first use), or, with SendBatches, frame, the batch
	// frame the worker builds the records in.
	arena []byte
	frame *transport.Batch
	ctr   counters
}

// NewPipeline returns a pipeline that reads pages from mem, records them in
// digest (nil: none) and passes their records to send.
//
// cfg.PageSize 0 means mem's page size; any other value must equal it.
// digest must cover mem's pages. Round numbers start with StartRound; until
// then the pipeline is in round 1. Close it when done.
func NewPipeline(cfg Config, mem livemig.Memory, digest *verify.Digest, send func(transport.Msg) error) (*Pipeline, error) {
	if mem == nil || send == nil {
		return nil, fmt.Errorf("%w: NewPipeline needs a Memory and a send function", ErrConfig)
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = mem.PageSize()
	}
	cfg, err := cfg.norm()
	if err != nil {
		return nil, err
	}
	if cfg.PageSize != mem.PageSize() {
		return nil, fmt.Errorf("%w: page size %d, memory's %d", ErrConfig, cfg.PageSize, mem.PageSize())
	}
	if digest != nil && digest.Pages() < mem.PageCount() {
		return nil, fmt.Errorf("%w: digest of %d pages for %d pages of memory", ErrConfig, digest.Pages(), mem.PageCount())
	}
	p := &Pipeline{
		cfg:     cfg,
		ps:      cfg.PageSize,
		pages:   mem.PageCount(),
		send:    send,
		allowed: Codecs{XBZRLE: cfg.XBZRLE, LZ4: cfg.LZ4},
	}
	p.codecs = p.allowed
	if cfg.StartOff {
		p.codecs = Codecs{}
	}
	if cfg.Clock != nil {
		p.vs = newStream(cfg.Clock)
	}
	p.par = params{gen: 1, xbzrle: p.codecs.XBZRLE, lz4: p.codecs.LZ4, timeOff: cfg.VirtualTime}
	W := cfg.Workers
	ws := make([]*worker, W)
	for i := range ws {
		if ws[i], err = newWorker(&p.cfg, mem, digest); err != nil {
			return nil, err
		}
	}
	if W == 1 {
		p.sw, p.slot = ws[0], make([]byte, p.ps)
		return p, nil
	}
	nb := (queueDepth+2)*W + 2
	p.in = make([]chan *batch, W)
	p.out = make(chan *batch, nb)
	p.free = make(chan *batch, nb)
	p.pending = make([]*batch, W)
	p.tokens = make([]*batch, W)
	p.barrier = make(chan struct{}, 1)
	p.collect = make(chan struct{})
	p.batchPages = max(1, min(batchSize, batchBytes/p.ps))
	p.perBatch = p.batchPages * p.ps
	for range nb {
		p.free <- &batch{}
	}
	for i := range W {
		p.in[i] = make(chan *batch, queueDepth)
		p.tokens[i] = &batch{token: true}
		p.workers.Add(1)
		go p.work(ws[i], p.in[i])
	}
	go p.collector()
	return p, nil
}

// StartRound begins round round; final marks the stop-and-copy round.
// Call it before the round's first Submit and after the previous round's
// Barrier. Round 1 is the first complete pass: the XBZRLE cache is used
// from round 2 on (a miss caches the page, a hit sends a delta), except
// that a miss in the final round is not cached. RoundStats count from here.
func (p *Pipeline) StartRound(round int, final bool) {
	p.par.gen = uint64(max(round, 0))
	p.par.last = final
	p.par.cached = round >= 2
	p.seq++
	p.mu.Lock()
	p.atRound = p.total
	p.mu.Unlock()
	if p.vs != nil {
		p.vs.startRound()
	}
}

// Submit queues page n for encoding and sending. With Workers == 1 the
// record has reached send when Submit returns; otherwise it will have once
// Barrier returns. A page past the memory's page count is an error wrapping
// livemig.ErrPageRange.
//
// A read error (a *livemig.PageError with Op "read"), an error from send
// (returned as it is) or ctx's error (wrapped) stops the pipeline: that
// Submit or a later Submit or Barrier returns it, and every later call
// returns it again. Pages submitted after the error are not sent.
func (p *Pipeline) Submit(ctx context.Context, n uint64) error {
	if err := p.check(ctx); err != nil {
		return err
	}
	if n >= p.pages {
		return &livemig.PageError{Op: "submit", Page: n, Err: livemig.ErrPageRange}
	}
	p.submitted = true
	if p.sw != nil {
		var (
			c   counters
			rec record
		)
		p.sw.encode(&p.par, n, p.slot, &rec, &c)
		if rec.err != nil {
			return p.fail(rec.err)
		}
		if err := p.emit(&rec); err != nil {
			return p.fail(err)
		}
		p.mu.Lock()
		p.total.add(&c)
		p.mu.Unlock()
		return nil
	}
	w, _ := stripe(n, len(p.in))
	b := p.pending[w]
	if b != nil && b.seq != p.seq {
		if err := p.dispatch(ctx, w); err != nil {
			return err
		}
		b = nil
	}
	if b == nil {
		select {
		case b = <-p.free:
		case <-ctx.Done():
			return p.fail(fmt.Errorf("codec: submit page %d: %w", n, ctx.Err()))
		}
		b.par, b.seq, b.n = p.par, p.seq, 0
		if p.batches != nil {
			if b.frame == nil {
				b.frame, b.arena = p.batches.NewBatch(wire.KindPage), nil
			}
		} else if b.arena == nil {
			b.arena = make([]byte, p.perBatch)
		}
		p.pending[w] = b
	}
	b.pages[b.n] = n
	if b.n++; b.n == p.batchPages {
		return p.dispatch(ctx, w)
	}
	return nil
}

// dispatch hands worker w its pending batch.
func (p *Pipeline) dispatch(ctx context.Context, w int) error {
	b := p.pending[w]
	p.pending[w] = nil
	select {
	case p.in[w] <- b:
		return nil
	case <-ctx.Done():
		p.free <- b
		return p.fail(fmt.Errorf("codec: hand pages to a worker: %w", ctx.Err()))
	}
}

// SendBatches makes the workers build the records of each batch of pages
// in a batch frame that bs lends (transport.Batch) and pass the frame to
// send whole, instead of passing each record to the send function given to
// NewPipeline: a page is read (ReadPage, or copied from its PageView)
// straight into its record in the frame, zero-checked, CRC'd and encoded
// there, and an encoded or zero page's record shrinks in place (see
// transport.Batch for who owns the bytes when). send is called as that
// send function is, from one goroutine at a time; the Batch is borrowed
// for the call and must go to bs.SendBatch, which empties it; the records
// of a batch in which a page could not be read are sent, up to that page,
// before the pipeline stops with the read error.
//
// A raw page goes with the CRC its digest term was made of
// (transport.Batch.Commit with the CRC): one pass over the page at the
// source for both. The pipeline's batches end where a frame would (at the
// Conn's Config.BatchBytes), so the frames are those the Conn builds, but
// their boundaries follow the pipeline's batches.
//
// Call it before the first Submit. It reports whether it took effect: it
// does not with one worker (Submit sends each record before it returns)
// or in virtual time (Config.VirtualTime, Config.Clock), where the records
// and the bytes a simulated link carries must depend only on the calls.
func (p *Pipeline) SendBatches(bs transport.BatchSender, send func(*transport.Batch) error) bool {
	if bs == nil || send == nil || p.sw != nil || p.vs != nil || p.cfg.VirtualTime || p.submitted || p.closed {
		return false
	}
	f := bs.NewBatch(wire.KindPage)
	p.batchPages = max(1, min(p.batchPages, f.Limit()/(p.ps+recordOverhead)))
	p.batches, p.sendBatch = bs, send
	p.par.inPlace = true
	b := <-p.free // all are there: nothing was submitted
	b.frame = f
	p.free <- b
	return true
}

// Barrier returns once every page submitted so far has been passed to
// send (or has been found unchanged), or with the error that stopped the
// pipeline. The engine calls it at the end of each round, before it sends
// the round's end. If ctx ends first, the pipeline is stopped with ctx's
// error.
func (p *Pipeline) Barrier(ctx context.Context) error {
	if err := p.check(ctx); err != nil {
		return err
	}
	if p.sw != nil {
		if p.vs != nil {
			p.vs.barrier()
		}
		return nil
	}
	for w, b := range p.pending {
		if b != nil {
			if err := p.dispatch(ctx, w); err != nil {
				return err
			}
		}
	}
	for w, t := range p.tokens {
		select {
		case p.in[w] <- t:
		case <-ctx.Done():
			return p.fail(fmt.Errorf("codec: barrier: %w", ctx.Err()))
		}
	}
	select {
	case <-p.barrier:
	case <-ctx.Done():
		return p.fail(fmt.Errorf("codec: barrier: %w", ctx.Err()))
	}
	if p.vs != nil {
		p.vs.barrier()
	}
	return p.loadErr()
}

// emit passes a record to send, unless it is an unchanged page; in
// virtual time it charges the record's CPU time first (see stream).
func (p *Pipeline) emit(r *record) error {
	if r.skip {
		if p.vs != nil {
			p.vs.skip(r.encPs)
		}
		return nil
	}
	if p.vs != nil {
		p.vs.before(r.encPs, r.decPs)
	}
	m := transport.Msg{Kind: wire.KindPage, Enc: r.enc, Page: r.page, Data: r.data}
	if r.enc == transport.EncRaw && r.haveCRC {
		m.DataCRC, m.HaveCRC = r.crc, true
	}
	if err := p.send(m); err != nil {
		return err
	}
	if p.vs != nil {
		p.vs.after()
	}
	return nil
}

// Close stops the workers and waits for them to end. Pages submitted
// since the last Barrier may or may not have been sent. Later calls return
// errors wrapping livemig.ErrClosed. Close always returns nil.
func (p *Pipeline) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	p.fail(fmt.Errorf("codec: pipeline: %w", livemig.ErrClosed))
	if p.sw != nil {
		return nil
	}
	for _, c := range p.in {
		close(c)
	}
	p.workers.Wait()
	close(p.out)
	<-p.collect
	return nil
}

// Stats returns the totals over every record that has reached send, and
// the codecs in use now (Codecs, as Codecs.String). Zero pages are not
// counted in RawBytes and EncodedBytes; a page found unchanged since its
// cached copy counts a cache hit, RawBytes and 0 EncodedBytes.
func (p *Pipeline) Stats() livemig.CodecStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.total.stats
	st.Codecs = p.codecs.String()
	return st
}

// RoundStats returns, since the last StartRound, the page records passed to
// send, how many of them were zero pages, and their bytes as records:
// transport.RecordOverhead plus the data each. The bytes that cross the
// link add the batches' frames: a Conn counts those (transport.Meter), and
// engines report its count.
// Pages found unchanged send no record and are not counted.
func (p *Pipeline) RoundStats() (pages, zeroPages, wireBytes uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total.records - p.atRound.records, p.total.zero - p.atRound.zero, p.total.wire - p.atRound.wire
}

// Codecs returns the codecs in use now.
func (p *Pipeline) Codecs() Codecs {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.codecs
}

// ObserveLink tells the pipeline the link's capacity, in wire bytes per
// second as the engine measures it on its Clock, and re-evaluates which
// codecs to use (see Adapt) from what was measured since the previous call;
// it returns the decision. The engine calls it at the end of each round,
// after Barrier, and may call it within a round too (package precopy does,
// every 32 MiB of pages, so that a long bulk round does not run its whole
// length on a codec slower than the link): the pages submitted after it
// are encoded with the new choice.
//
// bytesPerSec should be what the link can carry, not what it carried: when
// the encoders are the bottleneck the rate achieved is theirs. Measure the
// wire bytes over the time spent in send (which blocks while the link is
// busy), or use the link's configured bandwidth. Encode costs are measured
// on the wall clock inside the workers (one page in 8); with Config.Clock
// they are the cost model's, for every page, on Cost.Workers cores; with
// Config.VirtualTime alone they are zero and codecs are never turned off.
// With Config.NoAdapt, or an unknown bytesPerSec (≤ 0), nothing changes.
func (p *Pipeline) ObserveLink(bytesPerSec float64) Decision {
	p.mu.Lock()
	win := p.total
	sub(&win, &p.atWindow)
	p.atWindow = p.total
	cur := p.codecs
	p.mu.Unlock()
	if p.cfg.NoAdapt {
		return Decision{Codecs: cur, Reason: "adaptation off"}
	}
	if win.pages == 0 {
		return Decision{Codecs: cur, Reason: "no pages since the last look"}
	}
	in := float64(win.pages) * float64(p.ps)
	f := Facts{
		Workers:         p.cfg.Workers,
		LinkBytesPerSec: bytesPerSec,
		BaseWire:        float64(win.pages*recordOverhead+(win.pages-win.zero)*uint64(p.ps)) / in,
	}
	unit := 1.0 // of the counters' times, in ns
	if p.vs != nil {
		// Virtual time: the cost model timed every page, in picoseconds
		// of one core, and Cost.Workers cores encode.
		unit = 1e-3
		f.Workers = max(p.cfg.Cost.Workers, 1)
		f.BaseNsPerByte = float64(win.baseNs) * unit / float64(win.sampled)
	}
	measure := func(ran uint64, ns, saved uint64, last *CodecFacts) CodecFacts {
		if ran > 0 && (win.sampled > 0 || p.cfg.VirtualTime) {
			*last = CodecFacts{Known: true, SavedPerByte: float64(saved) / in}
			if win.sampled > 0 {
				last.NsPerByte = float64(ns) * unit / float64(win.sampled)
			}
		}
		return *last
	}
	// XBZRLE's gain shows only once pages hit the cache: a round of
	// misses only fills it.
	f.XBZRLE = measure(win.stats.CacheHits, win.xNs, win.xSaved, &p.lastX)
	f.LZ4 = measure(win.lRan, win.lNs, win.lSaved, &p.lastL)
	d := Adapt(f, cur, p.allowed)
	if d.Codecs != cur {
		p.cfg.Logger.Info("codec: switching codecs", "from", cur.String(), "to", d.Codecs.String(),
			"reason", d.Reason, "link_bytes_per_sec", bytesPerSec)
		p.switchTo(cur, d.Codecs)
	}
	return d
}

// SetCodecs turns the codecs of c on and the others off, for the pages
// submitted from now on: an engine's own decision (package advisor's
// adaptive pre-copy asks for compression when it predicts pre-copy will not
// converge without). Only codecs the Config enables may be turned on (see
// Config.StartOff); adaptation (ObserveLink) may turn them off again when
// they slow the migration. The same goroutine as Submit calls it.
func (p *Pipeline) SetCodecs(c Codecs) error {
	if (c.XBZRLE && !p.allowed.XBZRLE) || (c.LZ4 && !p.allowed.LZ4) {
		return fmt.Errorf("%w: codecs %s asked for, %s configured", ErrConfig, c, p.allowed)
	}
	p.mu.Lock()
	cur := p.codecs
	p.mu.Unlock()
	if c != cur {
		p.cfg.Logger.Info("codec: switching codecs on request", "from", cur.String(), "to", c.String())
		p.switchTo(cur, c)
	}
	return nil
}

// switchTo changes the codecs from cur to c.
func (p *Pipeline) switchTo(cur, c Codecs) {
	if cur.XBZRLE && !c.XBZRLE {
		p.par.epoch++ // the caches go stale while XBZRLE is off
	}
	p.par.xbzrle, p.par.lz4 = c.XBZRLE, c.LZ4
	p.seq++
	p.mu.Lock()
	p.codecs = c
	p.mu.Unlock()
}

// sub subtracts o's figures from c's (the window's since a snapshot).
func sub(c, o *counters) {
	s, t := &c.stats, &o.stats
	s.RawBytes -= t.RawBytes
	s.EncodedBytes -= t.EncodedBytes
	s.CacheHits -= t.CacheHits
	s.CacheMisses -= t.CacheMisses
	s.Overflows -= t.Overflows
	s.DeltaPages -= t.DeltaPages
	s.LZ4Pages -= t.LZ4Pages
	c.pages -= o.pages
	c.zero -= o.zero
	c.records -= o.records
	c.wire -= o.wire
	c.xSaved -= o.xSaved
	c.lSaved -= o.lSaved
	c.xRan -= o.xRan
	c.lRan -= o.lRan
	c.sampled -= o.sampled
	c.xNs -= o.xNs
	c.lNs -= o.lNs
	c.baseNs -= o.baseNs
}

func (p *Pipeline) check(ctx context.Context) error {
	if p.failed.Load() {
		return p.loadErr()
	}
	if err := ctx.Err(); err != nil {
		return p.fail(fmt.Errorf("codec: %w", err))
	}
	return nil
}

// fail stops the pipeline with err unless it was stopped already, and
// returns the error that stopped it.
func (p *Pipeline) fail(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
		p.failed.Store(true)
	}
	return p.err
}

func (p *Pipeline) loadErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// work is worker w's goroutine.
func (p *Pipeline) work(w *worker, in <-chan *batch) {
	defer p.workers.Done()
	for b := range in {
		if !b.token {
			b.ctr = counters{}
			if b.frame != nil {
				p.build(w, b)
			} else {
				for i := range b.n {
					slot := b.arena[i*p.ps : (i+1)*p.ps : (i+1)*p.ps]
					w.encode(&b.par, b.pages[i], slot, &b.recs[i], &b.ctr)
					if b.recs[i].err != nil {
						b.n = i + 1
						break
					}
				}
			}
		}
		p.out <- b
	}
}

// build encodes b's pages into b.frame (SendBatches): for each page it
// reserves a page's bytes in the frame, has the worker read and encode the
// page there, and commits the record (shrunk to the encoding's length, no
// data for a zero page) or gives the bytes back (a page unchanged since its
// cached copy, an error). A page that cannot be read ends the batch: its
// record is b.recs[b.n-1], with the error, and the frame holds the records
// before it.
func (p *Pipeline) build(w *worker, b *batch) {
	f := b.frame
	for i := range b.n {
		r := &b.recs[i]
		slot := f.Reserve(b.pages[i], p.ps)
		if slot == nil { // cannot happen: batchPages records of a page fit
			*r = record{page: b.pages[i], err: fmt.Errorf("codec: page %d does not fit its batch frame (%d records, %d bytes)", b.pages[i], f.Count(), f.Len())}
			b.n = i + 1
			return
		}
		w.encode(&b.par, b.pages[i], slot, r, &b.ctr)
		if r.err == nil && !r.skip {
			// The CRC is the page's: the record's data only when raw.
			r.err = f.Commit(r.enc, len(r.data), r.crc, r.haveCRC && r.enc == transport.EncRaw)
		}
		f.Cancel() // unchanged or failed: the bytes go back
		r.data = nil
		if r.err != nil {
			b.n = i + 1
			return
		}
	}
}

// collector is the goroutine that calls send.
func (p *Pipeline) collector() {
	defer close(p.collect)
	tokens := 0
	for b := range p.out {
		if b.token {
			if tokens++; tokens == len(p.in) {
				tokens = 0
				select {
				case p.barrier <- struct{}{}:
				default: // an abandoned Barrier's signal is still there
				}
			}
			continue
		}
		if b.frame != nil {
			p.collectFrame(b)
			continue
		}
		if !p.failed.Load() {
			var err error
			for i := range b.n {
				r := &b.recs[i]
				if r.err != nil {
					err = r.err
					break
				}
				if err = p.emit(r); err != nil {
					break
				}
			}
			p.account(b, err)
		}
		clear(b.recs[:b.n]) // drop references to guest memory and errors
		p.free <- b
	}
}

// account ends batch b's sending: the pipeline fails with err, or b's
// figures join the totals.
func (p *Pipeline) account(b *batch, err error) {
	if err != nil {
		p.fail(err)
		return
	}
	p.mu.Lock()
	p.total.add(&b.ctr)
	p.mu.Unlock()
}

// collectFrame sends batch b's frame (SendBatches) and returns b to the
// free list: the records a worker built, then the error that ended the
// batch, if any.
func (p *Pipeline) collectFrame(b *batch) {
	if !p.failed.Load() {
		var err error
		if b.frame.Count() > 0 {
			err = p.sendBatch(b.frame)
		}
		if err == nil && b.n > 0 {
			err = b.recs[b.n-1].err
		}
		p.account(b, err)
	}
	b.frame.Reset() // not sent: the pipeline stopped
	clear(b.recs[:b.n])
	p.free <- b
}

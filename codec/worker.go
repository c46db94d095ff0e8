package codec

import (
	"fmt"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
)

// params are the settings a page is encoded with, fixed when it is
// submitted.
type params struct {
	gen     uint64 // the round: the XBZRLE cache's generation
	last    bool   // the final round: a cache miss is not cached
	cached  bool   // round ≥ 2: the XBZRLE cache is in use
	xbzrle  bool   // XBZRLE on (adaptation)
	lz4     bool   // LZ4 on (adaptation)
	epoch   uint64 // XBZRLE cache epoch: a new one empties the caches
	timeOff bool   // VirtualTime: read no clock
	// inPlace: the slot is the record's place in a batch frame
	// (Pipeline.SendBatches), so the record's data is always a prefix
	// of it, never guest memory: a PageView's page is copied in.
	inPlace bool
}

// record is one encoded page on its way to send.
type record struct {
	page uint64
	enc  transport.Encoding
	skip bool   // unchanged since its cached copy: nothing to send
	data []byte // a prefix of the worker's slot, or a PageView for raw pages
	// crc is data's CRC32C for a raw page read into a slot (haveCRC): the
	// digest's, which the transport takes for the frame's CRC. Not for a
	// PageView, whose bytes the guest may change before the transport
	// copies them.
	crc     uint32
	haveCRC bool
	err     error
	// In virtual time, the record's time in the source's and the
	// destination's CPU stage, in picoseconds (CostModel.Stage).
	encPs, decPs int64
}

// counters are the figures a worker adds up and the pipeline folds into
// its totals when the records reach send.
type counters struct {
	stats livemig.CodecStats

	pages, zero uint64 // pages encoded, of which zero pages
	records     uint64 // records passed to send (unchanged pages skipped)
	wire        uint64 // their wire bytes
	xSaved      uint64 // wire bytes saved by XBZRLE
	lSaved      uint64 // by LZ4
	xRan, lRan  uint64 // pages the codec ran on
	sampled     uint64 // input bytes of the pages timed
	xNs, lNs    uint64 // time spent in each codec on the pages timed
	// In virtual time every page is "timed" by the cost model, and xNs,
	// lNs and baseNs (the encoding besides the codecs: zero check, copy,
	// digest) hold picoseconds of one core.
	baseNs uint64
}

func (c *counters) add(o *counters) {
	s, t := &c.stats, &o.stats
	s.RawBytes += t.RawBytes
	s.EncodedBytes += t.EncodedBytes
	s.CacheHits += t.CacheHits
	s.CacheMisses += t.CacheMisses
	s.Overflows += t.Overflows
	s.DeltaPages += t.DeltaPages
	s.LZ4Pages += t.LZ4Pages
	c.pages += o.pages
	c.zero += o.zero
	c.records += o.records
	c.wire += o.wire
	c.xSaved += o.xSaved
	c.lSaved += o.lSaved
	c.xRan += o.xRan
	c.lRan += o.lRan
	c.sampled += o.sampled
	c.xNs += o.xNs
	c.lNs += o.lNs
	c.baseNs += o.baseNs
}

// recordOverhead is a page record's cost besides its data: page number,
// encoding and length. A batch's frame header and CRC come on top, counted
// by the Conn that writes them (transport.Meter).
const recordOverhead = transport.RecordOverhead

// sampleEvery is how often a worker times a page's encoding: one page in
// sampleEvery, so that reading the clock costs little.
const sampleEvery = 8

// worker encodes pages. In the synchronous pipeline there is one, called
// by Submit; otherwise each runs in its own goroutine and owns its share of
// the XBZRLE cache.
type worker struct {
	cfg    *Config
	shards int // workers: page p is cached under stripe(p, shards)'s key
	mem    livemig.Memory
	view   livemig.PageView
	digest *verify.Digest

	cache   delta.Cache
	enc     *delta.Encoder
	epoch   uint64
	pe      PageEncoder // LZ4 or raw, once zero pages and XBZRLE are done
	scratch []byte      // encoder output
	// page is where a page that will likely shrink (XBZRLE or LZ4 in use)
	// is read: the worker's own, it stays in its core's cache, and only
	// what is sent is copied into the record's slot.
	page []byte
	tick int
	cost *CostModel // in virtual time (Config.Clock), else nil
}

func newWorker(cfg *Config, mem livemig.Memory, digest *verify.Digest) (*worker, error) {
	w := &worker{
		cfg:     cfg,
		shards:  cfg.Workers,
		mem:     mem,
		digest:  digest,
		scratch: make([]byte, 0, 2*cfg.PageSize+16),
		page:    make([]byte, cfg.PageSize),
	}
	w.view, _ = mem.(livemig.PageView)
	if cfg.Clock != nil {
		w.cost = cfg.Cost // norm made it ours
	}
	if cfg.XBZRLE {
		c, err := cfg.newCache()
		if err != nil {
			return nil, err
		}
		w.cache, w.enc = c, delta.NewEncoder(c, 0)
	}
	return w, nil
}

// syncEpoch drops the cache when the pipeline started a new epoch (XBZRLE
// was turned off, so the cached copies may no longer be what the
// destination holds), and makes a new one when XBZRLE is used again. It
// reports whether the cache is usable.
func (w *worker) syncEpoch(p *params, use bool) bool {
	if w.epoch != p.epoch {
		w.epoch = p.epoch
		w.cache, w.enc = nil, nil // let the old copies go before new ones come
	}
	if use && w.enc == nil {
		c, err := w.cfg.newCache() // validated by NewPipeline: cannot fail
		if err != nil {
			return false
		}
		w.cache, w.enc = c, delta.NewEncoder(c, 0)
	}
	return use && w.enc != nil
}

// key is page n's key in the worker's XBZRLE cache.
func (w *worker) key(n uint64) uint64 {
	_, k := stripe(n, max(w.shards, 1))
	return k
}

// encode reads page n, updates the digest, and fills rec. slot is a page
// sized buffer the record's data may point into (a prefix of it); it stays
// untouched until the record has been sent. With p.inPlace the data is
// always slot's prefix (or nil), never guest memory.
//
// Where the page is read: into slot when no codec is in use (the page goes
// raw, and is read once, straight where it is sent); else into the
// worker's own page, hot in its core's cache, so that a page found
// unchanged, zero or encoded costs no write to slot but its encoding: slot
// is a batch's memory, last read by the goroutine that sent the batch
// before (mostly on the other core), and writing a page there costs a
// cache miss per line. A page that goes raw after all is then copied in.
func (w *worker) encode(p *params, n uint64, slot []byte, rec *record, c *counters) {
	ps := len(slot)
	*rec = record{page: n}
	useX := false
	if w.cfg.XBZRLE {
		useX = w.syncEpoch(p, p.xbzrle && p.cached)
	}
	hold := slot
	if useX || p.lz4 {
		hold = w.page[:ps]
	}
	var src []byte
	viewed := false // src is guest memory, not hold
	if w.view != nil {
		v, err := w.view.View(n)
		if err == nil && len(v) != ps {
			err = fmt.Errorf("codec: view of %d bytes, page size %d", len(v), ps)
		}
		if err != nil {
			rec.err = &livemig.PageError{Op: "read", Page: n, Err: err}
			return
		}
		if p.inPlace {
			// The record's data is never guest memory: copy the page
			// (into the frame, or the worker's page if a codec may
			// shrink it) and take the digest's and the frame's CRC of
			// that copy.
			copy(hold, v)
			src = hold
		} else {
			src, viewed = v, true
		}
	} else {
		if err := w.mem.ReadPage(n, hold); err != nil {
			rec.err = &livemig.PageError{Op: "read", Page: n, Err: err}
			return
		}
		src = hold
	}
	c.pages++
	o := Outcome{NoDigest: w.digest == nil}
	sample := false
	if !p.timeOff {
		if w.tick++; w.tick >= sampleEvery {
			w.tick, sample = 0, true
			c.sampled += uint64(ps)
		}
	}
	zero := false
	if viewed {
		zero = IsZero(src) // guest memory, mostly not in cache
	} else {
		zero = isZeroCopied(src) // just copied: in L1
	}
	if zero {
		rec.enc = transport.EncZero
		if w.digest != nil {
			w.digest.Zero(n)
		}
		if useX {
			// The destination now holds zeros: so must the cache, or a
			// later delta would apply to a stale copy (QEMU's
			// xbzrle_cache_zero_page). A put for a cached page always
			// succeeds; a declined one leaves the page uncached.
			_ = w.cache.Put(w.key(n), p.gen, zeroPage[:ps])
		}
		c.zero++
		c.records++
		c.wire += recordOverhead
		o.Zero = true
		w.charge(&o, ps, rec, c)
		return
	}
	if viewed {
		if !useX && !p.lz4 {
			// Raw: send straight from guest memory, valid to the round's end.
			if w.digest != nil {
				w.digest.Update(n, src)
			}
			w.raw(rec, src, c)
			w.charge(&o, ps, rec, c)
			return
		}
		// The encoders and the cache need bytes that hold still.
		copy(hold, src)
		src = hold
	}
	if w.digest != nil {
		rec.crc, rec.haveCRC = verify.CRC(src), true
		w.digest.UpdateCRC(n, rec.crc)
	}
	c.stats.RawBytes += uint64(ps)
	var t0, t1 time.Time
	if sample {
		t0 = time.Now()
	}
	if useX {
		c.xRan++
		out, res := w.enc.Encode(w.scratch[:0], w.key(n), p.gen, src, p.last)
		if sample {
			t1 = time.Now()
			c.xNs += uint64(t1.Sub(t0))
			t0 = t1
		}
		o.XBZRLE = xbzrleSteps[res]
		switch res {
		case delta.ResultDelta:
			o.DeltaBytes = len(out)
			c.stats.CacheHits++
			c.stats.DeltaPages++
			c.stats.EncodedBytes += uint64(len(out))
			c.xSaved += uint64(ps - len(out))
			rec.enc, rec.data = transport.EncXBZRLE, slot[:copy(slot, out)]
			c.records++
			c.wire += recordOverhead + uint64(len(out))
			w.charge(&o, ps, rec, c)
			return
		case delta.ResultUnchanged:
			c.stats.CacheHits++
			c.xSaved += uint64(ps) + recordOverhead
			rec.skip = true
			w.charge(&o, ps, rec, c)
			return
		case delta.ResultOverflow:
			c.stats.CacheHits++
			c.stats.Overflows++
		default:
			c.stats.CacheMisses++
		}
	}
	// The rest of the choice is the PageEncoder's: LZ4 or raw.
	w.pe.LZ4 = p.lz4
	enc, out := w.pe.encodeNonZero(w.scratch[:0], src)
	if p.lz4 {
		c.lRan++
		if sample {
			c.lNs += uint64(time.Since(t0))
		}
		o.LZ4 = LZ4Rejected
	}
	if enc == transport.EncLZ4 {
		k := len(out)
		o.LZ4 = LZ4Sent
		c.stats.LZ4Pages++
		c.stats.EncodedBytes += uint64(k)
		c.lSaved += uint64(ps - k)
		rec.enc, rec.data = transport.EncLZ4, slot[:copy(slot, out)]
		c.records++
		c.wire += recordOverhead + uint64(k)
		w.charge(&o, ps, rec, c)
		return
	}
	c.stats.RawBytes -= uint64(ps) // raw adds it back
	if &src[0] != &slot[0] {
		src = slot[:copy(slot, src)] // read into w.page: sent from slot
	}
	w.raw(rec, src, c)
	w.charge(&o, ps, rec, c)
}

// xbzrleSteps maps delta's results to the cost model's steps.
var xbzrleSteps = [...]XBZRLEStep{
	delta.ResultMiss:      XBZRLEMiss,
	delta.ResultDelta:     XBZRLEDelta,
	delta.ResultUnchanged: XBZRLEUnchanged,
	delta.ResultOverflow:  XBZRLEOverflow,
}

// charge, in virtual time, sets rec's stage times from the cost of the
// page's outcome o, and adds the cost to c for adaptation: every page
// counts as timed.
func (w *worker) charge(o *Outcome, ps int, rec *record, c *counters) {
	if w.cost == nil {
		return
	}
	m := w.cost
	enc := m.encodePs(*o, ps)
	x, l := m.xbzrlePs(*o, ps), m.lz4Ps(*o, ps)
	rec.encPs = enc / int64(max(m.Workers, 1))
	rec.decPs = m.decodePs(*o, ps) / int64(max(m.DecodeWorkers, 1))
	c.sampled += uint64(ps)
	c.xNs += uint64(x)
	c.lNs += uint64(l)
	c.baseNs += uint64(enc - x - l)
}

func (w *worker) raw(rec *record, src []byte, c *counters) {
	rec.enc, rec.data = transport.EncRaw, src
	c.stats.RawBytes += uint64(len(src))
	c.stats.EncodedBytes += uint64(len(src))
	c.records++
	c.wire += recordOverhead + uint64(len(src))
}

package postcopy

import (
	"fmt"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/transport"
)

// Core is the post-copy source's decisions, as a deterministic state
// machine in the manner of etcd-raft's RawNode: fed facts (a request
// arrived, a record went out and its size, the dirty log, the time) it says
// what to send next on which connection, and when to wake. It runs no
// goroutine, reads no clock and holds no lock; the same Core runs under
// Migrate's goroutines and sockets and under package scenario's event loop,
// so the simulated migration makes exactly the engine's choices.
//
// # Driving it
//
// A driver asks Next for the next step of a connection and carries it out:
//
//   - OpPage: read page Out.Page, encode it, send it on the connection asked
//     for, then call Wrote with its encoding and data length. With Out.Flush
//     flush the connection after it: a request's pages are all out.
//   - OpDiscard: the pre-copy rounds left the copies set in Out.Stale stale
//     at the destination: send them as KindDiscard chunks, then KindEndRound
//     with the ack flag, wait for Ack(AckRound), and call Discarded.
//   - OpPause: pause the guest, sync the dirty log into DirtyLog() (after
//     pre-copy rounds: AfterPreCopy),
//     call Paused, send the Discard chunks it returns, then the switchover
//     and the state; once the destination is ready, send the Commit and
//     call Committed (a request that comes in between is taken in).
//   - OpMarker (urgent connection only): send the urgent stream's end
//     marker, then call Wrote.
//   - OpDone (main connection only): every page and the marker are out:
//     send KindDone and wait for the destination's Ack(AckComplete).
//   - OpWait: nothing to send on this connection before Out.At (the push's
//     rate cap) unless an input comes first; OpIdle: nothing until an input.
//     With Out.Flush flush the connection before waiting (not before a wait
//     of the rate cap shorter than pushSlack: a flush a page otherwise).
//
// Request is the input of a page request; Reconnected that of a new
// connection after a cut. After an input the driver asks Next again on every
// connection that was waiting.
//
// A hybrid migration's rounds are pre-copy's (precopy.HandOff); AfterPreCopy
// starts the Core where they ended.
//
// Every method must be called from one goroutine at a time (the driver's
// lock, or its only goroutine). A step's Discarded or Paused comes
// before the next Next; a page's or the marker's Wrote before the next Next
// on its connection.
type Core struct {
	cfg   CoreConfig
	pages uint64

	phase corePhase
	sent  *bitmap.Bitmap // pages whose current copy is sent or held
	usent *bitmap.Bitmap // pages sent on the urgent connection this session
	ever  *bitmap.Bitmap // pages sent at least once
	dirty *bitmap.Bitmap // dirty log: the driver syncs into it

	// Pre-copy's rounds (AfterPreCopy).
	precopied bool
	rounds    []livemig.Round
	codecBase *livemig.CodecStats // their codecs' figures

	plan []uint64 // the push order
	at   int      // next index in plan; an ascending push: the next page

	// Post-copy.
	prepage    prepager
	early      []reqRange // requests before the push was planned
	reqMain    pageQueue  // requested pages to send on the main connection
	reqUrg     pageQueue  // and on the urgent one
	nextPush   time.Time
	pushDone   bool // every page is sent
	markerSent bool
	doneSent   bool

	start, pauseAt time.Time
	toPush         uint64
	pre            counters // at the pause

	n counters
}

// CoreConfig is what a Core needs of a migration's settings.
type CoreConfig struct {
	// Pages is the guest's page count, PageSize its page size.
	Pages    uint64
	PageSize int
	// PushBandwidth, LZ4 and Order are Config's; Prepage is the
	// pre-paging base window (Config.Prepage after its defaults: 0
	// pre-pages nothing).
	PushBandwidth int64
	LZ4           bool
	Order         livemig.Order
	Prepage       int
	// Urgent says requested pages go on an urgent connection.
	Urgent bool
}

type corePhase uint8

const (
	phasePause    corePhase = iota // waiting for Paused
	phaseDiscard                   // stale copies to discard before the pause
	phaseHandover                  // switchover: waiting for Committed
	phasePush                      // post-copy
)

// Op is what a Core asks its driver to do; see Core.
type Op uint8

// The steps of a migration; see Core.
const (
	OpIdle Op = iota
	OpWait
	OpPage
	OpDiscard
	OpPause
	OpMarker
	OpDone
)

var opNames = [...]string{"Idle", "Wait", "Page", "Discard", "Pause", "Marker", "Done"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Out is one step a Core asks for.
type Out struct {
	Op     Op
	Page   uint64    // OpPage
	Pulled bool      // OpPage: requested or pre-paged, not pushed
	Flush  bool      // OpPage: the last page of a request's; OpWait, OpIdle: flush first
	Round  int       // OpMarker: the post-copy phase's round
	At     time.Time // OpWait
	// Stale is OpDiscard's pages, in the dirty log's layout; the Core's,
	// valid until Discarded. Bytes is their Discard chunks' size on the
	// wire: their frames, at the framing's defaults.
	Stale []uint64
	Bytes int
}

// counters are a Core's figures.
type counters struct {
	sent, bytes, zero, resent, pushed, pulled uint64
	raw, encoded, lz4                         uint64 // with LZ4
}

// NewCore returns the Core of a migration starting at now.
func NewCore(cfg CoreConfig, now time.Time) (*Core, error) {
	if cfg.Pages == 0 || cfg.Pages > bitmap.MaxPages {
		return nil, fmt.Errorf("postcopy: core of %d pages: %w", cfg.Pages, livemig.ErrPageRange)
	}
	if cfg.PushBandwidth < 0 {
		return nil, fmt.Errorf("postcopy: core: negative PushBandwidth %d", cfg.PushBandwidth)
	}
	c := &Core{cfg: cfg, pages: cfg.Pages, start: now,
		sent: bitmap.New(cfg.Pages), usent: bitmap.New(cfg.Pages), ever: bitmap.New(cfg.Pages), dirty: bitmap.New(cfg.Pages),
		prepage: newPrepager(cfg.Prepage)}
	c.phase = phasePause
	return c, nil
}

// AfterPreCopy starts the Core where pre-copy's rounds left the migration
// (precopy.HandOff): sent names the pages sent at least once, dirty those
// the last sync of the dirty log found written since (both in the dirty
// log's layout, at least the guest's words; the Core copies them), and rep
// holds the rounds and figures so far. It must come before the first Next.
// The copies at the destination of pages in both are stale: the Core first
// has them discarded (OpDiscard) while the guest runs, then pauses, and
// the push sends every page not current there.
func (c *Core) AfterPreCopy(sent, dirty []uint64, rep *livemig.Report) error {
	if c.phase != phasePause || c.precopied || c.ever.Count() > 0 {
		return fmt.Errorf("postcopy: core: AfterPreCopy after the migration began")
	}
	if n, past := bitmap.Words(dirty).NextSet(c.pages); past {
		return fmt.Errorf("postcopy: core: pre-copy's dirty log names page %d of %d: %w", n, c.pages, livemig.ErrPageRange)
	}
	ever, err := bitmap.FromWords(sent, c.pages)
	if err != nil {
		return fmt.Errorf("postcopy: core: pre-copy's sent pages: %w (%w)", livemig.ErrPageRange, err)
	}
	d, err := bitmap.FromWords(dirty, c.pages)
	if err != nil {
		return fmt.Errorf("postcopy: core: pre-copy's dirty pages: %w (%w)", livemig.ErrPageRange, err)
	}
	c.ever.Union(ever)
	c.dirty.Union(d)
	c.dirty.Intersect(c.ever) // stale; a page never sent is just unsent
	c.sent.Union(c.ever)
	c.precopied = true
	c.rounds = append(c.rounds[:0], rep.Rounds...)
	c.n.sent, c.n.zero, c.n.resent, c.n.bytes = rep.PagesSent, rep.ZeroPages, rep.PagesResent, rep.BytesSent
	if rep.Codec != nil {
		cs := *rep.Codec
		c.codecBase = &cs
	}
	if c.dirty.Count() > 0 {
		c.phase = phaseDiscard
	}
	return nil
}

// DirtyLog is the bitmap the driver syncs the dirty log into, at OpSync and
// OpPause.
func (c *Core) DirtyLog() []uint64 { return c.dirty.Words() }

// Next returns the next step on the main connection or, urgent, on the
// urgent one, at time now.
func (c *Core) Next(now time.Time, urgent bool) Out {
	if urgent {
		return c.nextUrgent()
	}
	switch c.phase {
	case phaseDiscard:
		return Out{Op: OpDiscard, Stale: c.dirty.Words(), Bytes: discardSize(c.dirty.Words())}
	case phasePause:
		return Out{Op: OpPause}
	case phasePush:
		return c.nextMain(now)
	}
	return Out{Op: OpIdle}
}

// order appends the pages set in bm to dst in the push order: the Order's,
// or ascending.
func (c *Core) order(dst, bm []uint64) ([]uint64, error) {
	if c.cfg.Order != nil {
		dst = c.cfg.Order.Plan(dst, bm)
		for _, n := range dst {
			if n >= c.pages {
				return dst, fmt.Errorf("postcopy: order %s planned page %d of %d: %w", c.cfg.Order.Name(), n, c.pages, livemig.ErrPageRange)
			}
		}
		return dst, nil
	}
	b, _ := bitmap.FromWords(bm, c.pages)
	var buf [256]uint64
	for next := uint64(0); ; {
		var out []uint64
		if next, out = b.NextSetMany(next, buf[:]); len(out) == 0 {
			return dst, nil
		}
		dst = append(dst, out...)
	}
}

// checkDirty fails if the dirty log names pages past the guest's end.
func (c *Core) checkDirty() error {
	if n, past := bitmap.Words(c.dirty.Words()).NextSet(c.pages); past {
		return fmt.Errorf("postcopy: dirty log reports page %d of %d: %w", n, c.pages, livemig.ErrPageRange)
	}
	return nil
}

// Discarded says the destination has made the pages of OpDiscard missing:
// they are unsent, for the push to send after the switchover.
func (c *Core) Discarded() {
	if c.phase != phaseDiscard {
		return
	}
	c.sent.Difference(c.dirty)
	c.dirty.ClearAll()
	c.phase = phasePause
}

// Paused says the guest is paused, at now, and (hybrid) the dirty log is
// synced into DirtyLog. It returns, as an OpDiscard step, the pages whose
// copy at the destination is stale, for the switchover's Discard chunks
// (none: no chunk); they and every page not yet sent are left for the push.
func (c *Core) Paused(now time.Time) (Out, error) {
	if c.phase != phasePause {
		return Out{}, fmt.Errorf("postcopy: core: Paused in phase %d", c.phase)
	}
	c.pauseAt = now
	c.pre = c.n
	c.phase = phaseHandover
	if c.precopied {
		if err := c.checkDirty(); err != nil {
			return Out{}, err
		}
		if c.cfg.Order != nil {
			c.cfg.Order.Observe(c.dirty.Words())
		}
		// The dirty pages sent are stale there, except those already
		// discarded (unsent now).
		c.dirty.Intersect(c.sent)
		c.sent.Difference(c.dirty)
	} else {
		c.dirty.ClearAll()
	}
	c.toPush = c.pages - c.sent.Count()
	return Out{Op: OpDiscard, Stale: c.dirty.Words(), Bytes: discardSize(c.dirty.Words())}, nil
}

// ToPush is how many pages the destination lacked at the switchover.
func (c *Core) ToPush() uint64 { return c.toPush }

// Round is the current round: the pre-copy rounds', then the post-copy
// phase's.
func (c *Core) Round() int { return len(c.rounds) + 1 }

// Committed says the Commit went out at now: the push starts. Requests
// may come in between: Request takes them in after the pause.
func (c *Core) Committed(now time.Time) error {
	if c.phase != phaseHandover {
		return fmt.Errorf("postcopy: core: Committed in phase %d", c.phase)
	}
	c.dirty.ClearAll()
	c.phase = phasePush
	return c.startPush(now)
}

// Reconnected says a new session starts at now, the destination holding
// the pages set in held (KVM layout, at least the guest's words), with an
// urgent connection if urgent. Pages not held are pushed again.
func (c *Core) Reconnected(now time.Time, held []uint64, urgent bool) error {
	if c.phase != phasePush {
		return fmt.Errorf("postcopy: core: Reconnected in phase %d", c.phase)
	}
	h, err := bitmap.FromWords(held, c.pages)
	if err != nil {
		return fmt.Errorf("postcopy: core: held bitmap of %d words for %d pages: %w (%w)", len(held), c.pages, livemig.ErrPageRange, err)
	}
	c.sent.ClearAll()
	c.sent.Union(h)
	c.usent.ClearAll()
	c.cfg.Urgent = urgent
	return c.startPush(now)
}

// startPush plans the push of every page not sent: in the Order's order,
// or ascending, by a cursor over the pages unsent now (c.dirty, unused
// after the pause) that costs nothing to set up, so that the hand-over
// does not wait for a plan of every page. Requests that came before it are
// taken in.
func (c *Core) startPush(now time.Time) error {
	c.reqMain.reset()
	c.reqUrg.reset()
	c.pushDone, c.markerSent, c.doneSent = false, false, false
	unsent := c.dirty
	unsent.ClearAll()
	unsent.Union(c.sent)
	unsent.Complement()
	c.plan, c.at, c.nextPush = c.plan[:0], 0, now
	if c.cfg.Order != nil {
		var err error
		if c.plan, err = c.order(c.plan, unsent.Words()); err != nil {
			return err
		}
		unsent.ClearAll()
	}
	early := c.early
	c.early = nil
	for _, r := range early {
		if err := c.Request(r.page, r.count); err != nil {
			return err
		}
	}
	return nil
}

// nextPushPage returns the push's next page not yet sent, from c.at on.
func (c *Core) nextPushPage() (uint64, bool) {
	if c.cfg.Order != nil {
		for ; c.at < len(c.plan); c.at++ {
			if n := c.plan[c.at]; !c.sent.Test(n) {
				return n, true
			}
		}
		return 0, false
	}
	for {
		n, ok := bitmap.Words(c.dirty.Words()).NextSet(uint64(c.at))
		if !ok || n >= c.pages {
			return 0, false
		}
		c.at = int(n)
		if !c.sent.Test(n) {
			return n, true
		}
		c.at++ // sent on request
	}
}

// Request takes the destination's request for pages [page, page+count):
// those that need it, and their pre-paged neighbours, go next on the urgent
// connection (or, without one, on the main connection before the push). On
// the urgent connection a page goes even if the push sent it already (it
// may be queued behind the push), once a session. A request after every
// page is sent asks for nothing. A count of 0 asks for one page. A request
// that reaches past the guest's end is an error (the destination's is
// bad input: the transport does not check it).
func (c *Core) Request(page, count uint64) error {
	if page >= c.pages || count > c.pages-page {
		return fmt.Errorf("postcopy: request for %d pages from page %d of %d: %w", count, page, c.pages, livemig.ErrPageRange)
	}
	if c.phase == phaseHandover {
		// The Commit is out and the guest runs there, but the push is not
		// planned yet: take the request in then.
		if uint64(len(c.early)) >= c.pages {
			return fmt.Errorf("postcopy: %d requests before the push started: %w", len(c.early), livemig.ErrCorrupt)
		}
		c.early = append(c.early, reqRange{page, count})
		return nil
	}
	if c.phase != phasePush {
		return fmt.Errorf("postcopy: request for page %d before the hand-over: %w", page, livemig.ErrCorrupt)
	}
	if c.pushDone && (c.cfg.Urgent || c.doneSent) {
		return nil // every page is on its way
	}
	count = max(count, 1)
	q := &c.reqMain
	if c.cfg.Urgent {
		q = &c.reqUrg
	}
	for n := page; n < page+count; n++ {
		if c.claim(n, c.cfg.Urgent) {
			q.push(n)
		}
	}
	// Pre-page around the last page asked for, in the direction faults go.
	last := page + count - 1
	dir, more := c.prepage.next(last, c.pages)
	for i := 1; i <= more; i++ {
		n := last + uint64(i)
		if dir < 0 {
			n = last - uint64(i)
		}
		if c.claim(n, false) {
			q.push(n)
		}
	}
	return nil
}

// claim marks page n sent and says whether it needs sending; resend (an
// urgent request) sends it even if pushed, once a session.
func (c *Core) claim(n uint64, resend bool) bool {
	if resend {
		if c.usent.Test(n) {
			return false
		}
		_ = c.usent.Set(n)
		_ = c.sent.Set(n)
		return true
	}
	if c.sent.Test(n) {
		return false
	}
	_ = c.sent.Set(n)
	if c.cfg.Urgent {
		_ = c.usent.Set(n)
	}
	return true
}

// nextMain is the main connection's next step in the post-copy phase:
// requested pages (without an urgent connection), then the push at its
// rate, then Done.
func (c *Core) nextMain(now time.Time) Out {
	if n, ok := c.reqMain.pop(); ok {
		return Out{Op: OpPage, Page: n, Pulled: true, Flush: c.reqMain.empty()}
	}
	if c.doneSent {
		return Out{Op: OpIdle, Flush: true}
	}
	for !c.pushDone {
		n, ok := c.nextPushPage()
		if !ok {
			c.pushDone = true
			break
		}
		if c.cfg.PushBandwidth > 0 {
			if now.Before(c.nextPush) {
				// Flush before a wait, but a short one of the rate cap:
				// a flush a page would cost a write a page.
				return Out{Op: OpWait, At: c.nextPush, Flush: c.nextPush.Sub(now) > pushSlack}
			}
			// Behind schedule: catch up, by at most pushSlack.
			if floor := now.Add(-pushSlack); c.nextPush.Before(floor) {
				c.nextPush = floor
			}
		}
		c.at++
		_ = c.sent.Set(n)
		return Out{Op: OpPage, Page: n}
	}
	if c.cfg.Urgent && !c.markerSent {
		return Out{Op: OpIdle, Flush: true}
	}
	c.doneSent = true
	return Out{Op: OpDone}
}

// nextUrgent is the urgent connection's next step: requested pages, then,
// once the push is done, the end marker.
func (c *Core) nextUrgent() Out {
	if c.phase != phasePush || !c.cfg.Urgent {
		return Out{Op: OpIdle}
	}
	if n, ok := c.reqUrg.pop(); ok {
		return Out{Op: OpPage, Page: n, Pulled: true, Flush: c.reqUrg.empty()}
	}
	if c.pushDone && !c.markerSent {
		return Out{Op: OpMarker, Round: c.Round()}
	}
	return Out{Op: OpIdle}
}

// PushDone says every page has been sent (or is being sent).
func (c *Core) PushDone() bool { return c.pushDone }

// Wrote says step o went out as a record of encoding enc carrying dataLen
// bytes of data (OpPage), or the marker did (OpMarker).
func (c *Core) Wrote(o Out, enc transport.Encoding, dataLen int) {
	switch o.Op {
	case OpMarker:
		c.markerSent = true
		return
	case OpPage:
	default:
		return
	}
	size := uint64(recordOverhead + dataLen) // the push's rate counts records
	n := &c.n
	n.sent++
	if c.ever.Test(o.Page) {
		n.resent++
	}
	_ = c.ever.Set(o.Page)
	if enc == transport.EncZero {
		n.zero++
	} else if c.cfg.LZ4 {
		n.raw += uint64(c.cfg.PageSize)
		n.encoded += uint64(dataLen)
		if enc == transport.EncLZ4 {
			n.lz4++
		}
	}
	if c.phase != phasePush {
		return
	}
	if o.Pulled {
		n.pulled++
		return
	}
	n.pushed++
	if c.cfg.PushBandwidth > 0 {
		c.nextPush = c.nextPush.Add(time.Duration(size * uint64(time.Second) / uint64(c.cfg.PushBandwidth)))
	}
}

// Written tells the Core how many bytes the driver's connections have
// written to their links so far (transport.Meter's count, or a model's
// transport.Framing): the figure its rounds and its report count. Call it
// before Synced, Paused and Fill, so that a round's bytes are those written
// up to its end.
func (c *Core) Written(total uint64) { c.n.bytes = total }

// SentSincePause is how many pages went out since the pause.
func (c *Core) SentSincePause() uint64 { return c.n.sent - c.pre.sent }

// PagesSent is how many page records went out in all.
func (c *Core) PagesSent() uint64 { return c.n.sent }

// Fill writes the Core's figures into r: the pre-copy rounds, then (once
// paused) the post-copy phase ending at end, and the totals. resumed is when
// the destination said it resumed (zero: not known).
func (c *Core) Fill(r *livemig.Report, end, resumed time.Time, handed bool) {
	r.Rounds = append(r.Rounds[:0], c.rounds...)
	if !c.pauseAt.IsZero() {
		r.Rounds = append(r.Rounds, livemig.Round{
			Index: len(c.rounds) + 1, Final: true, Start: c.pauseAt.Sub(c.start), Duration: end.Sub(c.pauseAt),
			DirtyPages: c.toPush, PagesSent: c.n.sent - c.pre.sent, ZeroPages: c.n.zero - c.pre.zero,
			Bytes: c.n.bytes - c.pre.bytes,
		})
	}
	r.TotalTime = end.Sub(c.start)
	if !resumed.IsZero() && !c.pauseAt.IsZero() {
		r.Downtime = resumed.Sub(c.pauseAt)
	}
	r.BytesSent, r.PagesSent, r.PagesResent, r.ZeroPages = c.n.bytes, c.n.sent, c.n.resent, c.n.zero
	if c.cfg.LZ4 || c.codecBase != nil {
		var cs livemig.CodecStats
		if c.codecBase != nil {
			cs = *c.codecBase
		}
		cs.RawBytes += c.n.raw
		cs.EncodedBytes += c.n.encoded
		cs.LZ4Pages += c.n.lz4
		r.Codec = &cs
	}
	r.Converged = true
	if handed {
		if r.PostCopy == nil {
			r.PostCopy = &livemig.PostCopyStats{}
		}
		r.PostCopy.PagesPushed, r.PostCopy.PagesPulled = c.n.pushed, c.n.pulled
	}
}

// reqRange is a request taken before the push was planned.
type reqRange struct{ page, count uint64 }

// pageQueue is a FIFO of pages that reuses its array: popping moves a head,
// and an emptied queue starts again at the array's start, so a steady flow
// of requests allocates nothing.
type pageQueue struct {
	q    []uint64
	head int
}

func (f *pageQueue) push(n uint64) { f.q = append(f.q, n) }

func (f *pageQueue) pop() (uint64, bool) {
	if f.head == len(f.q) {
		return 0, false
	}
	n := f.q[f.head]
	if f.head++; f.head == len(f.q) {
		f.reset()
	}
	return n, true
}

func (f *pageQueue) empty() bool { return f.head == len(f.q) }

func (f *pageQueue) reset() { f.q, f.head = f.q[:0], 0 }

package scenario

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/sim"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// Defaults of PostCopy's model parameters.
const (
	// DefaultQueueBytes is PostCopy.QueueBytes' default: the push data a
	// source has written into its connection but not yet onto the wire
	// (the socket's send buffer), ahead of a requested page that goes on
	// the same connection. Linux grows a bulk TCP sender's buffer to a few
	// MiB; 1 MiB is a modest figure.
	DefaultQueueBytes = 1 << 20
	// DefaultQuantum is PostCopy.Quantum's default: the step in which the
	// destination's vCPU runs the workload.
	DefaultQuantum = 10 * time.Microsecond
)

// PostCopy is a post-copy migration in the simulated world, or with
// PreCopyRounds > 0 a hybrid one; its Migrate method is a Migrator.
//
// A hybrid migration's pre-copy rounds are pre-copy's own engine, as
// hybrid.Migrate runs them (precopy.HandOff with hybrid.Config's
// PreCopyConfig): over the scenario's simulated link, package precopy's
// Receive applying them to the sink, the codecs' CPU charged by the
// scenario's cost model. From where they end (or from the start, for
// post-copy) it runs package postcopy's Core, the engine's own decisions
// (the discard of stale copies, the push in the Order's order at its rate
// cap, the pages a request brings and the send-once rule, and every
// counter of the report), in an event loop over a model of the link and
// of the destination's vCPU:
//
//   - The link carries one record at a time at the scenario's bandwidth;
//     each arrives a latency after its last byte left. The source keeps
//     QueueBytes of push written ahead of the wire. A requested page on the
//     main connection joins the end of that queue; with Urgent it goes on
//     the wire next, after the record being sent (QEMU's
//     postcopy-preempt).
//   - The hosts' CPUs are the scenario's codec.CostModel: a page holds its
//     connection for the longer of its bytes on the wire and its encoding at
//     the source or decoding at the destination (one goroutine encodes
//     what a connection sends, one decodes what it receives), so LZ4 slows
//     a push on a link faster than one core compresses.
//   - The source asks the Core for the main connection's next record when
//     the queue has room, and for the urgent connection's when a request
//     arrives: as Migrate does when its writes return.
//   - The destination runs one vCPU: from the resume on, the workload's
//     writes (continuing from the running time the guest had at the pause)
//     are its accesses, made in steps of Quantum. An access to a page that
//     has not arrived is a demand fault: the vCPU stops, a request crosses
//     the return path, and the vCPU runs again when the page lands. Its
//     running time stands still meanwhile; the time lost is
//     PostCopyStats.WaitTotal. Reads are not modelled, so faults are a
//     lower bound for a guest that reads more than it writes; one vCPU
//     makes the wait an upper bound for a guest whose other vCPUs run on.
//
// Pages carry the simulated guest's real contents, encoded as the engine
// encodes them, and the destination is a sim.Sink that Run checks page by
// page against the paused source. The figures are the engine's: Report
// with Rounds (pre-copy rounds, then the post-copy phase), Downtime from
// the pause to the destination's Ack(Resumed) at the source, and PostCopy.
type PostCopy struct {
	// Prepage and PushBandwidth are as in postcopy.Config; PreCopyRounds,
	// Adaptive and PreCopy are hybrid.Config's Rounds, Adaptive and PreCopy
	// (its Clock and Codec.Cost are the scenario's): with PreCopyRounds > 0
	// the migration is hybrid, and with Adaptive it ends as pre-copy does
	// when pre-copy converges (precopy.Receive's report is the Outcome's
	// Receive then). A PreCopy.Decider serves one Run: set a fresh one
	// each time.
	Prepage       int
	PreCopyRounds int
	Adaptive      bool
	PreCopy       precopy.Config
	PushBandwidth int64
	// Urgent sends requested pages (and their pre-paged neighbours) ahead
	// of the push, as postcopy.Config.Urgent does.
	Urgent bool
	// LZ4 compresses the pages sent, as postcopy.Config.LZ4 does, with the
	// engine's encoder (codec.PageEncoder), so the same pages go compressed.
	LZ4 bool
	// Order, if set, makes the push order (and the order of the pre-copy
	// rounds after the first) for a guest of pages pages; once per Run.
	Order func(pages uint64) (livemig.Order, error)
	// QueueBytes is how much push may sit written but unsent ahead of a
	// requested page on the main connection; DefaultQueueBytes if 0.
	QueueBytes int
	// Quantum is the vCPU's step; DefaultQuantum if 0.
	Quantum time.Duration

	// For the differential test: trace sees every page record the source
	// writes; noVCPU keeps the destination's vCPU still (no demand faults);
	// script[k] is a page the destination asks for once the k-th page of
	// the post-copy phase is written on the main connection.
	trace  func(page uint64, urgent bool)
	noVCPU bool
	script map[int]uint64
}

// Migrate runs the model on e; see PostCopy. It closes e's connections,
// which only a hybrid migration's rounds use.
func (p PostCopy) Migrate(ctx context.Context, e Endpoints) Outcome {
	if p.PreCopyRounds == 0 {
		e.Source.Close()
		e.Dest.Close()
	}
	if p.QueueBytes == 0 {
		p.QueueBytes = DefaultQueueBytes
	}
	if p.Quantum == 0 {
		p.Quantum = DefaultQuantum
	}
	if p.QueueBytes < 0 || p.Quantum < 0 || p.PreCopyRounds < 0 || p.PushBandwidth < 0 {
		err := fmt.Errorf("scenario: post-copy model: negative parameter (QueueBytes %d, Quantum %v, PreCopyRounds %d, PushBandwidth %d)",
			p.QueueBytes, p.Quantum, p.PreCopyRounds, p.PushBandwidth)
		e.Source.Close()
		e.Dest.Close()
		return Outcome{Err: err, DestErr: err}
	}
	m := &pcModel{cfg: p, e: e, g: e.Guest, sink: e.Sink, pages: e.Pages, ps: e.PageSize,
		bw: e.Scenario.Bandwidth, lat: max(e.Scenario.Latency, 0)}
	if p.Order != nil {
		o, err := p.Order(e.Pages)
		if err != nil {
			err = fmt.Errorf("scenario: post-copy model: page order: %w", err)
			e.Source.Close()
			e.Dest.Close()
			return Outcome{Err: err, DestErr: err}
		}
		m.order = o
	}
	err := m.run(ctx)
	if m.stopCopy != nil { // pre-copy converged and ended
		o := *m.stopCopy
		if o.Report == nil {
			o.Report = m.report
		}
		return o
	}
	if err != nil && m.resumed {
		err = fmt.Errorf("scenario: post-copy model: guest handed over, memory not all at the destination: %w (%w)",
			livemig.ErrIncomplete, err)
	}
	return Outcome{Report: m.report, Err: err, DestResumed: m.resumed}
}

type evKind uint8

const (
	evWire    evKind = iota // the wire finished a record
	evArrive                // a record reached the destination
	evRequest               // a request reached the source
	evGuest                 // the vCPU runs
	evPush                  // the rate-capped push may write again
)

type event struct {
	at   time.Time
	seq  uint64
	kind evKind
	rec  record
}

// evHeap is a binary min-heap of events by (at, seq): typed, so that a
// push does not box the event (container/heap would allocate per event).
type evHeap []event

func (h evHeap) less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}

func (h *evHeap) push(e event) {
	*h = append(*h, e)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *evHeap) pop() event {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && q.less(l, m) {
			m = l
		}
		if r := l + 1; r < n && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// recQueue is a FIFO of records and the bytes they hold.
type recQueue struct {
	q     []record
	head  int
	bytes int
}

func (f *recQueue) len() int { return len(f.q) - f.head }

func (f *recQueue) push(r record) {
	f.q = append(f.q, r)
	f.bytes += r.bytes
}

func (f *recQueue) pop() record {
	r := f.q[f.head]
	f.q[f.head] = record{}
	f.bytes -= r.bytes
	if f.head++; f.head == len(f.q) {
		f.q, f.head = f.q[:0], 0
	} else if f.head >= 1024 && 2*f.head >= len(f.q) {
		k := copy(f.q, f.q[f.head:])
		f.q, f.head = f.q[:k], 0
	}
	return r
}

// record is what crosses the source-to-destination wire.
type record struct {
	page  uint64
	bytes int
	cpu   time.Duration // the page's encode or decode, if longer than its bytes on the wire
	kind  recKind
}

type recKind uint8

const (
	recPage recKind = iota
	recCtl          // a control record: the Commit, the urgent end marker
	recDone         // the Done message
)

const (
	recOverhead = transport.RecordOverhead
	// reqBytes is a request's record on the return path.
	reqBytes = transport.RecordOverhead
)

type pcModel struct {
	cfg   PostCopy
	e     Endpoints
	g     *sim.Guest
	sink  *sim.Sink
	pages uint64
	ps    int
	bw    float64
	lat   time.Duration
	order livemig.Order

	core     *postcopy.Core
	report   *livemig.Report
	resumed  bool
	buf, out []byte
	enc      *codec.PageEncoder

	// Wire, source to destination.
	events    evHeap
	seq       uint64
	busy      bool
	mainQ     recQueue // written on the main connection, not yet on the wire
	urgQ      recQueue // requested pages on the urgent connection
	pushTimer bool

	// Destination.
	dem      *postcopy.Demand // the destination's pages and faults, as Receive keeps them
	vrun     time.Duration    // the vCPU's running time
	acc      []uint64
	touch    sim.WriteFunc // appends to acc; bound once
	accAt    int
	stalled  bool
	stallOn  uint64
	resumeAt time.Time

	err        error // the first failure in the event loop
	mainWrites int   // page records written on the main connection after the pause

	// The bytes the driver's connections write: each connection's
	// framing, and the discard chunks' frames (the Core sizes them).
	mainFr, urgFr transport.Framing
	discards      uint64
	preBytes      uint64 // written by a hybrid migration's rounds
	// stopCopy is the outcome of an adaptive hybrid that converged and
	// ended by pre-copy's stop-and-copy, without the model.
	stopCopy *Outcome
}

// written is the bytes the source has written on its connections: the
// rounds' (on the link), then the model's.
func (m *pcModel) written() uint64 {
	return m.preBytes + m.mainFr.Written() + m.urgFr.Written() + m.discards
}

// control counts a control message of n data bytes on the main connection.
func (m *pcModel) control(n int) { m.mainFr.Control(n, 0) }

// discarded counts discard chunks of the given frame bytes.
func (m *pcModel) discarded(bytes int) {
	m.mainFr.Flush()
	m.discards += uint64(bytes)
}

func (m *pcModel) tx(n int) time.Duration {
	if m.bw <= 0 {
		return 0
	}
	return time.Duration(float64(n) * 8 * 1e9 / m.bw)
}

func (m *pcModel) run(ctx context.Context) error {
	clock := m.e.SourceClock
	alg := "post-copy"
	if m.cfg.PreCopyRounds > 0 {
		alg = "hybrid"
	}
	m.report = &livemig.Report{Algorithm: alg, GuestPages: m.pages, PageSize: m.ps}
	m.dem = postcopy.NewDemand(m.pages)
	m.buf, m.out, m.enc = make([]byte, m.ps), make([]byte, 0, m.ps), &codec.PageEncoder{LZ4: m.cfg.LZ4}
	m.mainFr, m.urgFr = transport.NewFraming(0, 0), transport.NewFraming(0, 0)
	m.touch = func(page uint64, _ bool) { m.acc = append(m.acc, page) }
	start := clock.Now()
	core, err := postcopy.NewCore(postcopy.CoreConfig{Pages: m.pages, PageSize: m.ps,
		PushBandwidth: m.cfg.PushBandwidth, LZ4: m.cfg.LZ4, Order: m.order, Prepage: prepageBase(m.cfg.Prepage),
		Urgent: m.cfg.Urgent}, start)
	if err != nil {
		return fmt.Errorf("scenario: post-copy model: %w", err)
	}
	m.core = core
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("scenario: post-copy model: %w", err)
	}
	if m.cfg.PreCopyRounds > 0 {
		if err := m.rounds(ctx); err != nil || m.stopCopy != nil {
			return err
		}
	}
	if err := m.beforePause(); err != nil {
		return err
	}
	end, err := m.handover(ctx)
	if err == nil {
		end, err = m.loop(ctx)
	}
	if err != nil {
		return err
	}
	clock.AdvanceTo(end)
	ackResumed := m.resumeAt.Add(m.tx(recOverhead) + m.lat)
	m.control(0) // Ack(AckReleased)
	m.core.Written(m.written())
	m.core.Fill(m.report, end, ackResumed, true)
	m.report.Verified = m.sink.Received() == m.pages
	st := m.report.PostCopy
	m.dem.Fill(st)
	st.LastPage = m.dem.LastPage().Sub(m.resumeAt)
	return nil
}

// prepageBase is the Prepager's base window for a Config.Prepage value.
func prepageBase(p int) int {
	switch {
	case p == 0:
		return postcopy.DefaultPrepage
	case p < 0:
		return 0
	}
	return p
}

// rounds runs a hybrid migration's pre-copy rounds with the engine's own
// code: precopy.HandOff configured as hybrid.Migrate configures it, over
// the scenario's link, with package precopy's Receive applying the pages to
// the sink. The Core goes on from where they ended, and so does the
// model, without the link; or, Adaptive, pre-copy converged and ended the
// migration (m.stopCopy).
func (m *pcModel) rounds(ctx context.Context) error {
	hc := hybrid.Config{Rounds: m.cfg.PreCopyRounds, Adaptive: m.cfg.Adaptive,
		Config: postcopy.Config{LZ4: m.cfg.LZ4, Order: m.order}, PreCopy: m.cfg.PreCopy}
	pcfg, err := hc.PreCopyConfig()
	if err != nil {
		m.e.Source.Close()
		m.e.Dest.Close()
		return fmt.Errorf("scenario: hybrid model: %w", err)
	}
	pcfg.Clock, pcfg.Codec.Cost = m.e.SourceClock, m.e.Scenario.Cost
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	received := make(chan struct{})
	var drep *precopy.ReceiveReport
	var derr error
	go func() {
		defer close(received)
		// After a hand-off it ends when the source's end closes below:
		// its error says so.
		drep, derr = precopy.Receive(dctx, m.e.Dest, precopy.Destination{Sink: m.sink, VM: m.sink, Pages: m.pages, PageSize: m.ps},
			precopy.Config{Clock: m.e.DestClock})
	}()
	var conn transport.Conn = m.e.Source
	if m.cfg.trace != nil {
		conn = traceConn{conn, m.cfg.trace}
	}
	rep, h, err := precopy.HandOff(ctx, conn, livemig.Source{Memory: m.g, Dirty: m.g, VM: m.g}, pcfg)
	if h == nil {
		// Pre-copy's end: the destination finishes on its own.
		<-received
		m.report = rep
		m.stopCopy = &Outcome{Report: rep, Err: err, DestErr: derr, Receive: drep, DestResumed: drep != nil && drep.Resumed}
		return nil
	}
	h.Conn.Close()
	cancel()
	<-received
	m.report, m.preBytes = h.Report, h.Report.BytesSent
	m.report.Algorithm = "hybrid"
	if err := m.core.AfterPreCopy(h.Sent, h.Dirty, h.Report); err != nil {
		return fmt.Errorf("scenario: hybrid model: %w", err)
	}
	// What the rounds sent is at the destination (the stale copies until
	// the Core has them discarded).
	now := m.e.SourceClock.Now()
	sent, _ := bitmap.FromWords(h.Sent, m.pages)
	for n := range sent.All() {
		m.dem.Placed(n, now)
	}
	return nil
}

// traceConn shows the differential test every page record its Conn sends.
type traceConn struct {
	transport.Conn
	trace func(page uint64, urgent bool)
}

func (c traceConn) Send(ctx context.Context, msg transport.Msg) error {
	if msg.Kind == wire.KindPage {
		c.trace(msg.Page, false)
	}
	return c.Conn.Send(ctx, msg)
}

// beforePause carries out the Core's steps up to the pause: after a hybrid
// migration's rounds, the discard of the copies they left stale, which
// waits a round trip for the destination's answer.
func (m *pcModel) beforePause() error {
	clock := m.e.SourceClock
	for {
		o := m.core.Next(clock.Now(), false)
		switch o.Op {
		case postcopy.OpDiscard:
			// The chunks and an EndRound asking for Ack(AckRound).
			m.discarded(o.Bytes)
			m.control(0)
			clock.Advance(m.tx(o.Bytes + recOverhead))
			clock.Advance(2*m.lat + m.tx(recOverhead))
			m.discard(o.Stale)
			m.core.Discarded()
		case postcopy.OpPause:
			return nil
		default:
			return fmt.Errorf("scenario: post-copy model: core asked for %v before the pause", o.Op)
		}
	}
}

// discard makes the pages set in stale missing at the destination.
func (m *pcModel) discard(stale []uint64) {
	b, _ := bitmap.FromWords(stale, m.pages)
	for n := range b.All() {
		m.dem.Discard(n)
	}
}

// handover pauses the guest, sends the discards, the switchover and the
// state, and resumes the guest at the destination; it returns when the
// destination is done if every page was there already.
func (m *pcModel) handover(ctx context.Context) (time.Time, error) {
	clock := m.e.SourceClock
	pauseAt := clock.Now()
	if err := m.g.Pause(ctx); err != nil {
		return time.Time{}, fmt.Errorf("scenario: post-copy model: pause: %w", err)
	}
	if m.cfg.PreCopyRounds > 0 { // the dirty log runs since the rounds
		if err := m.g.SyncDirty(m.core.DirtyLog()); err != nil {
			return time.Time{}, fmt.Errorf("scenario: post-copy model: sync dirty log: %w", err)
		}
	}
	m.core.Written(m.written())
	stale, err := m.core.Paused(pauseAt)
	if err != nil {
		return time.Time{}, fmt.Errorf("scenario: post-copy model: %w", err)
	}
	m.discard(stale.Stale)
	state, err := m.g.SaveState(ctx, nil)
	if err != nil {
		return time.Time{}, fmt.Errorf("scenario: post-copy model: save state: %w", err)
	}
	m.report.StateBytes = uint64(len(state))
	m.discarded(stale.Bytes)
	m.control(0)                                    // the switchover
	m.control(len(state))                           // the state
	ctl := stale.Bytes + len(state) + 2*recOverhead // discards, switchover, state
	stateAt := pauseAt.Add(m.tx(ctl) + m.lat)
	if err := m.sink.LoadState(ctx, state); err != nil {
		return time.Time{}, fmt.Errorf("scenario: post-copy model: destination load state: %w", err)
	}
	readyAt := stateAt.Add(m.tx(recOverhead) + m.lat) // Ack(Ready) at the source
	if err := m.core.Committed(readyAt); err != nil {
		return time.Time{}, fmt.Errorf("scenario: post-copy model: %w", err)
	}
	m.resumeAt = readyAt.Add(m.tx(recOverhead) + m.lat)
	// The Commit is on its way: the destination resumes whatever the
	// source's context does.
	if err := m.sink.Resume(context.WithoutCancel(ctx)); err != nil {
		return time.Time{}, fmt.Errorf("scenario: post-copy model: destination resume: %w", err)
	}
	m.resumed = true

	// Post-copy: the push starts behind the Commit, the vCPU at the resume.
	m.vrun = m.g.Stats().RunTime
	if !m.cfg.noVCPU {
		m.schedule(m.resumeAt, evGuest, record{})
	}
	m.dem.Resumed(m.resumeAt)
	m.mainQ.push(record{kind: recCtl, bytes: recOverhead}) // the Commit
	m.control(0)
	m.startWire(readyAt)
	m.pusher(readyAt)
	return time.Time{}, m.err
}

// sendPage reads page o.Page of the source, stores it at the destination's
// sink, and tells the Core; it returns the record's size and the CPU time
// its page costs: the longer of encoding it at the source and decoding it
// at the destination (the engine encodes on the goroutine that sends, and
// decodes on the one that receives, a page after the other, so a page
// holds its connection that long if the link is faster).
func (m *pcModel) sendPage(o postcopy.Out) (int, time.Duration, error) {
	n := o.Page
	if err := m.g.ReadPage(n, m.buf); err != nil {
		return 0, 0, &livemig.PageError{Op: "read", Page: n, Err: err}
	}
	enc, data := m.enc.Encode(m.out[:0], m.buf)
	var err error
	if enc == transport.EncZero {
		err = m.sink.ZeroPage(n)
	} else {
		err = m.sink.WritePage(n, m.buf)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("scenario: post-copy model: destination page %d: %w", n, err)
	}
	m.core.Wrote(o, enc, len(data))
	if m.cfg.trace != nil {
		m.cfg.trace(n, m.cfg.Urgent && o.Pulled)
	}
	out := codec.Outcome{Zero: enc == transport.EncZero}
	if m.cfg.LZ4 && !out.Zero {
		out.LZ4 = codec.LZ4Rejected
		if enc == transport.EncLZ4 {
			out.LZ4 = codec.LZ4Sent
		}
	}
	cost := m.e.Scenario.Cost
	return recOverhead + len(data), max(cost.Encode(out, m.ps), cost.Decode(out, m.ps)), nil
}

func (m *pcModel) schedule(at time.Time, k evKind, r record) {
	m.seq++
	m.events.push(event{at: at, seq: m.seq, kind: k, rec: r})
}

// send writes the page of step o at time now on the main connection or,
// urgent, ahead of it. The destination's copy is stored at once (the guest
// is paused, so it is the copy that arrives); the page counts as held when
// it arrives. A failure is kept in m.err, which the event loop returns.
func (m *pcModel) send(now time.Time, o postcopy.Out, urgent bool) {
	size, cpu, err := m.sendPage(o)
	if err != nil {
		m.err = cmp.Or(m.err, err)
		return
	}
	r := record{page: o.Page, bytes: size, cpu: cpu}
	fr := &m.mainFr
	if urgent {
		m.urgQ.push(r)
		fr = &m.urgFr
	} else {
		m.mainQ.push(r)
	}
	fr.Page(wire.KindPage, size-recOverhead)
	if o.Flush {
		fr.Flush()
	}
	m.startWire(now)
}

// startWire puts the next record on the idle wire: urgent ones first.
func (m *pcModel) startWire(now time.Time) {
	if m.busy {
		return
	}
	var r record
	switch {
	case m.urgQ.len() > 0:
		r = m.urgQ.pop()
	case m.mainQ.len() > 0:
		r = m.mainQ.pop()
	default:
		return
	}
	m.busy = true
	fin := now.Add(max(m.tx(r.bytes), r.cpu))
	m.schedule(fin, evWire, record{})
	m.schedule(fin.Add(m.lat), evArrive, r)
}

// pusher carries out the Core's main-connection steps while the queue has
// room, then the urgent connection's.
func (m *pcModel) pusher(now time.Time) {
	for m.err == nil && m.mainQ.bytes < m.cfg.QueueBytes {
		o := m.core.Next(now, false)
		switch o.Op {
		case postcopy.OpPage:
			m.send(now, o, false)
			if m.cfg.script != nil {
				m.scripted(now)
			}
			continue
		case postcopy.OpWait:
			if o.Flush {
				m.mainFr.Flush()
			}
			if !m.pushTimer {
				m.pushTimer = true
				m.schedule(o.At, evPush, record{})
			}
		case postcopy.OpDone:
			// Done follows every page on the main connection (with an
			// urgent one, after its end marker).
			m.mainQ.push(record{kind: recDone, bytes: recOverhead})
			m.control(0)
			m.startWire(now)
		case postcopy.OpIdle:
			if o.Flush {
				m.mainFr.Flush()
			}
			if m.urgent(now) {
				continue // the marker went: Done may follow
			}
		default:
			m.err = cmp.Or(m.err, fmt.Errorf("scenario: post-copy model: core asked for %v in the push", o.Op))
		}
		return
	}
}

// scripted makes the request the differential test's script has for the
// page just written on the main connection.
func (m *pcModel) scripted(now time.Time) {
	m.mainWrites++
	if p, ok := m.cfg.script[m.mainWrites]; ok {
		if err := m.core.Request(p, 1); err != nil {
			m.err = cmp.Or(m.err, err)
		}
		m.urgent(now)
	}
}

// urgent carries out the Core's urgent-connection steps; it says whether
// the end marker went out.
func (m *pcModel) urgent(now time.Time) (marked bool) {
	if !m.cfg.Urgent {
		return false
	}
	for m.err == nil {
		o := m.core.Next(now, true)
		switch o.Op {
		case postcopy.OpPage:
			m.send(now, o, true)
		case postcopy.OpMarker:
			m.urgQ.push(record{kind: recCtl, bytes: recOverhead})
			m.urgFr.Control(0, 0)
			m.startWire(now)
			m.core.Wrote(o, 0, 0)
			marked = true
		default:
			return marked
		}
	}
	return marked
}

// loop runs the events until the source has the destination's final Ack;
// it returns that instant.
func (m *pcModel) loop(ctx context.Context) (time.Time, error) {
	for steps := 0; ; steps++ {
		if steps%65536 == 0 {
			if err := ctx.Err(); err != nil {
				return time.Time{}, fmt.Errorf("scenario: post-copy model: %w", err)
			}
		}
		if len(m.events) == 0 {
			return time.Time{}, errors.New("scenario: post-copy model: stalled with pages missing (a model bug)")
		}
		ev := m.events.pop()
		now := ev.at
		switch ev.kind {
		case evWire:
			m.busy = false
			m.startWire(now)
			m.pusher(now)
		case evPush:
			m.pushTimer = false
			m.pusher(now)
		case evRequest:
			if err := m.core.Request(ev.rec.page, 1); err != nil {
				return time.Time{}, fmt.Errorf("scenario: post-copy model: %w", err)
			}
			if m.cfg.Urgent {
				m.urgent(now)
			}
			// Without an urgent connection the requested pages go when the
			// push can next write.
			m.pusher(now)
		case evArrive:
			switch ev.rec.kind {
			case recDone:
				if held := m.dem.HeldCount(); held != m.pages {
					return time.Time{}, fmt.Errorf("scenario: post-copy model: Done with %d of %d pages held (a model bug)", held, m.pages)
				}
				return now.Add(m.tx(recOverhead) + m.lat), nil
			case recPage:
				m.arrive(now, ev.rec.page)
			}
		case evGuest:
			m.vcpu(now)
		}
		if m.err != nil {
			return time.Time{}, m.err
		}
	}
}

// arrive places page n at the destination if it is missing.
func (m *pcModel) arrive(now time.Time, n uint64) {
	if m.dem.Placed(n, now) && m.stalled && m.stallOn == n {
		m.stalled = false
		m.schedule(now, evGuest, record{})
	}
}

// vcpu runs the destination's vCPU at now: the accesses left of its step,
// then the next step, until an access faults or every page is held.
func (m *pcModel) vcpu(now time.Time) {
	if m.dem.HeldCount() == m.pages {
		return // nothing can fault any more
	}
	if m.accAt == len(m.acc) {
		from := m.vrun
		m.vrun += m.cfg.Quantum
		m.acc, m.accAt = m.acc[:0], 0
		m.g.Workload().Writes(m.g.Env(), from, m.vrun, m.touch)
	}
	for ; m.accAt < len(m.acc); m.accAt++ {
		n := m.acc[m.accAt]
		if n >= m.pages || m.dem.Held(n) {
			continue
		}
		m.stalled, m.stallOn = true, n
		if m.dem.Fault(n, now, now) {
			m.schedule(now.Add(m.tx(reqBytes)+m.lat), evRequest, record{page: n})
		}
		return
	}
	m.schedule(now.Add(m.cfg.Quantum), evGuest, record{})
}
